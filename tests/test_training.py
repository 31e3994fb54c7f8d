"""Training: TRADE transfers exact distributions; resume, seeds, skips, schedules, molecules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from openmm_trade.errors import CheckpointError, InputError
from openmm_trade.flow import ConditionalFlow
from openmm_trade.toys import DoubleWell1D, HarmonicOscillator, TorsionBond2D
from openmm_trade.trade import beta_derivative
from openmm_trade.training import (
    Trainer,
    TrainingConfig,
    TrainingDivergedError,
    TrainingHistory,
    train,
)
from openmm_trade.units import beta_from_temperature

torch.set_num_threads(1)

#: the latent prior these tests were written for (ConditionalFlow's defaults before
#: FlowArchitecture)
UNIFORM = dict(prior="uniform", widen_prior=False, prior_floor=0.0)

#: a small configuration for toy transfer runs (about a minute each on one core)
TRANSFER = dict(batch_size=256, trade_batch_size=128, learning_rate=3e-3, loss="huber",
                quiet=True, seed=0)


def _flow(toy, t0, seed=0, **arch):
    arch = {"hidden": 32, "n_blocks": 2, "n_bins": 16, **UNIFORM} | arch
    return ConditionalFlow(toy.domains, t0, (300.0, 600.0), seed=seed, **arch)


def _derivative_error(model, toy, temperature, n=2000):
    """RMS of (autograd ∂_β log p_θ) - (exact -U + ⟨U⟩_β) at held-out exact samples,
    relative to the standard deviation of U (the size of the exact derivative)."""
    x = toy.sample(n, temperature, seed=123).to(model.dtype)
    beta = torch.full((n,), beta_from_temperature(temperature), dtype=torch.float64)
    _, d = beta_derivative(model, x, beta, create_graph=False)
    exact = toy.dlog_density_dbeta(x, temperature)
    return float((d - exact).pow(2).mean().sqrt() / exact.std())


def _transfer(toy, t0, t_far, steps):
    data = toy.sample(20000, t0, seed=1)
    results = {}
    for name, weight in (("trade", 1.0), ("nll", 0.0)):
        model = _flow(toy, t0)
        history = train(model, toy, data, t0, steps=steps if weight else steps // 2,
                        trade_weight=weight, warmup_steps=steps // 4, ramp_steps=steps // 4,
                        **TRANSFER)
        assert history.skipped_steps == 0
        results[name] = {"kl_t0": toy.kl_divergence(model, t0, resolution=256),
                         "kl_far": toy.kl_divergence(model, t_far, resolution=256),
                         "derivative": _derivative_error(model, toy, t_far),
                         "derivative_mid": _derivative_error(model, toy, 450.0)}
    print(results)
    return results


@pytest.mark.slow
def test_trade_transfers_the_double_well_downwards():
    """Samples at 600 K only; the model matches the exact density at 300 K (2× range)."""
    results = _transfer(DoubleWell1D(), 600.0, 300.0, steps=1200)
    trade, nll = results["trade"], results["nll"]
    assert trade["kl_t0"] < 0.02 and nll["kl_t0"] < 0.02  # both fit the boundary
    assert trade["kl_far"] < 0.02
    assert nll["kl_far"] > 4 * trade["kl_far"] and nll["kl_far"] > 0.08
    assert trade["derivative"] < 0.25 and trade["derivative_mid"] < 0.25
    assert nll["derivative"] > 0.8  # NLL-only: the temperature dependence is not learned


@pytest.mark.slow
def test_trade_transfers_the_torsion_bond_upwards():
    """Periodic torsion + bounded bond; samples at 300 K only, exact density at 600 K."""
    results = _transfer(TorsionBond2D(), 300.0, 600.0, steps=1200)
    trade, nll = results["trade"], results["nll"]
    assert trade["kl_t0"] < 0.02 and nll["kl_t0"] < 0.02
    assert trade["kl_far"] < 0.02
    assert nll["kl_far"] > 4 * trade["kl_far"] and nll["kl_far"] > 0.08
    assert trade["derivative"] < 0.25 and trade["derivative_mid"] < 0.25
    assert nll["derivative"] > 0.8


@pytest.mark.slow
def test_trade_transfers_the_double_well_both_ways_from_inside():
    """Samples at 420 K only (inside the range): exact at both 300 K and 600 K."""
    toy, t0 = DoubleWell1D(), 420.0
    model = _flow(toy, t0)
    history = train(model, toy, toy.sample(20000, t0, seed=1), t0, steps=1200,
                    trade_weight=1.0, warmup_steps=300, ramp_steps=300, **TRANSFER)
    assert history.skipped_steps == 0
    # measured: KL 0.003 / 0.005 / 0.014 nats at 300 / 420 / 600 K
    for temperature in (300.0, t0, 600.0):
        assert toy.kl_divergence(model, temperature, resolution=256) < 0.02, temperature


# ---------------------------------------------------------------------------- mechanics
SMALL = dict(steps=20, batch_size=64, trade_batch_size=32, warmup_steps=6, ramp_steps=6,
             learning_rate=3e-3, grid_samples=64, quiet=True)


def _small_model():
    return ConditionalFlow(DoubleWell1D().domains, 300.0, (300.0, 600.0), hidden=8,
                           n_blocks=1, seed=0, **UNIFORM)


@pytest.fixture(scope="module")
def well_data():
    return DoubleWell1D().sample(2000, 300.0, seed=0)


@pytest.mark.parametrize("mode", ["grid", "continuous"])
def test_resume_is_bit_for_bit(tmp_path, well_data, mode):
    toy = DoubleWell1D()
    options = dict(SMALL, mean_energy=mode, evaluation_points="both", validate_every=7)
    reference = _small_model()
    full = train(reference, toy, well_data, 300.0, **options)

    interrupted = _small_model()
    trainer = Trainer(interrupted, DoubleWell1D(), well_data, 300.0,
                      checkpoint=tmp_path / "run", checkpoint_every=10,
                      history_csv=tmp_path / "history.csv", **options)
    trainer.run(until=10)  # "killed" after the checkpoint at step 10
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    assert len(np.loadtxt(tmp_path / "history.csv", delimiter=",", skiprows=1,
                          usecols=0, ndmin=1)) == 10

    resumed = _small_model()  # fresh weights: everything comes from the checkpoint
    history = train(resumed, DoubleWell1D(), well_data, 300.0, checkpoint=tmp_path / "run",
                    resume=True, **options)
    assert len(history) == 20 and history.stop_reason == "completed"
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(history["loss"], full["loss"])
    np.testing.assert_array_equal(history["ess_450K"], full["ess_450K"])


def test_same_seed_same_result_and_validation_does_not_perturb(well_data):
    toy = DoubleWell1D()
    models = [_small_model() for _ in range(3)]
    train(models[0], toy, well_data, 300.0, seed=4, **SMALL)
    train(models[1], toy, well_data, 300.0, seed=4, validate_every=3, **SMALL)
    train(models[2], toy, well_data, 300.0, seed=5, **SMALL)
    params = [torch.cat([p.flatten() for p in m.parameters()]) for m in models]
    assert torch.equal(params[0], params[1])
    assert not torch.equal(params[0], params[2])


def test_resume_rejects_other_settings(tmp_path, well_data):
    toy = DoubleWell1D()
    train(_small_model(), toy, well_data, 300.0, checkpoint=tmp_path / "c.pt", **SMALL)
    with pytest.raises(CheckpointError, match="trade_weight"):
        train(_small_model(), toy, well_data, 300.0, checkpoint=tmp_path / "c.pt", resume=True,
              **(SMALL | {"trade_weight": 2.0}))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        train(_small_model(), toy, well_data, 300.0, resume=tmp_path / "bad.pt", **SMALL)


#: an over-fitting likelihood phase: 30 training frames, a constant large learning rate; the
#: held-out NLL (10 frames) is lowest at step 150 of 200 (measured), not at the end
OVERFIT = dict(steps=206, warmup_steps=200, ramp_steps=3, trade_weight=0.3, batch_size=30,
               trade_batch_size=16, grid_samples=32, learning_rate=1e-2, schedule="constant",
               holdout_fraction=0.25, holdout_every=10, quiet=True)


def _overfit_setup():
    toy = DoubleWell1D()
    model = ConditionalFlow(toy.domains, 300.0, (300.0, 600.0), hidden=32, n_blocks=2,
                            n_bins=32, seed=0, **UNIFORM)
    return model, toy, toy.sample(40, 300.0, seed=2)


def test_holdout_keeps_the_best_parameters_and_resumes_exactly(tmp_path):
    """The last quarter of the frames is held out; TRADE starts from the parameters with
    the best held-out NLL of the likelihood phase, also across an interruption after the
    best step (the best state lives in the checkpoint)."""
    model, toy, data = _overfit_setup()
    trainer = Trainer(model, toy, data, 300.0, **OVERFIT)
    assert torch.equal(trainer.boundary, data[:30].float())
    assert torch.equal(trainer.holdout, data[30:].float())
    history = trainer.run()
    evaluated = [r for r in history.records[:199] if "holdout_nll" in r]
    assert [r["step"] for r in evaluated] == list(range(10, 200, 10))
    best = min(evaluated, key=lambda r: r["holdout_nll"])
    end = history.records[199]
    assert history.restored_step == end["restored_step"] == best["step"] < 200
    assert end["restored_from_nll"] > end["holdout_nll"] == best["holdout_nll"]
    assert end["overlap_sigma"] == best["overlap_sigma"]
    assert all("holdout_nll" not in r for r in history.records[200:-1])
    assert math.isfinite(history.overlap_sigma) and history.last["holdout_frames"] == 10
    # the restored parameters are those of the best step: rerun to it and compare
    rerun, _, _ = _overfit_setup()
    Trainer(rerun, toy, data, 300.0, **OVERFIT).run(until=best["step"])
    model_at_end_of_phase, _, _ = _overfit_setup()
    check = Trainer(model_at_end_of_phase, toy, data, 300.0, **OVERFIT)
    check.run(until=200)
    for a, b in zip(rerun.state_dict().values(), model_at_end_of_phase.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)

    interrupted, _, _ = _overfit_setup()
    Trainer(interrupted, toy, data, 300.0, checkpoint=tmp_path, checkpoint_every=80,
            **OVERFIT).run(until=170)  # killed after the best step, checkpoint at 160
    resumed, _, _ = _overfit_setup()
    history_resumed = train(resumed, toy, data, 300.0, checkpoint=tmp_path, resume=True,
                            **OVERFIT)
    assert history_resumed.restored_step == best["step"]
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(history_resumed["loss"], history["loss"])


def test_holdout_fraction_zero_trains_on_all_frames(well_data):
    trainer = Trainer(_small_model(), DoubleWell1D(), well_data, 300.0,
                      **(SMALL | {"holdout_fraction": 0.0}))
    assert trainer.holdout is None and trainer.boundary.shape[0] == len(well_data)
    history = trainer.run()
    assert "holdout_nll" not in history.columns and math.isnan(history.overlap_sigma)
    with pytest.raises(InputError, match="holdout_fraction"):
        train(_small_model(), DoubleWell1D(), well_data, 300.0,
              **(SMALL | {"holdout_fraction": 1.0}))


class FlakyWell(DoubleWell1D):
    """A double well whose evaluations fail (NaN) while ``failing`` is set."""

    failing = False

    def _energy(self, x):
        u = super()._energy(x)
        return torch.full_like(u, math.nan) if self.failing else u


def test_nonfinite_energy_skips_the_step_and_is_counted(well_data):
    energy = FlakyWell()
    model = _small_model()
    trainer = Trainer(model, energy, well_data, 300.0, **(SMALL | {"max_consecutive_skips": 3}))
    trainer.run(until=8)  # into the TRADE phase
    before = [p.detach().clone() for p in model.parameters()]
    adam_state = {k: v["exp_avg"].clone() for k, v in enumerate(trainer.optimizer.state.values())}
    energy.failing = True
    record = trainer.train_step()
    assert record["skipped"] == 1 and math.isnan(record["grad_norm"])
    assert trainer.counters["skipped_steps"] == 1 and trainer.counters["nonfinite_energies"] > 0
    assert energy.n_failed > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    for k, v in enumerate(trainer.optimizer.state.values()):
        assert torch.equal(v["exp_avg"], adam_state[k])
    energy.failing = False
    assert trainer.train_step()["skipped"] == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    energy.failing = True
    with pytest.raises(TrainingDivergedError, match="3 consecutive"):
        trainer.run()


def test_reverse_kl_boundary_without_data():
    toy = HarmonicOscillator(spring_constant=100.0, dim=2, window=2.0)
    model = ConditionalFlow(toy.domains, 300.0, (300.0, 600.0), hidden=16, n_blocks=1, seed=0,
                            **UNIFORM)
    kl_before = toy.kl_divergence(model, 300.0, resolution=64)
    history = train(model, toy, None, 300.0, steps=100, batch_size=128, trade_batch_size=32,
                    warmup_steps=80, ramp_steps=10, learning_rate=1e-2, quiet=True)
    assert history.skipped_steps == 0
    assert toy.kl_divergence(model, 300.0, resolution=64) < 0.5 * kl_before
    with pytest.raises(InputError, match="boundary"):
        train(model, toy, None, 300.0, evaluation_points="boundary", **SMALL)


def test_reverse_kl_added_to_nll_schedule_and_record(well_data):
    toy = DoubleWell1D()
    model = _small_model()
    trainer = Trainer(model, toy, well_data, 300.0, **(SMALL | {
        "kl_weight": 0.5, "kl_start": 4, "kl_ramp_steps": 2, "trade_weight": 0.0}))
    assert [trainer.kl_weight(s) for s in (0, 3, 4, 5, 10)] == [0.0, 0.0, 0.25, 0.5, 0.5]
    # the cutoff sits energy_cutoff above the training frames' mean reduced energy (the
    # last tenth is held out)
    train_part = well_data[:-round(0.1 * len(well_data))]
    mean_u = float(beta_from_temperature(300.0) * toy(train_part.to(torch.float64)).mean())
    assert trainer.objective.energy_cutoff == pytest.approx(mean_u + 100.0)
    evaluations = toy.n_evaluations
    first = trainer.train_step()
    assert math.isnan(first["kl"]) and first["kl_weight"] == 0.0
    assert toy.n_evaluations == evaluations  # NLL-only steps evaluate no energies
    trainer.run(until=6)
    record = trainer.history.last
    assert record["kl_weight"] == 0.5 and math.isfinite(record["kl"])
    assert toy.n_evaluations > evaluations
    # the step's boundary loss is NLL + w · KL (same draws as the step itself)
    assert record["boundary"] != pytest.approx(record["kl"])
    assert trainer.history.skipped_steps == 0


def test_combined_objective_gradient_is_nll_plus_weighted_kl(well_data):
    """The step's gradient equals ∇NLL + w ∇KL computed separately with the same draws."""
    toy = DoubleWell1D()
    options = SMALL | {"kl_weight": 0.3, "kl_start": 0, "kl_ramp_steps": 1,
                       "trade_weight": 0.0, "learning_rate": 1e-3, "grad_clip": 1e9}
    trainer = Trainer(_small_model(), toy, well_data, 300.0, **options)
    with torch.no_grad():  # make the model non-trivial first
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    state = trainer.generator.get_state()
    batch, _ = trainer._boundary_batch(options["batch_size"])
    nll = trainer.objective.nll(trainer.model, batch)
    kl, _ = trainer.objective.reverse_kl(trainer.model, trainer.config.reverse_kl_samples,
                                         trainer.generator)
    expected = torch.autograd.grad(nll + 0.3 * kl, trainer.parameters)
    trainer.generator.set_state(state)
    captured = {}

    def capture(optimizer, args, kwargs):
        captured["grads"] = [p.grad.clone() for p in trainer.parameters]

    trainer.optimizer.register_step_pre_hook(capture)
    record = trainer.train_step()
    assert record["boundary"] == pytest.approx(float((nll + 0.3 * kl).detach()), rel=1e-6)
    for got, want in zip(captured["grads"], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def _reverse_kl_by_quadrature(model, toy, temperature: float, n: int = 2000) -> float:
    """``KL(p_θ ‖ q)`` in nats on a 1-D toy's interval (midpoint rule, ``n`` cells)."""
    low, high = toy.interval
    width = (high - low) / n
    x = (low + width * (torch.arange(n, dtype=torch.float64) + 0.5)).reshape(-1, 1)
    with torch.no_grad():
        log_p = model.log_prob(x.to(model.dtype), temperature).to(torch.float64)
    p = torch.exp(log_p) * width
    return float(torch.sum(p * (log_p - toy.log_density(x, temperature))))


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_reverse_kl_term_rescues_a_tiny_data_set(data_seed):
    """With 12 data points NLL over-fits; the reverse KL at T0 pulls the model to Boltzmann.

    Asserted on ``KL(model ‖ exact)``, the quantity the term minimises (up to ``log Z``) and
    the one that governs importance weights of model samples. Measured (300 steps, data
    seeds 0-7, this quadrature; 20000 cells change it by < 0.006): 1.25/0.70/0.94/0.89/
    0.68/1.66/1.31/1.20 nats without the term, ratio with/without 0.31/0.53/0.45/0.45/0.44/
    0.39/0.27/0.29 (at most 0.53, so 0.7 holds for each seed with room). With the term's
    sign flipped the KL rises to 87-133 nats.

    The forward ``KL(exact ‖ model)`` is not asserted: the term is mode-seeking and cannot
    create a well the data miss. Seeds 2 and 3 draw none of the 12 points from the right
    well (18 % of the mass); both fits keep 0.2-0.7 % there and the forward KL stays at
    1.46 -> 1.47 and 1.67 -> 1.40 nats (seeds with both wells: 0.21-0.56 of its value).
    """
    toy = DoubleWell1D()
    data = toy.sample(12, 300.0, seed=data_seed)
    kls = {}
    for weight in (0.0, 1.0):
        model = ConditionalFlow(toy.domains, 300.0, (300.0, 600.0), hidden=16, n_blocks=2,
                                n_bins=8, seed=0, **UNIFORM)
        history = train(model, toy, data, 300.0, steps=300, batch_size=64, trade_weight=0.0,
                        kl_weight=weight, kl_start=50, learning_rate=5e-3, quiet=True)
        assert history.skipped_steps == 0
        kls[weight] = _reverse_kl_by_quadrature(model, toy, 300.0)
    assert kls[1.0] < 0.7 * kls[0.0], kls


def test_weight_decay_and_kl_options_are_validated(well_data):
    toy = DoubleWell1D()
    for key, value in (("kl_weight", -1.0), ("energy_cutoff", 0.0), ("weight_decay", 2.0),
                       ("kl_start", -1)):
        with pytest.raises(InputError, match=key):
            train(_small_model(), toy, well_data, 300.0, **(SMALL | {key: value}))


@pytest.mark.parametrize("t0", [300.0, 450.0, 600.0])
def test_condition_schedule_widens_from_t0(t0, well_data):
    model = ConditionalFlow(DoubleWell1D().domains, t0, (300.0, 600.0), hidden=8, n_blocks=1,
                            **UNIFORM)
    trainer = Trainer(model, DoubleWell1D(), well_data, t0, steps=100, warmup_steps=20,
                      ramp_steps=30, trade_weight=1.0, quiet=True)
    beta0 = beta_from_temperature(t0)
    assert trainer.trade_weight(19) == 0.0 and trainer.trade_weight(20) == pytest.approx(1 / 30)
    assert trainer.trade_weight(60) == 1.0
    low, high = trainer.condition_bounds(20)
    assert low <= beta0 <= high and high - low <= 0.11 * (beta_from_temperature(300.0)
                                                          - beta_from_temperature(600.0))
    low, high = trainer.condition_bounds(60)
    assert low == pytest.approx(beta_from_temperature(600.0))
    assert high == pytest.approx(beta_from_temperature(300.0))
    betas = trainer.draw_betas(1000, (low, high))
    assert float(betas.min()) >= low and float(betas.max()) <= high
    # T0 inside: conditions on both sides; T0 at an end: one side only
    temperatures = 1 / (0.008314462618 * betas)
    assert (temperatures < t0).any() == (t0 > 300.0) and (temperatures > t0).any() == (t0 < 600.0)


def test_energy_budget_and_history_csv(tmp_path, well_data):
    toy = DoubleWell1D()
    history = train(_small_model(), toy, well_data, 300.0, energy_budget=500,
                    history_csv=tmp_path / "h.csv", **SMALL)
    assert history.stop_reason == "energy_budget" and len(history) < 20
    assert history.energy_evaluations >= 500
    assert toy.n_evaluations == history.energy_evaluations
    header = (tmp_path / "h.csv").read_text().splitlines()[0].split(",")
    assert {"step", "loss", "trade", "energy_evaluations", "skipped"} <= set(header)
    loaded = TrainingHistory.from_state_dict(history.state_dict())
    np.testing.assert_array_equal(loaded["loss"], history["loss"])


def test_train_rejects_bad_input(well_data):
    toy = DoubleWell1D()
    with pytest.raises(InputError, match="boundary_temperature"):
        train(_small_model(), toy, well_data, 700.0, **SMALL)
    with pytest.raises(InputError, match="temperature_range"):
        train(_small_model(), toy, well_data, 300.0, temperature_range=(250.0, 600.0), **SMALL)
    with pytest.raises(InputError, match="unknown training option"):
        train(_small_model(), toy, well_data, 300.0, learning_rat=1.0, **SMALL)
    with pytest.raises(InputError, match="shape"):
        train(_small_model(), toy, torch.zeros(10, 2), 300.0, **SMALL)
    with pytest.raises(InputError, match="loss"):
        train(_small_model(), toy, well_data, 300.0, loss="l1", **SMALL)
    with pytest.raises(InputError, match="event_shape"):
        train(_small_model(), TorsionBond2D(), well_data, 300.0, **SMALL)


def test_settings_come_from_training_config(well_data):
    """A TrainingConfig, keyword overrides, or both: the same run; unknown names named."""
    toy = DoubleWell1D()
    settings = {key: value for key, value in SMALL.items() if key != "quiet"}
    by_keywords = train(_small_model(), toy, well_data, 300.0, seed=2, quiet=True, **settings)
    config = TrainingConfig(**settings)
    by_config = train(_small_model(), toy, well_data, 300.0, config, seed=2, quiet=True)
    np.testing.assert_array_equal(by_config["loss"], by_keywords["loss"])
    other_seed = train(_small_model(), toy, well_data, 300.0, config, seed=3, quiet=True)
    assert not np.array_equal(other_seed["loss"], by_config["loss"])
    # an override replaces the config's field, and the fields left None follow it
    trainer = Trainer(_small_model(), toy, well_data, 300.0, TrainingConfig(steps=300),
                      steps=30, quiet=True)
    assert (trainer.config.steps, trainer.config.warmup_steps, trainer.config.ramp_steps) == \
        (30, 20, 5)
    with pytest.raises(InputError) as info:
        train(_small_model(), toy, well_data, 300.0, config, learning_rat=1.0, quiet=True)
    message = str(info.value)
    assert "'learning_rat'" in message
    assert all(name in message for name in TrainingConfig.__dataclass_fields__)
    with pytest.raises(InputError, match="config must be a TrainingConfig, got tuple"):
        train(_small_model(), toy, well_data, 300.0, (300.0, 600.0), quiet=True)


# ---------------------------------------------------------------------------- molecules
@pytest.mark.slow
def test_alanine_dipeptide_vacuum_ci_run(vacuum, tmp_path):
    """A CI-sized TRADE run on a real OpenMM system: the residual falls, ESS is finite."""
    import openmm_trade as ot
    from openmm_trade.flow import TemperatureFlow

    boundary = ot.md.simulate(vacuum, 300.0, n_frames=200, interval_ps=0.5, seed=1,
                              equilibration_ps=5.0, quiet=True)
    model = TemperatureFlow.for_system(vacuum, boundary, temperature_range=(300.0, 600.0),
                                       hidden=32, n_blocks=1, seed=0)
    with ot.OpenMMEnergy(vacuum, platform="CPU") as energy:
        # the whole range from the first TRADE step (initial_width=1), so the loss of early
        # and late steps is taken over the same distribution of conditions
        history = train(model, energy, boundary, 300.0, steps=220, batch_size=64,
                        trade_batch_size=32, warmup_steps=60, ramp_steps=20, initial_width=1.0,
                        trade_weight=1.0,
                        evaluation_points="boundary", grid_size=8, grid_samples=32,
                        grid_nodes_per_step=1, validate_every=80, validation_samples=128,
                        history_csv=tmp_path / "h.csv", quiet=True)
        assert energy.n_evaluations == history.energy_evaluations
    # On the MD frames the residual ∂_β log p + U - ⟨U⟩ is something a model can remove:
    # its Huber loss must fall clearly (measured: median 2.9 over the first 20 TRADE steps,
    # 1.2 over the last 20; λ = 1 because this small model learns little in 160 steps at
    # the default 0.3). Flow samples of so small a model are mostly strained conformations
    # whose residuals stay large, so they are not used here.
    trade = history["trade"][~np.isnan(history["trade"])]
    assert trade.size == 160
    assert np.median(trade[-20:]) < 0.6 * np.median(trade[:20])
    last = history.last
    for t in ("300K", "450K", "600K"):
        assert math.isfinite(last[f"residual_{t}"])
    assert history.energy_evaluations > 0 and history.skipped_steps <= 5
    # The monitor's ESS at 300 K, recomputed outside the package: the same flow samples (the
    # validation generator is seeded by (seed, step); 300 K is drawn first), their energies
    # from a plain OpenMM context, and ESS = (Σw)² / (n Σw²).
    import openmm
    from openmm import unit

    generator = torch.Generator().manual_seed(0 * 1_000_003 + int(last["step"]))
    with torch.no_grad():
        x, log_p = model.eval().sample(128, 300.0, generator=generator)
    context = openmm.Context(vacuum.system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    energies = []
    for positions in x.double().reshape(128, -1, 3).numpy():
        context.setPositions(positions * unit.nanometer)
        energies.append(context.getState(getEnergy=True).getPotentialEnergy()
                        .value_in_unit(unit.kilojoule_per_mole))
    kt = 0.0083144626 * 300.0
    log_w = -np.asarray(energies) / kt - log_p.double().numpy()
    w = np.exp(log_w - log_w.max())
    assert last["ess_300K"] == pytest.approx(w.sum() ** 2 / (w.size * (w * w).sum()), rel=1e-3)
