"""InternalCoordinates against independent oracles: mdtraj geometry, autograd Jacobians,
Kabsch-aligned round trips on OpenMM MD frames."""

from __future__ import annotations

import math

import mdtraj
import numpy as np
import pytest
import torch
from conftest import short_md_frames
from openmmtools import testsystems

import openmm_trade as ot
from openmm_trade.coordinates import ANGLE_EPS, InternalCoordinates
from openmm_trade.errors import InputError

DATA = testsystems.get_data_filename("data")


def _prmtop(stem: str, name: str, constraints="HBonds") -> ot.MolecularSystem:
    crd = f"{DATA}/{stem}.crd" if stem.startswith("T4") else f"{DATA}/{stem}.inpcrd"
    return ot.MolecularSystem.from_prmtop(f"{DATA}/{stem}.prmtop", crd,
                                          constraints=constraints, name=name)


def _load(name: str) -> ot.MolecularSystem:
    if name == "toluene":  # ring + methyl rotor, HBond constraints
        return ot.MolecularSystem.from_testsystem(testsystems.TolueneVacuum())
    if name == "p-xylene":  # ring + two methyl rotors
        return _prmtop("T4-lysozyme-L99A-implicit/ligand", name)
    if name == "viologen":  # two rings, alkyl chains, unconstrained
        return _prmtop("cb7-viologen/leap/ligand", name, constraints=None)
    return ot.systems.load(name)


SYSTEMS = ["alanine-dipeptide-vacuum", "alanine-dipeptide-implicit", "toluene", "p-xylene",
           "viologen", "ace-pro-nme-implicit", "ace-phe-nme-implicit", "ace-leu-nme-implicit",
           "ace-ala3-nme-implicit"]


@pytest.fixture(scope="module")
def cases(vacuum, vacuum_frames):
    """name -> (msys, ic, (B, N, 3) float64 MD frames)."""
    out = {"alanine-dipeptide-vacuum": (vacuum, vacuum_frames)}
    for seed, name in enumerate(SYSTEMS[1:]):
        msys = _load(name)
        out[name] = (msys, short_md_frames(msys, n_frames=6, seed=seed + 11))
    return {k: (m, InternalCoordinates.from_system(m), f) for k, (m, f) in out.items()}


