"""TemperatureFlow on alanine dipeptide: protocol, chirality, derivatives, persistence."""

from __future__ import annotations

import os

import mdtraj
import numpy as np
import pytest
import torch
from test_flow_conditional import randomize

from openmm_trade.errors import CheckpointError, InputError
from openmm_trade.flow import FlowArchitecture, TemperatureFlow

torch.set_num_threads(1)
ARCH = dict(hidden=32, depth=2, n_blocks=2, n_bins=6, seed=0)


def build(msys, frames, dtype=torch.float32, scale=0.1, **kwargs):
    model = TemperatureFlow.for_system(msys, frames, temperature_range=(300.0, 600.0),
                                       dtype=dtype, **{**ARCH, **kwargs})
    return randomize(model, scale=scale, seed=1)


@pytest.fixture(scope="module")
def model(vacuum, vacuum_frames):
    return build(vacuum, vacuum_frames)


@pytest.fixture(scope="module")
def model64(vacuum, vacuum_frames):
    return build(vacuum, vacuum_frames, dtype=torch.float64)


def _ca_impropers(msys, xyz: np.ndarray) -> np.ndarray:
    """mdtraj dihedrals N-CA-C-CB and N-CA-C-HA of alanine: their signs fix CA's handedness."""
    top = msys.mdtraj_topology
    pick = {a.name: a.index for a in top.residue(1).atoms}
    quads = [[pick["N"], pick["CA"], pick["C"], pick["CB"]],
             [pick["N"], pick["CA"], pick["C"], pick["HA"]]]
    return mdtraj.compute_dihedrals(mdtraj.Trajectory(xyz, top), quads)


def test_protocol_attributes(model, vacuum):
    assert model.event_shape == (22, 3) and model.system is vacuum
    assert model.temperature_range == (300.0, 600.0) and model.reference_temperature == 300.0
    assert model.dtype == torch.float32 and model.device == torch.device("cpu")
    kinds = [model.flow.domains[k].kind for k in model.coordinates.chirality_torsions.tolist()]
    assert kinds == ["interval"] * len(kinds) and len(kinds) == 2


def test_reference_temperature_defaults(vacuum, vacuum_frames):
    m = TemperatureFlow.for_system(vacuum, vacuum_frames, (350.0, 600.0), hidden=8, n_blocks=1,
                                   boundary_temperature=400.0)
    assert m.reference_temperature == 400.0
    m = TemperatureFlow.for_system(vacuum, vacuum_frames, (350.0, 600.0), hidden=8, n_blocks=1,
                                   reference_temperature=500.0)
    assert m.reference_temperature == 500.0


def test_log_prob_of_samples_equals_sampled_log_p(model, model64):
    t = torch.linspace(300.0, 600.0, 500)
    x, log_p = model.sample(500, t)
    assert x.shape == (500, 22, 3) and torch.isfinite(log_p).all()
    assert torch.allclose(model.log_prob(x, t), log_p, atol=2e-3, rtol=1e-5)
    x64, log_p64 = model64.sample(50, 450.0)
    assert torch.allclose(model64.log_prob(x64, 450.0), log_p64, atol=1e-8)
    # inverse ∘ forward on the internal coordinates of a sample
    z, _ = model64.coordinates.forward(x64)
    z_flow, _ = model64.flow.forward(z, 450.0)
    z_back, _ = model64.flow.inverse(z_flow, 450.0)
    assert torch.allclose(torch.remainder(z_back - z + np.pi, 2 * np.pi) - np.pi,
                          torch.zeros_like(z), atol=1e-8)


