"""SMC refinement (openmm_trade.refine) against independent oracles.

Oracles: quadrature of the analytic toys (exact marginal CDFs and ln Z), exact toy samples
(MCMC invariance), real OpenMM alanine dipeptide (constraint lengths, chirality).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import openmm_trade as ot
from openmm_trade.flow import ConditionalFlow, Domain, TemperatureFlow
from openmm_trade.refine import SMC, rejuvenate, smc
from openmm_trade.report import write_report
from openmm_trade.toys import DoubleWell1D, TorsionBond2D

T = 300.0
SEEDS = (0, 1, 2)


def poor_flows():
    """Toys with an untrained flow whose prior is shifted and too narrow (KL 3-17 nats)."""
    double_well = DoubleWell1D()  # wells at ±1 with spread ~0.3, the left one lower
    torsion = TorsionBond2D()  # r around 1 ± 0.15 with spread ~0.1
    return [
        (double_well, [Domain.interval(-2.5, 2.5, loc=0.4, scale=0.5)]),
        (torsion, [Domain.circular(), Domain.interval(0.5, 1.5, loc=1.1, scale=0.03)]),
    ]


def make_flow(domains) -> ConditionalFlow:
    return ConditionalFlow(domains, T, (T, 600.0), hidden=8, n_blocks=1, seed=0,
                           prior="truncated_normal", widen_prior=False, prior_floor=0.0)


def marginal_cdf(toy, k: int):
    """Exact CDF of coordinate ``k`` at T from the quadrature grid (cell edges)."""
    points, _, log_w, widths = toy._log_grid_weights(T)
    p = np.exp(log_w - np.logaddexp.reduce(log_w))
    values = points[:, k]
    order = np.argsort(values, kind="stable")
    edges, first = np.unique(values[order], return_index=True)
    mass = np.add.reduceat(p[order], first)
    upper = edges + 0.5 * widths[k]
    cdf = np.cumsum(mass)
    return lambda x: np.interp(x, np.concatenate([[upper[0] - widths[k]], upper]),
                               np.concatenate([[0.0], cdf]))


def weighted_ks(samples: np.ndarray, weights: np.ndarray, cdf) -> float:
    """sup |F_w - F| of a weighted sample against an exact CDF."""
    order = np.argsort(samples)
    x, w = samples[order], weights[order] / weights.sum()
    upper = np.cumsum(w)
    exact = cdf(x)
    return float(max(np.max(np.abs(upper - exact)), np.max(np.abs(upper - w - exact))))


def ks_pvalue(distance: float, n_eff: float) -> float:
    """Asymptotic KS p-value for an effective sample size."""
    return float(stats.kstwobign.sf(distance * math.sqrt(n_eff)))


def effective_size(wt) -> float:
    """Kish ESS, capped by the distinct ancestors (resampled copies are not independent)."""
    return min(wt.ess * len(wt), wt.refinement["distinct_ancestors"])


OPTIONS = SMC(n_mcmc_steps=5)


@pytest.mark.parametrize("case", [0, 1], ids=["double-well", "torsion-bond"])
def test_smc_matches_quadrature_where_importance_sampling_fails(case):
    toy, domains = poor_flows()[case]
    model = make_flow(domains)
    exact = toy.log_partition_function(T)
    cdfs = [marginal_cdf(toy, k) for k in range(toy.dim)]
    for seed in SEEDS:
        wt = smc(model, toy, T, n=1000, options=OPTIONS, seed=seed, quiet=True)
        n_eff = effective_size(wt)
        distances = [weighted_ks(wt.samples[:, k], wt.weights, cdf) for k, cdf in enumerate(cdfs)]
        for k, distance in enumerate(distances):
            assert ks_pvalue(distance, n_eff) > 1e-3, (seed, k, distance, n_eff)
        error = wt.log_partition_error
        assert 0 < error < 0.2
        assert abs(wt.log_partition_estimate - exact) < 3 * error + 0.02, (seed, error)
        # plain importance sampling from the same flow and the same number of samples
        plain = ot.sample(model, toy, T, n=1000, seed=seed, quiet=True)
        worst = max(weighted_ks(plain.samples[:, k], plain.weights, cdf)
                    for k, cdf in enumerate(cdfs))
        assert worst > 3 * max(distances), (seed, worst, distances)


def test_ln_z_error_matches_the_spread_of_independent_repeats():
    """The island error of ln Z agrees with the spread over independent runs, the mean of
    the runs holds the exact value within 3 standard errors, and plain importance sampling
    from the same flow and the same number of samples scatters more."""
    toy, domains = poor_flows()[0]
    model = make_flow(domains)
    exact = toy.log_partition_function(T)
    smc_z, smc_err, is_z = [], [], []
    for seed in range(6):
        wt = smc(model, toy, T, n=500, options=OPTIONS, seed=10 + seed, quiet=True)
        smc_z.append(wt.log_partition_estimate - exact)
        smc_err.append(wt.log_partition_error)
        is_z.append(ot.sample(model, toy, T, n=500, seed=10 + seed,
                              quiet=True).log_partition_estimate - exact)
    spread = np.std(smc_z, ddof=1)
    assert abs(np.mean(smc_z)) < 3 * spread / math.sqrt(len(smc_z))
    assert 1 / 3 < np.mean(smc_err) / spread < 3, (np.mean(smc_err), spread)
    assert np.sqrt(np.mean(np.square(smc_z))) < np.sqrt(np.mean(np.square(is_z)))


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_kernel_keeps_exact_samples_exact(kernel):
    toy = TorsionBond2D()
    cdfs = [marginal_cdf(toy, k) for k in range(2)]
    x = toy.sample(3000, T, seed=4).numpy()
    wt = rejuvenate(x, toy, T, options=SMC(kernel=kernel, n_mcmc_steps=8, n_leapfrog=3), seed=4)
    history = wt.refinement["history"]
    assert len(history) == 8 and 0.3 < history[-1]["acceptance"] < 0.95
    moved = np.mean(np.any(wt.samples != x, axis=1))
    assert moved > 0.9  # every particle has been moved at least once, mostly
    for k, cdf in enumerate(cdfs):
        p = stats.kstest(wt.samples[:, k], cdf).pvalue
        assert p > 1e-3, (k, p)


def test_torsion_flips_cross_the_barrier_and_keep_the_target():
    """Two torsion wells 12 k_BT apart in barrier: gradient moves started in one well stay
    there; with flips the population of the wells reaches the quadrature value, and exact
    samples stay exact (the flip is a Metropolis move with a symmetric proposal)."""
    toy = TorsionBond2D(barrier=15.0, length_coupling=0.0)
    cdfs = [marginal_cdf(toy, k) for k in range(2)]
    exact = 1.0 - cdfs[0](0.0)  # P(φ > 0)
    x = toy.sample(3000, T, seed=5).numpy()
    one_well = x[x[:, 0] > 0][:1000]
    stuck = rejuvenate(one_well, toy, T, options=SMC(n_mcmc_steps=20, torsion_flips=0),
                       seed=1)
    assert np.mean(stuck.samples[:, 0] > 0) == 1.0
    flipped = rejuvenate(one_well, toy, T, options=SMC(n_mcmc_steps=20, torsion_flips=3),
                         seed=1)
    population = np.mean(flipped.samples[:, 0] > 0)
    assert abs(population - exact) < 4 * math.sqrt(exact * (1 - exact) / 1000), population
    assert flipped.refinement["history"][-1]["flip_acceptance"] > 0.05
    kept = rejuvenate(x, toy, T, options=SMC(n_mcmc_steps=3, torsion_flips=3), seed=2)
    for k, cdf in enumerate(cdfs):
        assert stats.kstest(kept.samples[:, k], cdf).pvalue > 1e-3, k


def test_same_seed_same_result():
    toy, domains = poor_flows()[1]
    model = make_flow(domains)
    a = smc(model, toy, T, n=200, options=SMC(n_islands=4), seed=3, quiet=True)
    b = smc(model, toy, T, n=200, options=SMC(n_islands=4), seed=3, quiet=True)
    c = smc(model, toy, T, n=200, options=SMC(n_islands=4), seed=4, quiet=True)
    assert np.array_equal(a.samples, b.samples) and np.array_equal(a.log_weights, b.log_weights)
    assert a.refinement == b.refinement
    assert not np.array_equal(a.samples, c.samples)


def test_sample_refine_and_save_load(tmp_path):
    toy, domains = poor_flows()[0]
    model = make_flow(domains)
    wt = ot.sample(model, toy, T, n=200, seed=0, quiet=True, refine=SMC(n_islands=2))
    assert wt.refinement["method"] == "smc" and wt.log_partition_error > 0
    loaded = ot.WeightedTrajectory.load(wt.save(tmp_path / "refined.h5"))
    assert loaded.refinement == wt.refinement
    # each particle's lineage is the flow draw it descends from; the file keeps them
    assert wt.n_lineages == wt.refinement["distinct_ancestors"] < len(wt)
    assert 0 < wt.lineage_ess < wt.ess  # copies of one draw count once
    assert f"ESS over the {wt.n_lineages} lineages" in wt.summary()
    np.testing.assert_array_equal(loaded.lineages, wt.lineages)
    both = ot.WeightedTrajectory.concatenate([wt, loaded])  # two runs: lineages stay apart
    assert both.n_lineages == 2 * wt.n_lineages
    again = rejuvenate(wt, toy, options=SMC(n_mcmc_steps=1), seed=0)
    assert set(again.lineages) <= set(wt.lineages)
    assert np.allclose(loaded.weights, wt.weights)
    assert loaded.log_partition_estimate == pytest.approx(wt.log_partition_estimate)
    assert ot.sample(model, toy, T, n=10, seed=0, quiet=True, refine=False).refinement is None
    # One level anneals straight to the target: its ESS is the flow's own importance ESS.
    one = smc(model, toy, T, n=200, options=SMC(n_islands=1, max_levels=1), seed=0, quiet=True)
    assert one.refinement["flow_ess"] == pytest.approx(one.refinement["history"][0]["ess"])
    assert abs(one.refinement["flow_log_partition_estimate"] - one.log_partition_estimate) < 1e-9
    with pytest.raises(ot.errors.InputError, match="refine"):
        ot.sample(model, toy, T, n=10, quiet=True, refine="yes")


def test_alanine_keeps_constraints_and_chirality(vacuum, vacuum_frames):
    model = TemperatureFlow.for_system(vacuum, vacuum_frames, (T, 600.0), hidden=8,
                                       n_blocks=1, seed=0)
    ic = model.coordinates
    with ot.OpenMMEnergy(vacuum, platform="CPU") as energy:
        wt = smc(model, energy, T, n=64, options=SMC(n_islands=2, max_levels=4,
                                                     n_mcmc_steps=2), seed=0, quiet=True)
        rejuvenated = rejuvenate(wt, energy, options=SMC(n_mcmc_steps=2), seed=0)
        again = smc(model, energy, T, n=64, options=SMC(n_islands=2, max_levels=4,
                                                        n_mcmc_steps=2), seed=0, quiet=True)
    assert np.array_equal(again.samples, wt.samples)  # same seed, same result (CPU, 1 thread)
    assert np.array_equal(again.log_weights, wt.log_weights)
    assert rejuvenated.ess == 1.0
    assert rejuvenated.log_partition_estimate == pytest.approx(wt.log_partition_estimate)
    for result in (wt, rejuvenated):
        xyz = result.trajectory.xyz.astype(np.float64)
        pairs = np.asarray(vacuum.constrained_pairs)
        lengths = np.linalg.norm(xyz[:, pairs[:, 0]] - xyz[:, pairs[:, 1]], axis=-1)
        assert np.max(np.abs(lengths - np.asarray(vacuum.constraint_lengths))) < 1e-6
        signs = ic.chirality_signs(torch.as_tensor(xyz))
        assert (signs == ic.reference_chirality_signs).all()
        history = result.refinement["history"]
        assert all(0.0 < h["acceptance"] for h in history)
        assert np.isfinite(result.energies).all()
    assert 2 * wt.refinement["force_evaluations"] == energy.n_evaluations - (
        rejuvenated.refinement["force_evaluations"])
    with pytest.raises(ot.errors.InputError, match="log_weights"):
        rejuvenate(wt, energy, log_weights=np.zeros(len(wt)))


def test_temperature_profile_with_refinement():
    toy, domains = poor_flows()[0]
    model = make_flow(domains)
    temperatures = [300.0, 400.0, 500.0]
    table = ot.free_energy.temperature_profile(model, toy, temperatures, n=1000, n_bootstrap=20,
                                               seed=0, quiet=True, refine=OPTIONS)
    plain = ot.free_energy.temperature_profile(model, toy, temperatures, n=1000, n_bootstrap=20,
                                               seed=0, quiet=True)
    log_z = toy.log_partition_function(np.array(temperatures))
    exact = log_z[0] - log_z
    assert table.delta_f_kT[0] == 0.0 and table.delta_f_kT_err[0] == 0.0
    errors = table.delta_f_kT_err[1:]
    assert np.all((errors > 0) & (errors < 0.2))
    assert np.all(np.abs(table.delta_f_kT - exact)[1:] < 3 * errors + 0.02)
    assert np.all(np.abs(table.mean_energy - toy.mean_energy(np.array(temperatures)))
                  < 3 * table.mean_energy_err + 0.2)
    assert np.all(np.isfinite(table.delta_f_ti_kT)) and table.ti_max_deviation_kT < 0.2
    assert np.max(np.abs(table.delta_f_kT - exact)) < np.max(np.abs(plain.delta_f_kT - exact))


def test_command_line_and_config_refine(vacuum, vacuum_frames, tmp_path):
    from click.testing import CliRunner

    from openmm_trade.cli import main
    from openmm_trade.refine import options_from_config

    model = TemperatureFlow.for_system(vacuum, vacuum_frames, (T, 600.0), hidden=8,
                                       n_blocks=1, seed=0)
    model.save(tmp_path / "model.pt")
    result = CliRunner().invoke(main, [
        "sample", "--system", "alanine-dipeptide-vacuum", "--model", str(tmp_path / "model.pt"),
        "--temperature", "300", "-n", "32", "--refine", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "SMC:" in result.output
    wt = ot.WeightedTrajectory.load(next((tmp_path / "samples").glob("*.h5")))
    assert wt.refinement["method"] == "smc" and len(wt) == 32
    config = ot.config.validate({"system": {"name": "alanine-dipeptide-vacuum"},
                                 "sampling": {"refine": True, "refine_kernel": "hmc"}})
    options = options_from_config(config.sampling)
    assert options.kernel == "hmc" and options.n_mcmc_steps == 2
    assert options_from_config(config.sampling, refine=config.free_energy["refine"]) is None
    with pytest.raises(ot.errors.ConfigError, match="refine_kernel"):
        ot.config.validate({"system": {"name": "alanine-dipeptide-vacuum"},
                            "sampling": {"refine_kernel": "gibbs"}})


def test_report_shows_refined_beside_plain(tmp_path):
    toy, domains = poor_flows()[0]
    wt = smc(make_flow(domains), toy, T, n=200, options=SMC(n_islands=2), seed=0, quiet=True)
    (tmp_path / "samples").mkdir()
    wt.save(tmp_path / "samples" / f"{T:g}K.h5")
    (tmp_path / "config.toml").write_text(
        '[system]\nname = "toy"\n[boundary]\ntemperature = 300.0\n'
        "[temperatures]\nrange = [300.0, 600.0]\n")
    text = write_report(tmp_path).read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {T:g} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{wt.refinement['flow_ess']:.1%}" and cells[2] == f"{wt.ess:.1%}"
    assert cells[3] == f"{wt.lineage_ess:.1%} ({wt.refinement['distinct_ancestors']})"
    assert cells[6].startswith(f"{wt.log_partition_estimate:.3f} ± ")
