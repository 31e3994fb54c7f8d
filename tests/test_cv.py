"""Collective variables: φ/ψ against mdtraj's own dihedrals, user CVs, Ramachandran states."""

from __future__ import annotations

import math

import mdtraj
import numpy as np
import pytest

from openmm_trade import cv as cvs
from openmm_trade.errors import InputError
from openmm_trade.free_energy import state_mask
from openmm_trade.sampling import WeightedTrajectory


@pytest.fixture(scope="module")
def traj(vacuum, vacuum_frames):
    return mdtraj.Trajectory(vacuum_frames, vacuum.mdtraj_topology)


def test_ramachandran_matches_mdtraj(traj):
    values = cvs.ramachandran(traj)
    assert values.shape == (20, 2)
    np.testing.assert_allclose(values[:, 0], mdtraj.compute_phi(traj)[1][:, 0])
    np.testing.assert_allclose(values[:, 1], mdtraj.compute_psi(traj)[1][:, 0])
    # the standard alanine-dipeptide φ = C(ACE)-N-CA-C and ψ = N-CA-C-N(NME) atoms
    (residue, phi, psi), = cvs.phi_psi_pairs(traj.topology)
    assert [traj.topology.atom(i).name for i in phi] == ["C", "N", "CA", "C"]
    assert [traj.topology.atom(i).name for i in psi] == ["N", "CA", "C", "N"]
    np.testing.assert_allclose(cvs.dihedral(phi)(traj)[:, 0], values[:, 0], atol=1e-6)
    assert cvs.has_ramachandran(traj.topology)
    assert cvs.natural_range(cvs.ramachandran) == ((-math.pi, math.pi),) * 2


def _backbone(n_residues: int) -> mdtraj.Topology:
    """ACE-(ALA)n-NME backbone atoms only (what φ/ψ detection needs)."""
    top = mdtraj.Topology()
    chain = top.add_chain()
    carbon, nitrogen = mdtraj.element.carbon, mdtraj.element.nitrogen
    top.add_atom("C", carbon, top.add_residue("ACE", chain))
    for _ in range(n_residues):
        residue = top.add_residue("ALA", chain)
        for name, element in (("N", nitrogen), ("CA", carbon), ("C", carbon)):
            top.add_atom(name, element, residue)
    top.add_atom("N", nitrogen, top.add_residue("NME", chain))
    return top


def test_several_pairs_need_an_index():
    top = _backbone(2)
    rng = np.random.default_rng(0)
    traj = mdtraj.Trajectory(rng.normal(size=(3, top.n_atoms, 3)), top)
    assert len(cvs.phi_psi_pairs(top)) == 2 and not cvs.has_ramachandran(top)
    with pytest.raises(InputError, match="2 φ/ψ pairs.*index"):
        cvs.ramachandran(traj)
    second = cvs.ramachandran.with_options(index=1)(traj)
    # residue 2: φ = C(1) N(2) CA(2) C(2), ψ = N(2) CA(2) C(2) N(NME)
    expected = mdtraj.compute_dihedrals(traj, [[3, 4, 5, 6], [4, 5, 6, 7]])
    np.testing.assert_allclose(second, expected)
    with pytest.raises(InputError, match="index must be"):
        cvs.ramachandran(traj, index=2)


def test_non_peptide_and_non_trajectory_errors():
    top = mdtraj.Topology()
    top.add_atom("O", mdtraj.element.oxygen, top.add_residue("HOH", top.add_chain()))
    with pytest.raises(InputError, match="no residue with both"):
        cvs.ramachandran(mdtraj.Trajectory(np.zeros((1, 1, 3)), top))
    with pytest.raises(InputError, match="mdtraj.Trajectory"):
        cvs.ramachandran(np.zeros((2, 22, 3)))


def test_evaluate_callables_and_arrays(traj, vacuum):
    wt = WeightedTrajectory(traj.xyz, np.zeros(20), np.zeros(20), 300.0,
                            topology=vacuum.mdtraj_topology)
    rg = cvs.evaluate(mdtraj.compute_rg, wt)
    assert rg.shape == (20, 1)
    np.testing.assert_allclose(rg[:, 0], mdtraj.compute_rg(traj))
    assert cvs.evaluate(np.arange(20.0), traj).shape == (20, 1)
    with pytest.raises(InputError, match="shape"):
        cvs.evaluate(np.arange(5.0), traj)
    toy = WeightedTrajectory(np.ones((4, 3)), np.zeros(4), np.zeros(4), 300.0)
    assert cvs.evaluate(lambda x: x.sum(1), toy)[:, 0].tolist() == [3.0] * 4


def test_ramachandran_states_partition_the_torus():
    grid = np.linspace(-math.pi, math.pi, 73)  # 5° steps, both ends included
    phi, psi = np.meshgrid(grid, grid, indexing="ij")
    values = np.column_stack([phi.ravel(), psi.ravel()])
    masks = np.stack([state_mask(n, s, values) for n, s in cvs.RAMACHANDRAN_STATES.items()])
    np.testing.assert_array_equal(masks.sum(0), 1)  # every point in exactly one state
    deg = np.degrees
    c7eq, alpha_r, alpha_l = masks
    assert np.all(deg(values[alpha_l, 0]) >= 0)
    assert np.all((deg(values[alpha_r, 1]) >= -150) & (deg(values[alpha_r, 1]) < 50))
    assert np.all(deg(values[c7eq, 0]) < 0)


def test_angles_wrapped_into_range(vacuum):
    """The PDB structure is fully extended (φ = ψ = 180°): float32 rounding must not push
    the angles outside [-π, π] and out of every histogram."""
    from openmm_trade.free_energy import surface

    md = mdtraj.Trajectory(vacuum.positions[None].repeat(3, 0), vacuum.mdtraj_topology)
    values = cvs.ramachandran(md)
    assert values.dtype == np.float64 and np.all(np.abs(values) <= math.pi)
    assert np.allclose(np.abs(values), math.pi, atol=1e-6)
    fes = surface(md, cv=cvs.ramachandran, bins=18, temperature=300.0, n_bootstrap=3)
    assert np.isfinite(fes.free_energy).sum() == 1 and fes.names == ("φ", "ψ")
