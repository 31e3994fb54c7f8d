"""Free energies against exact results of a harmonic oscillator sampled by Gaussian models."""

from __future__ import annotations

import csv
import math

import mdtraj
import numpy as np
import pytest
from analytic import FailingEnergy, GaussianModel, HarmonicEnergy
from scipy.integrate import trapezoid
from scipy.special import erfc

from openmm_trade import cv as cvs
from openmm_trade import free_energy as fe
from openmm_trade.errors import InputError
from openmm_trade.mbar import mbar_from_energies
from openmm_trade.sampling import WeightedTrajectory, sample
from openmm_trade.units import KB

DIM = 3
TEMPERATURES = [300.0, 350.0, 450.0, 600.0]


def exact_delta_f(energy, temperature, t0=300.0):
    return energy.log_partition_function(t0) - energy.log_partition_function(temperature)


@pytest.fixture(scope="module")
def harmonic():
    return HarmonicEnergy(dim=DIM)


@pytest.fixture(scope="module")
def profile(harmonic):
    model = GaussianModel(dim=DIM, width=1.15)
    return fe.temperature_profile(model, harmonic, TEMPERATURES, n=4000, n_bootstrap=100,
                                  seed=0, quiet=True)


def test_delta_f_within_three_sigma_of_exact(profile, harmonic):
    assert profile.reference_temperature == 300.0
    np.testing.assert_array_equal(profile.temperature, TEMPERATURES)
    exact = np.array([exact_delta_f(harmonic, t) for t in TEMPERATURES])
    assert profile.delta_f_kT[0] == 0.0 and profile.delta_f_kT_err[0] == 0.0
    err = profile.delta_f_kT_err[1:]
    assert np.all(err > 0) and np.all(err < 0.05)
    assert np.all(np.abs(profile.delta_f_kT[1:] - exact[1:]) < 3 * err)
    np.testing.assert_allclose(profile.delta_f_kJmol, KB * profile.temperature * profile.delta_f_kT)


def test_mean_energy_and_heat_capacity_match_exact(profile, harmonic):
    exact_u = np.array([harmonic.mean_energy(t) for t in TEMPERATURES])
    assert np.all(np.abs(profile.mean_energy - exact_u) < 3.5 * profile.mean_energy_err)
    cv_exact = harmonic.heat_capacity()  # d/2 k_B
    assert np.all(np.abs(profile.heat_capacity - cv_exact) < 3.5 * profile.heat_capacity_err)
    np.testing.assert_allclose(profile.heat_capacity, cv_exact, rtol=0.12)
    assert np.all((profile.ess > 0.5) & (profile.ess < 1.0))


def test_thermodynamic_integration_check(profile, harmonic):
    betas = 1.0 / (KB * profile.temperature)
    by_hand = [trapezoid(profile.mean_energy[: i + 1], betas[: i + 1])
               for i in range(len(betas))]  # β decreases along the rows here
    np.testing.assert_allclose(profile.delta_f_ti_kT, by_hand, atol=1e-12)
    assert profile.ti_max_deviation_kT == pytest.approx(
        np.max(np.abs(profile.delta_f_kT - profile.delta_f_ti_kT)))
    assert profile.ti_max_deviation_kT < 0.1  # trapezoid error of ∫ d/(2β) dβ is small here
    assert "max |Δf - Δf_TI|" in profile.summary()


def test_uncertainty_shrinks_with_n(harmonic):
    model = GaussianModel(dim=DIM, width=1.15)
    errors = [fe.temperature_profile(model, harmonic, [300.0, 500.0], n=n, n_bootstrap=100,
                                     seed=1, quiet=True).delta_f_kT_err[1]
              for n in (500, 8000)]
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.35)  # σ ∝ 1/√n


def test_exact_model_gives_exact_delta_f(harmonic):
    model = GaussianModel(dim=DIM)
    wts = [sample(model, harmonic, t, 200, seed=2, quiet=True) for t in (300.0, 500.0)]
    table = fe.profile_from_trajectories(wts, n_bootstrap=20, seed=0)
    assert table.delta_f_kT[1] == pytest.approx(exact_delta_f(harmonic, 500.0), abs=1e-10)
    assert table.delta_f_kT_err[1] < 1e-10