def _kabsch_rmsd(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """RMSD of each frame of y to x after optimal rigid superposition."""
    out = []
    for a, b in zip(x, y, strict=True):
        a, b = a - a.mean(0), b - b.mean(0)
        u, _, vt = np.linalg.svd(b.T @ a)
        d = np.sign(np.linalg.det(u @ vt))
        rot = u @ np.diag([1, 1, d]) @ vt
        out.append(np.sqrt(((b @ rot - a) ** 2).sum(-1).mean()))
    return np.array(out)


def _wrap(angle):
    return (angle + np.pi) % (2 * np.pi) - np.pi


# ---------------------------------------------------------------------- layout
def test_layout_masks_and_names(vacuum):
    ic = InternalCoordinates.from_system(vacuum)
    n, c = vacuum.n_atoms, len(vacuum.constraint_lengths)
    assert ic.n_dof == 3 * n - 6 - c == 48
    assert (ic.n_bonds, ic.n_angles, ic.n_torsions) == (n - 1 - c, n - 2, n - 3)
    masks = torch.stack([ic.bond_mask, ic.angle_mask, ic.torsion_mask])
    assert masks.shape == (3, ic.n_dof) and (masks.sum(0) == 1).all()
    assert ic.bond_mask[ic.bond_slice].all() and ic.torsion_mask[ic.torsion_slice].all()
    assert len(ic.dof_names) == ic.n_dof
    kinds = [name.split(":")[0] for name in ic.dof_names]
    assert kinds == ["bond"] * ic.n_bonds + ["angle"] * ic.n_angles + ["torsion"] * ic.n_torsions
    assert ic.dof_names[ic.torsion_index("phi")] == "torsion:ALA2.C-ALA2.CA-ALA2.N-ACE1.C"
    assert "bond:ALA2.CB-ALA2.CA" in ic.dof_names
    bonded = [label.split(".")[1] for name in ic.dof_names if name.startswith("bond:")
              for label in name[5:].split("-")]
    assert not any(atom.startswith("H") for atom in bonded)  # HBonds are constrained
    assert ic.torsion_names == ["phi", "phi:ALA2", "psi", "psi:ALA2"]
    free = InternalCoordinates.from_system(ot.systems.load("alanine-dipeptide-vacuum", None))
    assert free.n_dof == 3 * n - 6 and free.n_constraints == 0


# ---------------------------------------------------------------------- oracles
@pytest.mark.parametrize("name", SYSTEMS)
def test_geometry_matches_mdtraj(cases, name):
    _assert_geometry_matches_mdtraj(*cases[name])


@pytest.mark.parametrize("name", ot.systems.available())
def test_stored_structure_round_trips(name):
    """Every built-in PDB: mdtraj geometry and an exact round trip (no constraints, which
    the stored hydrogens need not satisfy exactly)."""
    msys = ot.systems.load(name, constraints=None)
    ic = InternalCoordinates.from_system(msys)
    x = torch.as_tensor(msys.positions[None])
    _assert_geometry_matches_mdtraj(msys, ic, x.numpy())
    z, logdet = ic.forward(x)
    x_back, logdet_back = ic.inverse(z)
    assert _kabsch_rmsd(x.numpy(), x_back.numpy()).max() < 1e-5
    assert abs(float(logdet[0] + logdet_back[0])) < 1e-9


def _assert_geometry_matches_mdtraj(msys, ic, frames):
    z, _ = ic.forward(torch.as_tensor(frames))
    z = z.numpy()
    traj = mdtraj.Trajectory(frames, msys.mdtraj_topology)
    rows = ic.zmatrix.rows
    bond_pairs = rows[1:, :2]
    constrained = {frozenset(p) for p in msys.constrained_pairs.tolist()}
    keep = np.array([frozenset(p) not in constrained for p in bond_pairs.tolist()])
    np.testing.assert_allclose(z[:, ic.bond_slice],
                               mdtraj.compute_distances(traj, bond_pairs[keep]), atol=1e-5)
    np.testing.assert_allclose(z[:, ic.angle_slice],
                               mdtraj.compute_angles(traj, rows[2:, :3]), atol=1e-5)
    diff = _wrap(z[:, ic.torsion_slice] - mdtraj.compute_dihedrals(traj, rows[3:]))
    assert np.abs(diff).max() < 1e-5
    t = z[:, ic.torsion_slice]
    assert (t >= -np.pi).all() and (t < np.pi).all()
    a = z[:, ic.angle_slice]
    assert (a > 0).all() and (a < np.pi).all() and (z[:, ic.bond_slice] > 0).all()


@pytest.mark.parametrize("msys_name", ["alanine-dipeptide-vacuum", "alanine-dipeptide-implicit"])
def test_phi_psi_by_name_match_mdtraj(cases, msys_name):
    msys, ic, frames = cases[msys_name]
    z, _ = ic.forward(torch.as_tensor(frames))
    traj = mdtraj.Trajectory(frames, msys.mdtraj_topology)
    for name, oracle in (("phi", mdtraj.compute_phi), ("psi", mdtraj.compute_psi)):
        atoms, values = oracle(traj)
        assert ic.torsion_index(name) == ic.index_of_torsion(atoms[0].tolist())
        assert ic.torsion_index(name) == ic.torsion_index(f"{name}:ALA2")
        diff = _wrap(z[:, ic.torsion_index(name)].numpy() - values[:, 0])
        assert np.abs(diff).max() < 1e-5


def test_torsion_lookup_errors(vacuum):
    ic = InternalCoordinates.from_system(vacuum)
    with pytest.raises(InputError, match="unknown torsion name 'omega'"):
        ic.torsion_index("omega")
    with pytest.raises(InputError, match="not the four atoms of a Z-matrix row"):
        ic.index_of_torsion((0, 1, 2, 3))
    # an explicit Z-matrix without the phi row: phi is known but not a torsion of it
    rows = ic.zmatrix.rows.copy()
    k = int(np.flatnonzero(rows[:, 0] == 14)[0])  # ALA C, (14, 8, 6, 4)
    rows[k, 3] = 1  # torsion atom ACE CH3 instead of ACE C: valid, but not phi
    explicit = InternalCoordinates.from_system(vacuum, zmatrix=rows)
    with pytest.raises(InputError, match="'phi' .* is not a torsion of this Z-matrix"):
        explicit.torsion_index("phi")
    assert explicit.torsion_index("psi") == ic.torsion_index("psi")


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", SYSTEMS)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_round_trip_up_to_rigid_motion(cases, name, dtype, tol):
    msys, ic, frames = cases[name]
    x = torch.as_tensor(frames, dtype=dtype)
    z, logdet = ic.forward(x)
    x_back, logdet_back = ic.inverse(z)
    assert z.dtype == logdet.dtype == x_back.dtype == dtype
    assert _kabsch_rmsd(frames, x_back.double().numpy()).max() < tol
    assert torch.allclose(logdet + logdet_back, torch.zeros_like(logdet), atol=1e-9 if
                          dtype == torch.float64 else 1e-3)
    # the canonical pose: first atom at 0, second on +x, third in the xy-plane, y > 0
    first = ic.zmatrix.rows[:3, 0]
    pose = x_back[:, first].double()
    assert pose[:, 0].abs().max() == 0
    assert pose[:, 1, 1:].abs().max() == 0 and (pose[:, 1, 0] > 0).all()
    assert pose[:, 2, 2].abs().max() == 0 and (pose[:, 2, 1] > 0).all()
    # inverse holds constrained bonds exactly at their lengths
    if len(msys.constraint_lengths):
        i, j = msys.constrained_pairs.T
        lengths = (x_back[:, i] - x_back[:, j]).double().norm(dim=-1)
        assert torch.allclose(lengths, torch.as_tensor(msys.constraint_lengths)[None],
                              atol=1e-6 if dtype == torch.float64 else 1e-5)


def test_round_trip_random_z_is_exact(vacuum):
    ic = InternalCoordinates.from_system(vacuum)
    gen = torch.Generator().manual_seed(3)
    z = ic.reference_z.repeat(64, 1)
    noise = torch.where(ic.bond_mask, 0.005, 0.05).to(z.dtype)
    z = z + noise * torch.randn(z.shape, generator=gen, dtype=z.dtype)
    z[:, ic.torsion_mask] = (torch.rand(64, ic.n_torsions, generator=gen, dtype=z.dtype)
                             * 2 - 1) * math.pi
    x, logdet = ic.inverse(z)
    z_back, logdet_back = ic.forward(x)
    assert torch.allclose(z_back, z, atol=1e-9)
    assert torch.allclose(logdet + logdet_back, torch.zeros(64, dtype=z.dtype), atol=1e-9)


# ---------------------------------------------------------------------- log-determinant
def _full_map(ic: InternalCoordinates, msys, x_flat: torch.Tensor) -> torch.Tensor:
    """x (3N,) -> (x_0, θ_1, φ_1, γ, all bonds, angles, torsions): a square map."""
    x = x_flat.reshape(1, -1, 3)
    rows = ic.zmatrix.rows
    a0, a1, (a2, p2, g2) = rows[0, 0], rows[1, 0], rows[2, :3]
    d = x[0, a1] - x[0, a0]
    theta = torch.acos(d[2] / d.norm())
    phi = torch.atan2(d[1], d[0])
    # azimuth of row 2's atom about its p2->g2 axis, from a lab-fixed half plane
    lab = x[0, g2] + torch.tensor([0.31, -0.57, 0.76], dtype=x.dtype)
    gamma = ot.coordinates.torsions(x[0, a2], x[0, p2], x[0, g2], lab)
    bonds = (x[0, rows[1:, 0]] - x[0, rows[1:, 1]]).norm(dim=-1)
    z, _ = ic.forward(x)
    return torch.cat([x[0, a0], torch.stack([theta, phi, gamma]), bonds,
                      z[0, ic.angle_slice], z[0, ic.torsion_slice]])


@pytest.mark.parametrize("name", ["alanine-dipeptide-vacuum", "toluene"])
@pytest.mark.parametrize("constrained", [False, True])
def test_logdet_equals_autograd_jacobian_of_full_map(cases, name, constrained):
    msys, _, frames = cases[name]
    if not constrained:
        msys = ot.MolecularSystem.from_openmm(
            _unconstrained(msys.system), msys.topology, msys.positions)
    ic = InternalCoordinates.from_system(msys)
    x = torch.as_tensor(frames[:3])
    z, logdet = ic.forward(x)
    for b in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda v: _full_map(ic, msys, v),
                                                 x[b].reshape(-1))
        assert jac.shape == (3 * msys.n_atoms, 3 * msys.n_atoms)
        sign, logabsdet = torch.linalg.slogdet(jac)
        d = x[b, ic.zmatrix.rows[1, 0]] - x[b, ic.zmatrix.rows[0, 0]]
        # correction 1: drop the orientation measure, + log sin θ_1
        expected = logabsdet + torch.log(torch.sqrt(d[0] ** 2 + d[1] ** 2) / d.norm())
        # correction 2: constrained bonds enter at their constraint length, not measured
        if len(msys.constraint_lengths):
            i, j = msys.constrained_pairs.T
            measured = (x[b, i] - x[b, j]).norm(dim=-1)
            expected = expected + 2 * torch.log(
                measured / torch.as_tensor(msys.constraint_lengths)).sum()
        assert sign != 0
        assert abs(float(logdet[b] - expected)) < 1e-6


