"""ConditionalFlow: the model protocol, exact normalisation, seams, derivatives in T."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from openmm_trade.errors import InputError
from openmm_trade.flow import ConditionalFlow, Domain, FlowArchitecture

torch.set_num_threads(1)
T_RANGE = (300.0, 600.0)


def randomize(model: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Move every parameter away from the identity initialisation (seeded)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return model


def toy_flow(dtype=torch.float64, prior="uniform", widen=False, seed=0, scale=0.2):
    """One torsion and one bond-like coordinate, randomised."""
    domains = [Domain.circular(), Domain.interval(0.1, 0.3, loc=0.2, scale=0.03)]
    flow = ConditionalFlow(domains, 300.0, T_RANGE, hidden=24, depth=2, n_blocks=2, n_bins=6,
                           prior=prior, widen_prior=widen, prior_floor=0.0, seed=seed,
                           dtype=dtype)
    return randomize(flow, scale=scale, seed=seed)


@pytest.fixture(scope="module")
def flow():
    return toy_flow()


@pytest.mark.parametrize("prior,widen", [("uniform", False), ("truncated_normal", True)])
def test_density_integrates_to_one_by_quadrature(prior, widen):
    model = toy_flow(prior=prior, widen=widen)
    n = 400  # converged to ~1e-5 for these parameters (checked against n = 1200)
    phi = -math.pi + (torch.arange(n, dtype=torch.float64) + 0.5) * (2 * math.pi / n)
    bond = 0.1 + (torch.arange(n, dtype=torch.float64) + 0.5) * (0.2 / n)
    grid = torch.cartesian_prod(phi, bond)
    cell = (2 * math.pi / n) * (0.2 / n)
    with torch.no_grad():
        for temperature in (300.0, 420.0, 600.0):
            log_p = model.log_prob(grid, temperature)
            total = float(log_p.exp().sum()) * cell
            assert abs(total - 1.0) < 1e-3, (temperature, total)
            assert log_p.max() - log_p.min() > 3.0  # far from the uniform initialisation
        # and the density really changes with temperature
        x = grid[:50]
        assert (model.log_prob(x, 300.0) - model.log_prob(x, 600.0)).abs().max() > 1e-2


def test_density_is_continuous_across_the_torsion_seam(flow):
    eps = 1e-7
    bond = torch.linspace(0.12, 0.28, 9, dtype=torch.float64)
    left = torch.stack([torch.full_like(bond, math.pi - eps), bond], dim=-1)
    right = torch.stack([torch.full_like(bond, -math.pi + eps), bond], dim=-1)
    with torch.no_grad():
        gap = (flow.log_prob(left, 450.0) - flow.log_prob(right, 450.0)).abs().max()
        # compare with the typical variation of log p over a small step elsewhere
        step = (flow.log_prob(left - torch.tensor([1.0, 0.0], dtype=torch.float64), 450.0)
                - flow.log_prob(left, 450.0)).abs().max()
    assert gap < 1e-5 and step > 1e-2
    # wrapping: φ and φ + 2π have the same density
    shifted = left + torch.tensor([2 * math.pi, 0.0], dtype=torch.float64)
    assert torch.allclose(flow.log_prob(shifted, 450.0), flow.log_prob(left, 450.0), atol=1e-5)


def test_forward_inverse_round_trip_and_log_det_against_autograd():
    model = toy_flow()
    model32 = toy_flow(dtype=torch.float32)
    x, _ = model32.sample(2000, 450.0)
    z, log_det = model32.forward(x, 450.0)
    x_back, log_det_inv = model32.inverse(z, 450.0)
    diff = torch.stack([torch.remainder(x_back[:, 0] - x[:, 0] + math.pi, 2 * math.pi) - math.pi,
                        x_back[:, 1] - x[:, 1]], dim=-1)
    assert diff.abs().max() < 1e-5
    assert (log_det + log_det_inv).abs().max() < 1e-3
    # full Jacobian of the float64 model
    x64, _ = model.sample(5, 350.0)
    _, log_det = model.forward(x64, 350.0)
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda v: model.forward(v[None], 350.0)[0][0],
                                                 x64[i].detach())
        assert torch.allclose(torch.linalg.slogdet(jac)[1], log_det[i], atol=1e-8)


def test_log_prob_of_samples_equals_sampled_log_p():
    model = toy_flow(dtype=torch.float32)
    temperatures = torch.linspace(300.0, 600.0, 1000)
    x, log_p = model.sample(1000, temperatures)
    assert torch.allclose(model.log_prob(x, temperatures), log_p, atol=2e-4)
    assert bool(((x[:, 1] >= 0.1) & (x[:, 1] <= 0.3)).all())
    assert bool(((x[:, 0] >= -math.pi) & (x[:, 0] <= math.pi)).all())


@pytest.mark.parametrize("prior,widen", [("uniform", False), ("truncated_normal", True)])
def test_temperature_derivative_matches_finite_difference(prior, widen):
    model = toy_flow(prior=prior, widen=widen)
    x, _ = model.sample(20, 450.0)
    x = x.detach()
    t = torch.full((20,), 450.0, dtype=torch.float64, requires_grad=True)
    (dlogp_dt,) = torch.autograd.grad(model.log_prob(x, t).sum(), t, create_graph=True)
    h = 1e-3
    with torch.no_grad():
        fd = (model.log_prob(x, 450.0 + h) - model.log_prob(x, 450.0 - h)) / (2 * h)
    assert torch.allclose(dlogp_dt, fd, rtol=1e-5, atol=1e-7)
    assert dlogp_dt.abs().max() > 1e-4
    # TRADE differentiates the derivative with respect to the parameters
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(dlogp_dt.pow(2).sum(), params, allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().max() > 0 for g in grads)


def test_samples_are_differentiable_in_temperature(flow):
    t = torch.full((8,), 400.0, dtype=torch.float64, requires_grad=True)
    x, log_p = flow.sample(8, t, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(x[:, 1].sum() + log_p.sum(), t)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0


def test_same_seed_gives_same_samples():
    a, b, c = (toy_flow(dtype=torch.float32, seed=s) for s in (3, 3, 4))
    xa, la = a.sample(100, 350.0)
    xb, lb = b.sample(100, 350.0)
    assert torch.equal(xa, xb) and torch.equal(la, lb)
    assert not torch.equal(xa, c.sample(100, 350.0)[0])
    assert not torch.equal(xa, a.sample(100, 350.0)[0])  # the generator advances


def test_identity_initialisation_is_the_prior():
    domains = [Domain.circular(), Domain.interval(-2.0, 2.0), Domain.real(0.0, 0.5)]
    model = ConditionalFlow(domains, 300.0, T_RANGE, hidden=8, n_blocks=2,
                            prior="uniform", widen_prior=False, prior_floor=0.0)
    x, log_p = model.sample(50, 500.0)
    expected = -math.log(2 * math.pi) - math.log(4.0) - math.log(0.5)
    assert torch.allclose(log_p, torch.full_like(log_p, expected), atol=1e-5)


def test_bad_inputs_raise_input_error(flow):
    x = torch.zeros(3, 2, dtype=torch.float64) + torch.tensor([0.0, 0.2], dtype=torch.float64)
    for bad in (0.0, -5.0, float("nan"), float("inf"), torch.tensor([300.0, -1.0, 300.0]),
                torch.tensor([300.0, 300.0]), "300"):
        with pytest.raises(InputError):
            flow.log_prob(x, bad)
    with pytest.raises(InputError):
        flow.sample(3, float("nan"))
    with pytest.raises(InputError, match=r"\(B, 2\)"):
        flow.log_prob(torch.zeros(3, 3), 300.0)
    with pytest.raises(InputError):
        flow.log_prob(torch.zeros(3), 300.0)
    with pytest.raises(InputError):
        flow.sample(0, 300.0)
    with pytest.raises(InputError):
        ConditionalFlow([Domain.circular()], 300.0, (600.0, 300.0))
    with pytest.raises(InputError):
        Domain("interval", 0.0, None)


def test_outside_support_is_minus_infinity(flow):
    x = torch.tensor([[0.0, 0.05], [0.0, 0.2], [10.0, 0.2]], dtype=torch.float64)
    log_p = flow.log_prob(x, 300.0)
    assert log_p[0] == -math.inf and torch.isfinite(log_p[1:]).all()


def arc_flow():
    """A torsion restricted to an arc through ±π (like a trans peptide bond) and a bond."""
    domains = [Domain.arc(2.5, 2.5 + 1.6, loc=math.pi, scale=0.2),
               Domain.interval(0.1, 0.3, loc=0.2, scale=0.03)]
    flow = ConditionalFlow(domains, 300.0, T_RANGE, hidden=16, n_blocks=2, n_bins=6,
                           prior="truncated_normal", widen_prior=False, prior_floor=0.0, seed=2,
                           dtype=torch.float64)
    return randomize(flow, scale=0.2, seed=2)


def test_arc_domain_is_normalised_and_holds_every_sample():
    model = arc_flow()
    n = 400
    omega = 2.5 + (torch.arange(n, dtype=torch.float64) + 0.5) * (1.6 / n)  # passes π
    bond = 0.1 + (torch.arange(n, dtype=torch.float64) + 0.5) * (0.2 / n)
    grid = torch.cartesian_prod(omega, bond)
    wrapped = grid.clone()
    wrapped[:, 0] = torch.remainder(wrapped[:, 0] + math.pi, 2 * math.pi) - math.pi
    with torch.no_grad():
        for temperature in (300.0, 600.0):
            log_p = model.log_prob(wrapped, temperature)
            total = float(log_p.exp().sum()) * (1.6 / n) * (0.2 / n)
            assert abs(total - 1.0) < 1e-3, (temperature, total)
            assert torch.allclose(log_p, model.log_prob(grid, temperature), atol=1e-9)
        x, log_p = model.sample(4000, 450.0, torch.Generator().manual_seed(0))
    assert float(x[:, 0].min()) >= -math.pi and float(x[:, 0].max()) < math.pi
    distance = torch.remainder(x[:, 0] - 2.5, 2 * math.pi)  # counter-clockwise from low
    assert float(distance.max()) <= 1.6 + 1e-9
    assert bool((x[:, 0] < 0).any()) and bool((x[:, 0] > 0).any())  # both sides of ±π
    assert torch.allclose(model.log_prob(x, 450.0), log_p, atol=1e-8)
    outside = torch.tensor([[0.0, 0.2], [2.4, 0.2]], dtype=torch.float64)
    assert bool((model.log_prob(outside, 450.0) == -math.inf).all())


def test_arc_from_data_finds_the_occupied_arc():
    rng = np.random.default_rng(0)
    through_pi = np.remainder(math.pi + 0.1 * rng.standard_normal(500) + math.pi, 2 * math.pi) \
        - math.pi
    domain = Domain.arc_from_data(through_pi, margin=0.5)
    assert domain.kind == "arc" and -math.pi <= domain.low < math.pi
    occupied = np.remainder(through_pi - domain.low, 2 * math.pi)
    assert occupied.min() > 0.0 and occupied.max() < domain.width
    assert domain.width == pytest.approx(2.0 * np.ptp(np.remainder(through_pi, 2 * math.pi)))
    assert math.cos(domain.loc - math.pi) > 0.999 and domain.scale == pytest.approx(0.1, rel=0.1)
    with pytest.raises(InputError, match="arc"):
        Domain.arc(0.0, 7.0)


def test_warns_once_outside_the_training_range():
    model = toy_flow()
    x = torch.tensor([[0.0, 0.2]], dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"\[300, 600\] K"):
        model.log_prob(x, 800.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.log_prob(x, 900.0)
        model.sample(2, 200.0)
        toy_flow().log_prob(x, 450.0)  # inside the range: no warning


def test_maximum_likelihood_fit_learns_a_double_well():
    g = torch.Generator().manual_seed(0)
    data = torch.cat([0.3 * torch.randn(1000, 1, generator=g) - 1.0,
                      0.3 * torch.randn(1000, 1, generator=g) + 1.0]).clamp(-1.99, 1.99)
    model = ConditionalFlow([Domain.interval(-2.0, 2.0)], 300.0, (300.0, 300.0), hidden=32,
                            n_blocks=2, n_bins=8, seed=0, prior="uniform", widen_prior=False,
                            prior_floor=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(150):
        optimizer.zero_grad()
        loss = -model.log_prob(data, 300.0).mean()
        loss.backward()
        optimizer.step()
    # uniform on [-2, 2]: NLL = log 4 = 1.386; the mixture's entropy is about 1.0
    assert loss.item() < 1.15
    x, _ = model.sample(4000, 300.0)
    assert abs(float((x > 0).float().mean()) - 0.5) < 0.05
    assert float((x.abs() < 0.2).float().mean()) < 0.08


def test_config_rebuilds_the_same_model(flow):
    clone = ConditionalFlow(**flow.config, dtype=torch.float64)
    clone.load_state_dict(flow.state_dict())
    x = torch.tensor([[0.5, 0.2], [-3.0, 0.15]], dtype=torch.float64)
    assert torch.equal(clone.log_prob(x, 333.0), flow.log_prob(x, 333.0))
    assert flow.event_shape == (2,) and flow.dtype == torch.float64
    assert flow.device == torch.device("cpu")


def test_architecture_defaults_and_validation():
    flow = ConditionalFlow([Domain.interval(-1.0, 1.0)], 300.0, (300.0, 600.0))
    assert flow.architecture == FlowArchitecture()  # the product defaults, as for_system's
    assert (flow.architecture.hidden, flow.architecture.n_blocks) == (64, 3)
    assert len(flow.couplings) == 3  # one coordinate: one layer per block
    clone = ConditionalFlow(**flow.config)
    assert clone.architecture == flow.architecture
    for bad, match in [({"hidden": 0}, "hidden"), ({"n_bins": True}, "n_bins"),
                       ({"prior": "gaussian"}, "prior"), ({"widths": 3}, "widths"),
                       ({"prior": "uniform"}, "widen_prior"), ({"prior_floor": 1.0}, "floor")]:
        with pytest.raises(InputError, match=match):
            ConditionalFlow([Domain.circular()], 300.0, (300.0, 600.0), **bad)
    with pytest.raises(InputError, match="architecture must be"):
        ConditionalFlow([Domain.circular()], 300.0, (300.0, 600.0), 32)  # the old hidden
