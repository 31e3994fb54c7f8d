"""Splines, couplings and priors of openmm_trade.flow, checked against autograd/quadrature."""

from __future__ import annotations

import math

import pytest
import torch

from openmm_trade.errors import InputError
from openmm_trade.flow.couplings import SplineCoupling
from openmm_trade.flow.priors import BoxPrior
from openmm_trade.flow.splines import bounded_spline, circular_spline, wrap_angle

torch.set_num_threads(1)
K = 7


def _parameters(batch, seed, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(batch, k, generator=g, dtype=torch.float64)
            for k in (K, K, K + 1)]


SPLINES = {
    "bounded": (lambda x, p, inv=False: bounded_spline(x, *p, 0.0, 1.0, inverse=inv), 0.0, 1.0),
    "circular": (lambda x, p, inv=False: circular_spline(x, *p, inverse=inv), -math.pi, math.pi),
}


@pytest.mark.parametrize("name", SPLINES)
def test_spline_inverse_and_log_det_against_autograd(name):
    spline, low, high = SPLINES[name]
    params = _parameters(500, seed=1)
    x = (low + (high - low) * torch.rand(500, dtype=torch.float64,
                                         generator=torch.Generator().manual_seed(1)))
    x = x.requires_grad_()
    y, ladj = spline(x, params)
    (dy_dx,) = torch.autograd.grad(y.sum(), x)  # elementwise map: the Jacobian is diagonal
    assert torch.allclose(ladj, dy_dx.log(), atol=1e-8)
    x_back, ladj_inv = spline(y.detach(), params, True)
    assert torch.allclose(x_back, x.detach(), atol=1e-10)
    assert torch.allclose(ladj_inv, -ladj.detach(), atol=1e-8)
    assert bool((y >= low).all() and (y <= high).all())


def test_spline_float32_round_trip_and_ends():
    # moderate parameters: with slopes ~1e-3 float32 rounding of y is amplified 1000-fold
    params = [p.float() for p in _parameters(64, seed=2, scale=0.7)]
    x = torch.rand(64, generator=torch.Generator().manual_seed(2))
    x[:2] = torch.tensor([0.0, 1.0])
    y, ladj = bounded_spline(x, *params)
    assert y[0] == 0.0 and y[1] == 1.0 and torch.isfinite(ladj).all()
    assert torch.allclose(bounded_spline(y, *params, inverse=True)[0], x, atol=1e-5)


def test_zero_parameters_are_identity():
    x = torch.rand(10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    zeros = [torch.zeros(10, k, dtype=torch.float64) for k in (K, K, K + 1)]
    y, ladj = bounded_spline(x, *zeros)
    assert torch.allclose(y, x, atol=1e-12) and ladj.abs().max() < 1e-9


def test_circular_spline_has_equal_slopes_at_the_seam():
    params = [p[:1].expand(2, -1) for p in _parameters(1, seed=3)]
    _, ladj = circular_spline(torch.tensor([-math.pi, math.pi], dtype=torch.float64), *params)
    assert abs(float(ladj[0] - ladj[1])) < 1e-12 and abs(float(ladj[0])) > 1e-3


def test_spline_second_derivative_with_respect_to_parameters():
    params = [p.requires_grad_() for p in _parameters(20, seed=4)]
    x = torch.rand(20, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    _, ladj = bounded_spline(x, *params)
    grads = torch.autograd.grad(ladj.sum(), params, create_graph=True)
    second = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), params)
    assert all(torch.isfinite(s).all() for s in second)


def test_wrap_angle_range():
    y = wrap_angle(torch.linspace(-20, 20, 1001, dtype=torch.float64))
    assert bool((y >= -math.pi).all() and (y < math.pi).all())


def _randomized_coupling():
    circular = torch.tensor([True, False, True, False])
    layer = SplineCoupling([0, 1], [2, 3], circular, n_bins=5, hidden=16, depth=2, offset=1.0,
                           generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()),
                                     dtype=p.dtype))
    return layer


def _random_points(n, circular, seed):
    u = torch.rand(n, len(circular), generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float64)
    return torch.where(circular, (2 * u - 1) * math.pi, u)


def test_coupling_log_det_equals_full_autograd_jacobian():
    layer = _randomized_coupling()
    circular = torch.tensor([True, False, True, False])
    x = _random_points(6, circular, seed=5)
    features = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    y, ladj = layer(x, features)
    for i in range(6):
        def one(v, i=i):
            return layer(v[None], features[i:i + 1])[0][0]

        jac = torch.autograd.functional.jacobian(one, x[i])
        assert torch.allclose(torch.linalg.slogdet(jac)[1], ladj[i], atol=1e-8)
    x_back, ladj_inv = layer.inverse(y, features)
    assert torch.allclose(wrap_angle(x_back - x)[:, circular], torch.zeros(6, 2, dtype=x.dtype),
                          atol=1e-10)
    assert torch.allclose(x_back[:, ~circular], x[:, ~circular], atol=1e-10)
    assert torch.allclose(ladj_inv, -ladj, atol=1e-8)


@pytest.mark.parametrize("widen,floor", [(False, 0.0), (True, 0.0), (True, 0.05)])
def test_truncated_normal_prior_normalised_and_consistent(widen, floor):
    prior = BoxPrior(torch.tensor([False, True]), kind="truncated_normal",
                     loc=torch.tensor([0.3, 0.0]), scale=torch.tensor([0.2, 1.0]), widen=widen,
                     floor=floor)
    grid = (torch.arange(20_000, dtype=torch.float64) + 0.5) / 20_000
    z = torch.stack([grid, torch.zeros_like(grid)], dim=-1)
    for c in (-0.3, 0.0, 0.7):
        density = prior.log_prob(z, torch.full((len(grid),), c, dtype=torch.float64)).exp()
        assert abs(float(density.mean()) * 2 * math.pi - 1.0) < 1e-6  # ∫ over [0,1] × circle
    samples, log_p = prior.sample(1000, torch.full((1000,), 0.5), torch.Generator().manual_seed(1),
                                  dtype=torch.float64)
    assert bool((samples[:, 0] >= 0).all() and (samples[:, 0] <= 1).all())
    assert torch.allclose(log_p, prior.log_prob(samples, torch.full((1000,), 0.5)))


def test_prior_floor_is_a_defensive_mixture_with_the_uniform():
    """Density (1 - α) N_[0,1] + α: its mass above 0.9 (where the normal has ~nothing) is α/10,
    both in the density and in the samples."""
    floor = 0.04
    prior = BoxPrior(torch.tensor([False]), kind="truncated_normal", loc=torch.tensor([0.2]),
                     scale=torch.tensor([0.05]), floor=floor)
    grid = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    density = prior.log_prob(grid[:, None], torch.zeros(len(grid))).exp()
    assert float(density[grid > 0.9].mean()) == pytest.approx(floor, rel=1e-6)
    n = 200_000
    samples, log_p = prior.sample(n, torch.zeros(n), torch.Generator().manual_seed(0),
                                  dtype=torch.float64)
    tail = float((samples[:, 0] > 0.9).double().mean())
    assert tail == pytest.approx(floor / 10, abs=4 * math.sqrt(floor / 10 / n))
    assert torch.allclose(log_p, prior.log_prob(samples, torch.zeros(n)))
    with pytest.raises(InputError, match="floor"):
        BoxPrior(torch.tensor([False]), kind="truncated_normal", floor=1.0)
