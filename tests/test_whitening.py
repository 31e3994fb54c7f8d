"""Whitening: the affine decorrelation of stiff internal coordinates before the flow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import short_md_frames

import openmm_trade as ot
from openmm_trade.flow import TemperatureFlow
from openmm_trade.flow.whitening import (
    MIN_FRAMES_PER_COORDINATE,
    Whitening,
    ledoit_wolf_correlation,
)

torch.set_num_threads(1)


def correlated(n: int, seed: int = 0) -> torch.Tensor:
    """``(n, 4)``: a circular angle, two correlated reals, and an arc around ±π."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g, dtype=torch.float64)
    b = 0.8 * a + 0.6 * torch.randn(n, generator=g, dtype=torch.float64)
    arc = torch.remainder(math.pi + 0.1 * (a + torch.randn(n, generator=g, dtype=torch.float64))
                          + math.pi, 2 * math.pi) - math.pi
    free = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 2 * math.pi
    return torch.stack([free, 2.0 + 0.01 * a, 5.0 * b, arc], 1)


def test_round_trip_and_log_det_against_autograd():
    z = correlated(400)
    w = Whitening.from_data(z, index=[1, 2, 3], periodic=[False, False, True],
                            centres=[None, None, math.pi])
    y, log_det = w.forward(z)
    assert torch.equal(y[:, 0], z[:, 0])  # the circular coordinate passes through
    back, inverse_log_det = w.inverse(y)
    difference = torch.remainder(back - z + math.pi, 2 * math.pi) - math.pi
    assert torch.allclose(difference, torch.zeros_like(z), atol=1e-10)
    assert torch.all(back[:, 3] >= -math.pi) and torch.all(back[:, 3] < math.pi)
    jacobian = torch.autograd.functional.jacobian(lambda v: w.forward(v[None])[0][0], z[7])
    assert math.isclose(float(torch.linalg.slogdet(jacobian)[1]), float(log_det[7]),
                        abs_tol=1e-9)
    assert torch.allclose(inverse_log_det, -log_det)


def test_whitened_data_are_uncorrelated_with_unit_variance():
    z = correlated(5000, seed=3)
    assert abs(float(torch.corrcoef(z[:, 1:3].T)[0, 1])) > 0.7
    y = Whitening.from_data(z, index=[1, 2, 3], periodic=[False, False, True],
                            centres=[None, None, math.pi]).forward(z)[0][:, 1:]
    covariance = torch.cov(y.T)
    # Ledoit-Wolf keeps a little of the identity; with 5000 frames it is below 1 %
    assert torch.allclose(covariance, torch.eye(3, dtype=y.dtype), atol=0.02)
    assert abs(float(y[:, 2].mean())) < 0.05  # the arc was unwrapped around π, not split


def test_shrinkage_goes_to_the_identity_for_independent_data_and_none_for_few_frames():
    g = torch.Generator().manual_seed(2)
    u = torch.randn(200, 5, generator=g, dtype=torch.float64)
    u = (u - u.mean(0)) / u.std(0)
    _, shrinkage_independent = ledoit_wolf_correlation(u)
    dependent = torch.cat([u[:, :1], u[:, :1] + 0.05 * u[:, 1:2], u[:, 2:]], 1)
    dependent = (dependent - dependent.mean(0)) / dependent.std(0)
    _, shrinkage_dependent = ledoit_wolf_correlation(dependent)
    assert shrinkage_independent > 0.5 and shrinkage_dependent < 0.2
    assert Whitening.from_data(u, index=range(5)) is not None
    assert Whitening.from_data(u[: 5 * MIN_FRAMES_PER_COORDINATE - 1], index=range(5)) is None


@pytest.fixture(scope="module")
def whitened(vacuum):
    """A randomized float64 model of vacuum alanine dipeptide built on 300 MD frames (enough
    for whitening) and the frames."""
    from test_flow_conditional import randomize

    frames = short_md_frames(vacuum, n_frames=300, seed=11, steps_between=20)
    model = TemperatureFlow.for_system(vacuum, frames, (300.0, 600.0), hidden=16, n_blocks=1,
                                       seed=0, dtype=torch.float64)
    return randomize(model, scale=0.1, seed=1), frames


def test_model_with_whitening_is_a_consistent_density(whitened, vacuum, tmp_path):
    model, frames = whitened
    whitening = model.flow_coordinates.whitening
    circular = [d.is_circular for d in model.flow.domains]
    assert whitening is not None and len(whitening.index) == circular.count(False)
    assert {model.flow.domains[k].kind for k in whitening.index.tolist()} == {"real"}
    x, log_p = model.sample(200, torch.linspace(300.0, 600.0, 200, dtype=torch.float64))
    assert torch.allclose(model.log_prob(x, torch.linspace(300.0, 600.0, 200)), log_p,
                          atol=1e-8)
    assert torch.isfinite(model.log_prob(torch.as_tensor(frames), 300.0)).all()
    model.save(tmp_path / "model.pt")
    loaded = TemperatureFlow.load(tmp_path / "model.pt", vacuum)
    assert loaded.flow_coordinates.whitening is not None
    assert torch.allclose(loaded.log_prob(x, 450.0), model.log_prob(x, 450.0), atol=1e-10)


def test_whitening_off_gives_per_coordinate_domains(whitened, vacuum):
    _, frames = whitened
    plain = TemperatureFlow.for_system(vacuum, frames, (300.0, 600.0), hidden=8, n_blocks=1,
                                       whiten=False)
    assert plain.flow_coordinates.whitening is None
    assert "real" not in {d.kind for d in plain.flow.domains}


def test_refinement_moves_in_whitened_coordinates(whitened, vacuum):
    model, _ = whitened
    with ot.OpenMMEnergy(vacuum) as energy:
        wt = ot.sample(model, energy, temperature=400.0, n=64, seed=3, quiet=True,
                       refine=True)
    assert wt.n_failed < 64 and np.isfinite(wt.ess) and 0 < wt.ess
    # refined samples keep the chirality and bond lengths of the molecule
    z = model.coordinates.forward(torch.as_tensor(wt.samples, dtype=torch.float64))[0]
    assert torch.all(z[:, model.coordinates.bond_mask] > 0.05)


def test_refinement_of_a_default_float32_model(whitened, vacuum):
    """The SMC moves run in float64 on a model of the default dtype (float32): the whitening
    must follow its input's dtype (it raised a dtype error on every whitened model)."""
    from test_flow_conditional import randomize

    _, frames = whitened
    model = randomize(TemperatureFlow.for_system(vacuum, frames, (300.0, 600.0), hidden=16,
                                                 n_blocks=1, seed=0), scale=0.1, seed=1)
    assert model.flow_coordinates.whitening.cholesky.dtype == torch.float32
    with ot.OpenMMEnergy(vacuum) as energy:
        wt = ot.sample(model, energy, temperature=400.0, n=64, seed=3, quiet=True,
                       refine=True)
    assert wt.n_failed < 64 and np.isfinite(wt.ess) and 0 < wt.ess