def test_temperature_derivative_matches_finite_difference(model64):
    x, _ = model64.sample(10, 420.0)
    x = x.detach()
    t = torch.full((10,), 420.0, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(model64.log_prob(x, t).sum(), t, create_graph=True)
    h = 1e-3
    with torch.no_grad():
        fd = (model64.log_prob(x, 420.0 + h) - model64.log_prob(x, 420.0 - h)) / (2 * h)
    assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-8) and grad.abs().max() > 1e-4
    second = torch.autograd.grad(grad.pow(2).sum(), list(model64.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().max() > 0 for g in second)


def test_no_sample_flips_the_ca_chirality(model, vacuum, vacuum_frames):
    reference = np.sign(_ca_impropers(vacuum, vacuum.positions[None].astype(np.float32)))[0]
    assert np.all(np.sign(_ca_impropers(vacuum, vacuum_frames)) == reference)
    with torch.no_grad():
        samples = torch.cat([model.sample(5000, t)[0] for t in (300.0, 600.0)])
    signs = np.sign(_ca_impropers(vacuum, samples.numpy()))
    assert samples.shape[0] == 10_000 and np.all(signs == reference)


def _omegas(msys, xyz: np.ndarray) -> np.ndarray:
    """mdtraj's ω of both peptide bonds (ACE-ALA, ALA-NME) in degrees."""
    atoms = {(a.residue.name, a.name): a.index for a in msys.mdtraj_topology.atoms}
    quads = [[atoms["ACE", "CH3"], atoms["ACE", "C"], atoms["ALA", "N"], atoms["ALA", "CA"]],
             [atoms["ALA", "CA"], atoms["ALA", "C"], atoms["NME", "N"], atoms["NME", "C"]]]
    return np.degrees(mdtraj.compute_dihedrals(mdtraj.Trajectory(xyz, msys.mdtraj_topology),
                                               quads))


def test_peptide_bonds_stay_trans_and_backbone_torsions_stay_free(model, vacuum,
                                                                  vacuum_frames):
    assert np.all(np.abs(_omegas(vacuum, vacuum_frames)) > 150.0)  # trans in the MD
    with torch.no_grad():
        samples = torch.cat([model.sample(5000, t)[0] for t in (300.0, 600.0)])
    assert np.all(np.abs(_omegas(vacuum, samples.numpy())) > 90.0)  # never cis
    kinds = {name: model.flow.domains[model.coordinates.torsion_index(name)].kind
             for name in ("phi", "psi")}
    assert kinds == {"phi": "circular", "psi": "circular"}
    free = TemperatureFlow.for_system(vacuum, vacuum_frames, (300.0, 600.0), hidden=8,
                                      n_blocks=1, restrict_torsions=False)
    assert "arc" not in {d.kind for d in free.flow.domains}
    assert "arc" in {d.kind for d in model.flow.domains}


def test_save_load_round_trip(model, vacuum, implicit, tmp_path):
    path = tmp_path / "sub" / "model.pt"
    model.metadata["overlap_sigma"] = 1.25  # what training records
    model.save(path)
    assert sorted(os.listdir(path.parent)) == ["model.pt"]  # no temp file left behind
    loaded = TemperatureFlow.load(path, vacuum)
    x, _ = model.sample(64, 450.0, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x, 450.0), model.log_prob(x, 450.0))
        a = model.sample(16, 350.0, generator=torch.Generator().manual_seed(9))
        b = loaded.sample(16, 350.0, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert loaded.flow.config == model.flow.config
    assert loaded.metadata == {"overlap_sigma": 1.25}
    with pytest.raises(CheckpointError, match="another system"):
        TemperatureFlow.load(path, implicit)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(CheckpointError):
        TemperatureFlow.load(tmp_path / "junk.pt", vacuum)
    with pytest.raises(CheckpointError):
        TemperatureFlow.load(tmp_path / "missing.pt", vacuum)


def test_same_seed_same_samples(vacuum, vacuum_frames):
    a, b = (build(vacuum, vacuum_frames) for _ in range(2))
    assert torch.equal(a.sample(32, 400.0)[0], b.sample(32, 400.0)[0])


def test_bad_inputs(model, vacuum, vacuum_frames):
    with pytest.raises(InputError):
        model.log_prob(torch.zeros(2, 21, 3), 300.0)
    with pytest.raises(InputError):
        model.sample(2, -300.0)
    with pytest.raises(InputError, match="boundary"):
        TemperatureFlow.for_system(vacuum, vacuum_frames[:, :5], (300.0, 600.0))
    mirrored = vacuum_frames.copy()
    mirrored[3, :, 0] *= -1  # the mirror image has the opposite handedness
    with pytest.raises(InputError, match="handedness"):
        TemperatureFlow.for_system(vacuum, mirrored, (300.0, 600.0))


def test_architecture_object_and_keywords_build_the_same_model(vacuum, vacuum_frames):
    """for_system's defaults are FlowArchitecture's; keywords override its fields."""
    plain = TemperatureFlow.for_system(vacuum, vacuum_frames, (300.0, 600.0))
    assert plain.flow.architecture == FlowArchitecture()
    arch = FlowArchitecture(hidden=16, n_blocks=1, prior_floor=0.05)
    by_object = TemperatureFlow.for_system(vacuum, vacuum_frames, (300.0, 600.0),
                                           architecture=arch)
    by_keywords = TemperatureFlow.for_system(vacuum, vacuum_frames, (300.0, 600.0),
                                             hidden=16, n_blocks=1, prior_floor=0.05)
    assert by_object.flow.config == by_keywords.flow.config
    assert by_keywords.flow.architecture == arch and by_keywords.flow.prior.floor == 0.05
    assert len(by_keywords.flow.couplings) < len(plain.flow.couplings)
    with pytest.raises(InputError, match="hiden"):
        TemperatureFlow.for_system(vacuum, vacuum_frames, (300.0, 600.0), hiden=16)


def test_model_saved_without_prior_floor_loads_without_one(model, vacuum, tmp_path):
    """Files written before the prior floor was stored were built with floor 0."""
    path = tmp_path / "old.pt"
    model.save(path)
    payload = torch.load(path, weights_only=True)
    assert payload["config"]["prior_floor"] == model.flow.prior.floor == 0.01
    del payload["config"]["prior_floor"]
    torch.save(payload, path)
    loaded = TemperatureFlow.load(path, vacuum)
    assert loaded.flow.prior.floor == 0.0
    assert loaded.flow.architecture == model.flow.architecture.replace(prior_floor=0.0)