def test_reference_temperature_outside_rows_and_failures(harmonic):
    energy = FailingEnergy(harmonic, threshold=0.2)
    model = GaussianModel(dim=DIM, width=1.1, reference_temperature=400.0)
    table = fe.temperature_profile(model, energy, [350.0, 500.0], n=3000, n_bootstrap=50,
                                   seed=3, quiet=True)
    assert len(table) == 2 and table.reference_temperature == 400.0
    assert np.all(table.n_failed > 0)
    # the failures cut the domain (x_0 ≤ 0.2): compare with the exact truncated Z
    def log_z(t):
        sigma = math.sqrt(KB * t / 100.0)
        return harmonic.log_partition_function(t) + math.log(1 - 0.5 * erfc(0.2 / sigma / 2**0.5))
    exact = np.array([log_z(400.0) - log_z(t) for t in (350.0, 500.0)])
    assert np.all(np.abs(table.delta_f_kT - exact) < 3.5 * table.delta_f_kT_err)


def test_table_csv_and_rows(profile, tmp_path):
    path = profile.to_csv(tmp_path / "fe.csv")
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(TEMPERATURES)
    for column in ("temperature", "delta_f_kT", "delta_f_kT_err", "delta_f_kJmol",
                   "mean_energy", "mean_energy_err", "heat_capacity", "heat_capacity_err",
                   "ess", "delta_f_ti_kT"):
        np.testing.assert_array_equal([float(r[column]) for r in rows], getattr(profile, column))
    assert profile.as_rows()[1]["temperature"] == 350.0


def test_compare_with_mbar(profile, harmonic):
    rng = np.random.default_rng(0)
    energies = [rng.gamma(DIM / 2, KB * t, size=3000) for t in TEMPERATURES]  # exact U samples
    mbar = mbar_from_energies(TEMPERATURES, energies)
    comparison = fe.compare_with_mbar(profile, mbar)
    assert comparison.difference.shape == (4,)
    assert comparison.within(4.0)


def test_bad_inputs(harmonic):
    wt = sample(GaussianModel(dim=DIM), harmonic, 300.0, 10, seed=0, quiet=True)
    with pytest.raises(InputError, match="n_bootstrap"):
        fe.profile_from_trajectories([wt], n_bootstrap=1)
    with pytest.raises(InputError, match="reference_temperature"):
        fe.profile_from_trajectories([wt], reference_temperature=400.0)
    with pytest.raises(InputError, match="two trajectories"):
        fe.profile_from_trajectories([wt, wt])


# ---------------------------------------------------------------------------- surfaces


@pytest.fixture(scope="module")
def oscillator_1d():
    energy = HarmonicEnergy(dim=1)
    wt = sample(GaussianModel(dim=1, width=1.2), energy, 400.0, 20_000, seed=4, quiet=True)
    return energy, wt


def test_surface_1d_matches_exact(oscillator_1d):
    energy, wt = oscillator_1d
    fes = fe.surface(wt, cv=lambda x: x[:, 0], bins=30, range=[(-0.3, 0.3)], n_bootstrap=50,
                     seed=0)
    assert fes.free_energy.shape == (30,) and fes.free_energy.min() == 0.0
    (centers,) = fes.centers
    central = np.abs(centers) < 0.15
    exact = 0.5 * energy.k * centers ** 2
    diff = fes.free_energy - exact
    offset = np.average(diff[central], weights=1 / fes.error[central] ** 2)
    assert np.all(np.abs(diff[central] - offset) < 4 * fes.error[central] + 0.05)
    assert fes.free_energy_kT == pytest.approx(fes.free_energy / (KB * 400.0))
    np.testing.assert_allclose(fes.probability.sum(), np.sum(wt.weights[np.abs(wt.samples[:, 0])
                                                                         <= 0.3]))


def test_surface_2d_and_arrays(oscillator_1d):
    rng = np.random.default_rng(0)
    values = rng.uniform(-np.pi, np.pi, size=(1000, 2))
    wt = WeightedTrajectory(values, np.zeros(1000), np.zeros(1000), 300.0)
    fes = fe.surface(wt, cv=values, bins=(10, 5), range=[(-np.pi, np.pi)] * 2, n_bootstrap=10)
    assert fes.free_energy.shape == (10, 5) and fes.ndim == 2
    assert np.all(np.isfinite(fes.error))
    with pytest.raises(InputError, match="temperature is required"):
        fe.surface(values, cv=values, n_bootstrap=10)
    plain = fe.surface(values, cv=values[:, 0], temperature=300.0, bins=4, n_bootstrap=5)
    assert plain.free_energy.shape == (4,)
    with pytest.raises(InputError, match="1 or 2"):
        fe.surface(wt, cv=np.zeros((1000, 3)), n_bootstrap=5)