def _unconstrained(system):
    import openmm

    copy = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    for k in reversed(range(copy.getNumConstraints())):
        copy.removeConstraint(k)
    return copy


def test_inverse_is_differentiable_with_finite_gradients(vacuum):
    ic = InternalCoordinates.from_system(ot.systems.load("alanine-dipeptide-vacuum", None))
    z0 = ic.reference_z[None] + 0.01
    z0[:, ic.torsion_mask] = torch.linspace(-3, 3, ic.n_torsions, dtype=z0.dtype)
    _, logdet = ic.inverse(z0)
    assert abs(float(logdet[0] + ic.forward(ic.inverse(z0)[0])[1][0])) < 1e-10
    z0.requires_grad_(True)
    x, logdet = ic.inverse(z0)
    (x.sum() + logdet.sum()).backward()
    assert torch.isfinite(z0.grad).all()


# ---------------------------------------------------------------------- constraints
def test_constraint_that_is_not_a_zmatrix_bond_raises():
    toluene = testsystems.TolueneVacuum()
    msys = ot.MolecularSystem.from_testsystem(toluene)
    rows = ot.ZMatrix.from_system(msys).rows
    tree = {frozenset(r[:2]) for r in rows[1:].tolist()}
    ring_closure = next((a.index, b.index) for a, b in toluene.topology.bonds()
                        if frozenset((a.index, b.index)) not in tree)
    system = _unconstrained(toluene.system)
    system.addConstraint(*ring_closure, 0.14)
    bad = ot.MolecularSystem.from_openmm(system, toluene.topology, toluene.positions)
    with pytest.raises(InputError, match=f"constraint between atoms {min(ring_closure)} and "
                                         f"{max(ring_closure)} is not a Z-matrix bond"):
        InternalCoordinates.from_system(bad)


