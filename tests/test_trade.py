"""The TRADE objective against exact densities (harmonic oscillator, double well)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from openmm_trade.errors import CheckpointError, InputError
from openmm_trade.flow import ConditionalFlow
from openmm_trade.toys import DoubleWell1D, HarmonicOscillator
from openmm_trade.trade import (
    MeanEnergyGrid,
    TradeObjective,
    beta_derivative,
    draw_samples,
    estimate_mean_energy,
    importance_mean_energy,
    lin_log_cut,
    residual_loss,
    soften_energies,
    trade_residual,
)
from openmm_trade.units import KB, beta_from_temperature, temperature_from_beta

torch.set_num_threads(1)


class ExactGaussian(nn.Module):
    """``p(x | T) = N(0, k_B T / k)`` per coordinate: the exact Boltzmann density of a
    harmonic oscillator, written in T (as the network would be) with float64 arithmetic."""

    def __init__(self, spring_constant: float = 100.0, dim: int = 2, width: float = 1.0):
        super().__init__()
        self.k, self.event_shape, self.width = spring_constant, (dim,), width
        self.temperature_range, self.reference_temperature = (300.0, 600.0), 300.0
        self.dtype, self.device = torch.float64, torch.device("cpu")
        self.dummy = nn.Parameter(torch.zeros(()))  # something for optimisers to hold

    def _variance(self, temperature, n):
        t = torch.as_tensor(temperature, dtype=torch.float64).expand(n)
        return self.width**2 * KB * t / self.k

    def log_prob(self, x, temperature):
        var = self._variance(temperature, x.shape[0])
        return (-0.5 * (x**2).sum(-1) / var
                - 0.5 * x.shape[1] * torch.log(2 * math.pi * var)) + 0 * self.dummy

    def sample(self, n, temperature, generator=None):
        var = self._variance(temperature, n)
        x = torch.randn(n, self.event_shape[0], generator=generator, dtype=torch.float64)
        x = x * var.sqrt()[:, None]
        return x, self.log_prob(x, temperature)


@pytest.fixture
def oscillator():
    return HarmonicOscillator(spring_constant=100.0, dim=2)


def test_beta_derivative_is_exact_for_the_exact_density(oscillator):
    model = ExactGaussian(dim=2)
    temperatures = torch.tensor([300.0, 350.0, 450.0, 600.0], dtype=torch.float64)
    x = torch.cat([oscillator.sample(1, float(t), seed=i) for i, t in enumerate(temperatures)])
    beta = beta_from_temperature(temperatures)
    log_p, d = beta_derivative(model, x, beta)
    mean = torch.from_numpy(oscillator.mean_energy(temperatures.numpy()))
    expected = -oscillator(x) + mean  # -U + d/(2β)
    torch.testing.assert_close(d, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d, oscillator.dlog_density_dbeta(x, temperatures), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(log_p, oscillator.log_density(x, temperatures))
    residual = trade_residual(model, x, beta, oscillator(x), mean).detach()
    assert residual.abs().max() < 1e-12
    assert float(residual_loss(residual)) < 1e-24
    assert float(residual_loss(residual, "huber")) < 1e-24


def test_beta_derivative_matches_finite_differences_on_a_flow():
    """The derivative is with respect to β, although the network is fed log(T/T0)."""
    toy = DoubleWell1D()
    model = ConditionalFlow(toy.domains, 300.0, (300.0, 600.0), hidden=16, n_blocks=2,
                            seed=3, dtype=torch.float64, prior="uniform", widen_prior=False,
                            prior_floor=0.0)
    with torch.no_grad():  # make the flow depend on the temperature
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1),
                                     dtype=p.dtype))
    x = toy.sample(6, 400.0, seed=0)
    beta = torch.full((6,), beta_from_temperature(400.0), dtype=torch.float64)
    _, d = beta_derivative(model, x, beta, create_graph=False)
    h = 1e-6
    with torch.no_grad():
        up = model.log_prob(x, temperature_from_beta(beta + h))
        down = model.log_prob(x, temperature_from_beta(beta - h))
    torch.testing.assert_close(d, (up - down) / (2 * h), rtol=1e-5, atol=1e-6)
    assert d.abs().max() > 1e-2


def test_residual_is_differentiable_in_the_parameters():
    toy = DoubleWell1D()
    model = ConditionalFlow(toy.domains, 300.0, (300.0, 600.0), hidden=8, n_blocks=1, seed=0,
                            prior="uniform", widen_prior=False, prior_floor=0.0)
    x = toy.sample(16, 450.0, seed=0).float()
    beta = torch.full((16,), beta_from_temperature(450.0), dtype=torch.float64)
    loss = residual_loss(trade_residual(model, x, beta, toy(x), toy.mean_energy(450.0)))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_importance_mean_energy_handles_infinite_energies():
    u = torch.tensor([1.0, 3.0, math.inf, math.nan], dtype=torch.float64)
    est = importance_mean_energy(u, torch.zeros(4), beta=0.0)
    assert est.mean == 2.0 and est.n_nonfinite == 2 and est.ess == pytest.approx(0.5)
    none = importance_mean_energy(torch.full((3,), math.inf), torch.zeros(3), beta=0.1)
    assert math.isnan(none.mean) and none.ess == 0.0 and not none.ok


def test_importance_sampling_corrects_a_wrong_model(oscillator):
    model = ExactGaussian(dim=2, width=1.2)  # too wide by 20 %
    est = estimate_mean_energy(model, oscillator, 450.0, 20000, torch.Generator().manual_seed(0))
    assert 0.3 < est.ess < 1.0
    assert est.mean == pytest.approx(oscillator.mean_energy(450.0), rel=0.03)
    exact = estimate_mean_energy(ExactGaussian(dim=2), oscillator, 450.0, 100,
                                 torch.Generator().manual_seed(0))
    assert exact.ess == pytest.approx(1.0)


def test_mean_energy_grid_interpolates_and_restores():
    grid = MeanEnergyGrid((300.0, 600.0), n_points=5, ema=0.5)
    assert np.all(np.diff(grid.betas) > 0)
    for i, b in enumerate(grid.betas):
        grid.update(i, 2.0 * b)
    mid = torch.tensor([0.3 * grid.betas[1] + 0.7 * grid.betas[2]], dtype=torch.float64)
    assert float(grid(mid)) == pytest.approx(2.0 * float(mid))
    grid.update(0, 10.0)
    assert grid.values[0] == pytest.approx(0.5 * 2.0 * grid.betas[0] + 5.0)
    grid.update(1, math.nan)  # ignored
    assert grid.counts[1] == 1
    assert list(grid.nodes_between(grid.betas[1] + 1e-9, grid.betas[2] - 1e-9)) == [1, 2]
    other = MeanEnergyGrid((300.0, 600.0), n_points=5)
    other.load_state_dict(grid.state_dict())
    assert np.array_equal(other.values, grid.values)
    with pytest.raises(CheckpointError):
        MeanEnergyGrid((300.0, 500.0), n_points=5).load_state_dict(grid.state_dict())
    with pytest.raises(InputError):
        MeanEnergyGrid((300.0, 600.0), n_points=1)


@pytest.mark.parametrize("mode", ["grid", "continuous"])
@pytest.mark.parametrize("points", ["flow", "boundary", "both"])
def test_trade_loss_vanishes_for_the_exact_density(oscillator, mode, points):
    model = ExactGaussian(dim=2)
    objective = TradeObjective(oscillator, 300.0, (300.0, 600.0), mean_energy=mode,
                               evaluation_points=points, grid_samples=4000)
    generator = torch.Generator().manual_seed(0)
    betas = beta_from_temperature(torch.tensor([300.0, 420.0, 600.0], dtype=torch.float64))
    if points != "flow":
        with pytest.raises(InputError, match="boundary"):
            objective.trade_loss(model, betas, 4, generator=generator)
    if mode == "grid":
        objective.refresh_grid(model, float(betas.min()), float(betas.max()), 2, generator)
        assert np.all(objective.grid.counts > 0)
        exact = oscillator.mean_energy(temperature_from_beta(objective.grid.betas))
        np.testing.assert_allclose(objective.grid.values, exact, rtol=0.05)
    boundary = oscillator.sample(3 * 400, 300.0, seed=1)
    term = objective.trade_loss(model, betas, 400, boundary, oscillator(boundary), generator)
    assert term.n_points == (2400 if points == "both" else 1200) and term.n_nonfinite == 0
    # the only error left is the Monte-Carlo error of ⟨U⟩: std(U)/√400 = k_B T/20 ≤ 0.1 k_B T0
    assert term.rms < 0.25
    ordinary = TradeObjective(oscillator, 300.0, (300.0, 600.0), mean_energy=mode,
                              evaluation_points=points)
    if mode == "grid":
        ordinary.grid.values[:] = 0.0  # a wrong ⟨U⟩ table gives a large residual
        ordinary.grid.counts[:] = 1
        wrong = ordinary.trade_loss(model, betas, 400, boundary, oscillator(boundary), generator)
        assert wrong.rms > 1.0


def test_reverse_kl_of_the_exact_density_is_minus_log_z(oscillator):
    objective = TradeObjective(oscillator, 300.0, (300.0, 600.0))
    loss, bad = objective.reverse_kl(ExactGaussian(dim=2), 64, torch.Generator().manual_seed(0))
    assert bad == 0
    assert float(loss.detach()) == pytest.approx(-oscillator.log_partition_function(300.0),
                                                 abs=1e-10)


def test_diagnostics_of_the_exact_density(oscillator):
    objective = TradeObjective(oscillator, 300.0, (300.0, 600.0))
    d = objective.diagnostics(ExactGaussian(dim=2), 500.0, 4000, torch.Generator().manual_seed(0))
    assert d["ess"] == pytest.approx(1.0)
    assert d["mean_energy"] == pytest.approx(oscillator.mean_energy(500.0), rel=0.05)
    assert d["residual"] < 0.05 and d["n_nonfinite"] == 0


def test_objective_rejects_bad_options(oscillator):
    for kwargs in ({"loss": "l1"}, {"mean_energy": "exact"}, {"evaluation_points": "data"},
                   {"huber_delta": 0.0}):
        with pytest.raises(InputError, match=next(iter(kwargs))):
            TradeObjective(oscillator, 300.0, (300.0, 600.0), **kwargs)
    with pytest.raises(InputError, match="energy"):
        TradeObjective(lambda x: x, 300.0, (300.0, 600.0))


def test_lin_log_cut_is_linear_below_logarithmic_above_and_smooth():
    u = torch.tensor([-5.0, 0.0, 10.0, 11.0, 1e3, 1e12, math.inf], dtype=torch.float64,
                     requires_grad=True)
    cut = lin_log_cut(u, 10.0, maximum=1e9)
    assert cut[:3].tolist() == [-5.0, 0.0, 10.0]
    assert cut[3].item() == pytest.approx(10.0 + math.log(2.0))
    assert cut[4].item() == pytest.approx(10.0 + math.log1p(990.0))
    assert cut[5].item() == pytest.approx(10.0 + math.log1p(1e9 - 10.0))  # clamped
    assert torch.isfinite(cut).all()
    (grad,) = torch.autograd.grad(cut.sum(), u)
    assert grad[:2].tolist() == [1.0, 1.0]
    assert grad[3].item() == pytest.approx(0.5) and grad[4].item() == pytest.approx(1 / 991)
    assert grad[5].item() == 0.0 and grad[6].item() == 0.0 and torch.isfinite(grad).all()
    # continuous value and slope at the cutoff
    eps = 1e-6
    below, above = lin_log_cut(torch.tensor([10.0 - eps, 10.0 + eps], dtype=torch.float64), 10.0)
    assert float(above - below) == pytest.approx(2 * eps, rel=1e-4)
    assert lin_log_cut(u, None) is u


def test_trade_energy_cutoff_softens_the_residual_above_the_cutoff_only(oscillator):
    """With ``energy_cutoff`` the residual uses Ũ = lin_log_cut(β0 U)/β0: the change of each
    residual is -(β0 U - lin_log_cut(β0 U)) up to one shared shift (of ⟨Ũ⟩ vs ⟨U⟩)."""
    model = ExactGaussian(dim=2, width=3.0)
    betas = torch.tensor([beta_from_temperature(300.0)], dtype=torch.float64)
    terms = {}
    for cutoff in (None, 5.0):
        objective = TradeObjective(oscillator, 300.0, (300.0, 600.0), mean_energy="continuous",
                                   energy_cutoff=cutoff)
        terms[cutoff] = objective.trade_loss(model, betas, 512,
                                             generator=torch.Generator().manual_seed(0))
    x, _ = draw_samples(model, 512, 300.0, torch.Generator().manual_seed(0))
    reduced = betas[0] * oscillator(x.to(torch.float64))
    expected = -(reduced - lin_log_cut(reduced, 5.0))
    assert int((expected < -1e-9).sum()) > 20  # many points above the cutoff
    shift = terms[5.0].residual - terms[None].residual - expected
    assert float(shift.std()) < 1e-8
    assert float(terms[5.0].rms) < float(terms[None].rms)
    # soften_energies is lin_log_cut in reduced units and leaves infinities alone
    u = torch.tensor([1.0, 50.0, math.inf], dtype=torch.float64)
    assert soften_energies(u, 0.5, 5.0).tolist()[:2] == pytest.approx(
        [1.0, (5.0 + math.log1p(25.0 - 5.0)) / 0.5])
    assert soften_energies(u, 0.5, 5.0)[2] == math.inf and soften_energies(u, 0.5, None) is u


def test_reverse_kl_energy_cutoff(oscillator):
    objective = TradeObjective(oscillator, 300.0, (300.0, 600.0))
    model = ExactGaussian(dim=2, width=3.0)  # too wide: some samples have high energy
    plain, _ = objective.reverse_kl(model, 256, torch.Generator().manual_seed(0))
    loose, _ = objective.reverse_kl(model, 256, torch.Generator().manual_seed(0),
                                    energy_cutoff=1e6)
    tight, _ = objective.reverse_kl(model, 256, torch.Generator().manual_seed(0),
                                    energy_cutoff=1.0)
    assert float(loose.detach()) == pytest.approx(float(plain.detach()), abs=1e-12)
    assert float(tight.detach()) < float(plain.detach())