# ---------------------------------------------------------------------------- populations


def test_populations_match_exact_probability(oscillator_1d):
    energy, wt = oscillator_1d
    sigma = math.sqrt(KB * 400.0 / energy.k)
    states = {"outer": lambda v: np.abs(v[:, 0]) > sigma, "left": [(-np.inf, 0.0)]}
    pops = fe.populations(wt, states, n_bootstrap=100, seed=0)
    exact_outer = erfc(1 / math.sqrt(2))  # P(|x| > σ)
    value, error = pops["outer"]
    assert abs(value - exact_outer) < 3.5 * error
    binomial = math.sqrt(exact_outer * (1 - exact_outer) / (len(wt) * wt.ess))
    assert 0.6 < error / binomial < 1.6
    assert abs(pops["left"][0] - 0.5) < 3.5 * pops["left"][1]
    assert dict(pops.items()).keys() == {"outer", "left"}
    with pytest.raises(InputError, match="states\\['bad'\\]"):
        fe.populations(wt, {"bad": [(0, 1), (0, 1)]}, n_bootstrap=5)


def test_bootstrap_resamples_lineages_not_copies():
    """m independent draws, each present r times (as SMC resampling leaves them): the error
    of a population is the binomial one of m draws, sqrt(p(1-p)/m). A bootstrap over the
    m·r samples would claim sqrt(r) times less; resampling lineages does not."""
    m, r = 2000, 5
    x = np.random.default_rng(1).normal(size=(m, 1))
    copies = np.repeat(x, r, axis=0)
    zeros = np.zeros(m * r)
    states = {"right": [(0.0, np.inf)]}
    with_lineages = WeightedTrajectory(copies, zeros, zeros, 300.0,
                                       lineages=np.repeat(np.arange(m), r))
    value, error = fe.populations(with_lineages, states, n_bootstrap=400, seed=0)["right"]
    binomial = math.sqrt(value * (1 - value) / m)  # bootstrap SE error ~ 1/sqrt(2·400)
    assert abs(error / binomial - 1) < 0.15, (error, binomial)
    as_copies = WeightedTrajectory(copies, zeros, zeros, 300.0)  # each copy its own draw
    naive = fe.populations(as_copies, states, n_bootstrap=400, seed=0)["right"][1]
    assert abs(naive * math.sqrt(r) / binomial - 1) < 0.15, (naive, binomial)
    with pytest.raises(InputError, match="lineages"):
        WeightedTrajectory(x, np.zeros(m), np.zeros(m), 300.0, lineages=np.zeros(3, int))


def test_populations_ramachandran_on_md(vacuum, vacuum_frames, tmp_path):
    traj = mdtraj.Trajectory(vacuum_frames, vacuum.mdtraj_topology)
    pops = fe.populations(traj, n_bootstrap=20, seed=0)  # default states and CV
    assert list(pops) == list(cvs.RAMACHANDRAN_STATES)
    assert sum(p for p, _ in pops.values()) == pytest.approx(1.0)
    phi = mdtraj.compute_phi(traj)[1][:, 0]
    psi = mdtraj.compute_psi(traj)[1][:, 0]
    alpha_r = (phi < 0) & (psi >= np.radians(-150)) & (psi < np.radians(50))
    assert pops["alphaR"][0] == pytest.approx(alpha_r.mean())
    path = pops.to_csv(tmp_path / "pops.csv")
    assert open(path).readline().strip() == "state,population,population_err"


def test_populations_vs_temperature(harmonic):
    model = GaussianModel(dim=DIM, width=1.1)
    wts = [sample(model, harmonic, t, 2000, seed=5, quiet=True) for t in (300.0, 600.0)]
    table = fe.populations_vs_temperature(wts, {"far": lambda v: (v ** 2).sum(1) > 0.05},
                                          n_bootstrap=30, seed=0)
    assert table.population.shape == (2, 1)
    assert table.population[1, 0] > table.population[0, 0]  # hotter: wider
    assert list(table.columns()) == ["temperature", "far", "far_err"]