# ---------------------------------------------------------------------- chirality
def test_chirality_torsions(cases):
    msys, ic, frames = cases["alanine-dipeptide-vacuum"]
    names = [ic.dof_names[i] for i in ic.chirality_torsions.tolist()]
    assert names == ["torsion:ALA2.CB-ALA2.CA-ALA2.N-ALA2.C",
                     "torsion:ALA2.HA-ALA2.CA-ALA2.N-ALA2.C"]
    x = torch.as_tensor(frames)
    signs = ic.chirality_signs(x)
    assert (signs == ic.reference_chirality_signs).all()  # MD keeps the handedness
    assert (ic.reference_chirality_signs == torch.tensor([-1.0, 1.0],
                                                         dtype=torch.float64)).all()
    mirrored = x * torch.tensor([-1.0, 1.0, 1.0], dtype=x.dtype)  # D-alanine
    assert (ic.chirality_signs(mirrored) == -signs).all()
    z = ic.forward(x)[0][:, ic.chirality_torsions]
    assert (z.abs() > math.radians(60)).all() and (z.abs() < math.radians(180)).all()
    for name in ("toluene", "p-xylene"):  # no stereocentre
        assert cases[name][1].chirality_torsions.numel() == 0


# ---------------------------------------------------------------------- numerics
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_collinear_and_coincident_atoms_are_finite(vacuum, dtype):
    ic = InternalCoordinates.from_system(vacuum)
    x = torch.as_tensor(vacuum.positions, dtype=dtype)[None].repeat(3, 1, 1)
    rows = ic.zmatrix.rows
    a, p, g, _ = rows[5]
    x[0, a] = x[0, p] + 0.15 * (x[0, p] - x[0, g]) / (x[0, p] - x[0, g]).norm()  # angle = π
    x[1, rows[4, 0]] = x[1, rows[4, 1]]  # coincident atoms
    x[2] = 0.0  # everything at one point
    x.requires_grad_(True)
    z, logdet = ic.forward(x)
    (z.sum() + logdet.sum()).backward()
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
    assert torch.isfinite(x.grad).all()
    angles = z[:, ic.angle_slice]
    assert angles.min() >= ANGLE_EPS * 0.99 and angles.max() <= math.pi - ANGLE_EPS * 0.99
    x_back, logdet_back = ic.inverse(z.detach())
    assert torch.isfinite(x_back).all() and torch.isfinite(logdet_back).all()
    z_edge = ic.reference_z.to(dtype)[None].clone()
    z_edge[:, ic.angle_slice] = torch.tensor([0.0, math.pi], dtype=dtype).repeat(
        ic.n_angles // 2 + 1)[: ic.n_angles]
    assert torch.isfinite(torch.cat([t.flatten() for t in ic.inverse(z_edge)])).all()


def test_device_dtype_moves_and_input_checks(vacuum):
    ic = InternalCoordinates.from_system(vacuum).to(torch.float32)
    assert ic.bond_mask.dtype == torch.bool and ic._rows.dtype == torch.long
    z, _ = ic.forward(torch.as_tensor(vacuum.positions, dtype=torch.float32)[None])
    assert z.dtype == torch.float32
    with pytest.raises(InputError, match=r"x must have shape \(B, 22, 3\)"):
        ic.forward(torch.zeros(22, 3))
    with pytest.raises(InputError, match=r"z must have shape \(B, 48\)"):
        ic.inverse(torch.zeros(2, 50))
    with pytest.raises(InputError, match="torch.Tensor"):
        ic.forward(np.zeros((1, 22, 3)))
    assert "buffers" not in str(ic.state_dict().keys()) and len(ic.state_dict()) == 0


# ---------------------------------------------------------------------- statistics
def test_statistics_from_data_and_fallback(cases):
    msys, ic, frames = cases["alanine-dipeptide-vacuum"]
    traj = mdtraj.Trajectory(frames, msys.mdtraj_topology)
    stats = ic.statistics(traj)
    z = ic.forward(torch.as_tensor(traj.xyz, dtype=torch.float64))[0]
    assert torch.allclose(stats.mean[ic.bond_mask], z[:, ic.bond_mask].mean(0))
    assert torch.allclose(stats.std[ic.angle_mask], z[:, ic.angle_mask].std(0, unbiased=False))
    tors = z[:, ic.torsion_mask].numpy()
    circular = np.angle(np.exp(1j * tors).mean(0))
    assert np.abs(_wrap(stats.mean[ic.torsion_mask].numpy() - circular)).max() < 1e-10
    # circular statistics are right across the ±π seam: shifting data by π moves the mean
    phi = ic.torsion_index("phi")
    assert abs(_wrap(float(stats.mean[phi]) - float(circular[phi - ic.torsion_offset]))) < 1e-9
    assert (stats.std[ic.torsion_mask] <= math.pi / math.sqrt(3) + 1e-12).all()
    assert torch.equal(stats.min, z.min(0).values) and torch.equal(stats.max, z.max(0).values)
    same = ic.statistics(torch.as_tensor(traj.xyz))
    assert torch.equal(same.mean, stats.mean)
    fallback = ic.statistics()
    assert torch.allclose(fallback.mean, ic.reference_z)
    assert (fallback.std > 0).all() and (fallback.min <= fallback.mean).all()
    assert (fallback.min[ic.bond_mask] > 0).all()
    assert (fallback.min[ic.angle_mask] > 0).all() and (fallback.max[ic.angle_mask] < math.pi).all()


@pytest.mark.parametrize("name, ring_atoms", [
    ("ace-phe-nme-implicit", {"CG", "CD1", "CD2", "CE1", "CE2", "CZ"}),
    ("ace-pro-nme-implicit", {"N", "CA", "CB", "CG", "CD"}),
])
def test_ring_bonds_and_ring_torsions_are_those_of_the_side_chain_ring(name, ring_atoms):
    from openmm_trade.flow import data_domains
    from openmm_trade.topology import ring_bonds

    msys = ot.systems.load(name)
    atoms = list(msys.topology.atoms())
    bonds = ring_bonds(msys.topology)
    assert len(bonds) == len(ring_atoms)  # a single ring: as many bonds as atoms
    assert all({atoms[i].name, atoms[j].name} <= ring_atoms for i, j in bonds)
    ic = InternalCoordinates.from_system(msys)
    rows = ic.zmatrix.rows
    ring = ic.ring_torsions.tolist()
    assert ring and all(
        {atoms[rows[k - ic.torsion_offset + 3, c]].name for c in (1, 2)} <= ring_atoms
        for k in ring)
    # a torsion about a ring bond is never free, however far the data spread it: every
    # torsion spread by 25° (beyond the 20° stiffness threshold); the others become free
    frames = torch.as_tensor(short_md_frames(msys, n_frames=20, seed=3)).repeat(10, 1, 1)
    z = ic.forward(frames)[0]
    spread = ic.torsion_mask.clone()
    spread[ic.chirality_torsions] = False  # their sign is the molecule's handedness
    g = torch.Generator().manual_seed(0)
    z[:, spread] += math.radians(25.0) * torch.randn(len(z), int(spread.sum()), generator=g,
                                                     dtype=z.dtype)
    domains = data_domains(ic, ic.inverse(z)[0])
    assert not any(domains[k].is_circular for k in ring)
    others = set(torch.nonzero(spread).flatten().tolist()) - set(ring)
    assert all(domains[k].is_circular for k in others)
