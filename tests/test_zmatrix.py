"""ZMatrix: construction from bond graphs (peptide, rings, methyl rotors) and validation."""

from __future__ import annotations

import numpy as np
import pytest
from openmm import app
from openmmtools import testsystems

import openmm_trade as ot
from openmm_trade.errors import InputError
from openmm_trade.zmatrix import ZMatrix

DATA = testsystems.get_data_filename("data")


def _prmtop_topology(stem: str) -> app.Topology:
    return app.AmberPrmtopFile(f"{DATA}/{stem}.prmtop").topology


@pytest.fixture(scope="module")
def molecules(vacuum):
    """Topologies with a peptide backbone, rings, branching and methyl rotors."""
    return {
        "alanine-dipeptide": vacuum.topology,
        "toluene": testsystems.TolueneVacuum().topology,
        "p-xylene": _prmtop_topology("T4-lysozyme-L99A-implicit/ligand"),
        "benzene": _prmtop_topology("benzene-toluene-implicit/receptor"),
        "viologen": _prmtop_topology("cb7-viologen/leap/ligand"),
    }


def _names(topology):
    return [f"{a.residue.name}:{a.name}" for a in topology.atoms()]


def test_alanine_dipeptide_backbone_torsions_are_rows(vacuum):
    zm = ZMatrix.from_system(vacuum)
    names = _names(vacuum.topology)
    rows = {tuple(names[i] for i in row) for row in zm.rows.tolist() if row[3] >= 0}
    assert ("ALA:C", "ALA:CA", "ALA:N", "ACE:C") in rows  # phi
    assert ("NME:N", "ALA:C", "ALA:CA", "ALA:N") in rows  # psi
    # CB and HA are placed by improper-like torsions about CA (chirality)
    assert ("ALA:CB", "ALA:CA", "ALA:N", "ALA:C") in rows
    assert ("ALA:HA", "ALA:CA", "ALA:N", "ALA:C") in rows
    # methyl rotor: one chain torsion, two improper offsets from the first hydrogen
    assert ("ALA:HB1", "ALA:CB", "ALA:CA", "ALA:N") in rows
    assert ("ALA:HB2", "ALA:CB", "ALA:CA", "ALA:HB1") in rows


def test_every_backbone_torsion_of_a_protein_is_a_row():
    from openmm_trade.topology import backbone_torsions

    pdb = app.PDBFile(f"{DATA}/src-implicit/1yi6-minimized.pdb")  # 275 residues
    zm = ZMatrix.from_topology(pdb.topology)
    named = {k: v for k, v in backbone_torsions(pdb.topology).items() if ":" in k}
    assert len(named) == 2 * 275
    rows = {tuple(row) for row in zm.rows.tolist()}
    assert all(q in rows or q[::-1] in rows for q in named.values())


@pytest.mark.parametrize("name", ["alanine-dipeptide", "toluene", "p-xylene", "benzene",
                                  "viologen"])
def test_automatic_rows_follow_bonds(molecules, name):
    topology = molecules[name]
    zm = ZMatrix.from_topology(topology)
    bonded = {frozenset((a.index, b.index)) for a, b in topology.bonds()}
    heavy = [a.element.symbol != "H" for a in topology.atoms()]
    assert sorted(zm.placement_order.tolist()) == list(range(topology.getNumAtoms()))
    for k, (atom, p, g, t) in enumerate(zm.rows.tolist()):
        if k >= 1:
            assert frozenset((atom, p)) in bonded
        if k >= 2:
            assert frozenset((p, g)) in bonded
        if k >= 3:
            assert heavy[t] or not heavy[atom]  # heavy atoms are placed from heavy atoms
            # chain torsion (t bonded to g) or improper-like (t bonded to p)
            assert frozenset((g, t)) in bonded or frozenset((p, t)) in bonded
    order = zm.placement_order.tolist()
    first_h = next(k for k, atom in enumerate(order) if not heavy[atom])
    assert all(not heavy[atom] for atom in order[first_h:])  # heavy atoms first
    # ring-closure bonds are not Z-matrix bonds: tree bonds = N - 1
    assert len(bonded) - (topology.getNumAtoms() - 1) == {
        "alanine-dipeptide": 0, "toluene": 1, "p-xylene": 1, "benzene": 1, "viologen": 2
    }[name]


def test_layers_depend_only_on_earlier_layers(vacuum):
    zm = ZMatrix.from_system(vacuum)
    done = set(zm.rows[:3, 0].tolist())
    for layer in zm.layers:
        rows = zm.rows[layer]
        assert set(rows[:, 1:].ravel().tolist()) <= done
        done |= set(rows[:, 0].tolist())
    assert len(done) == zm.n_atoms
    assert len(zm.layers) < zm.n_atoms - 3  # vectorised: fewer layers than atoms


def test_construction_is_deterministic(vacuum, molecules):
    for topology in molecules.values():
        assert ZMatrix.from_topology(topology) == ZMatrix.from_topology(topology)
    again = ot.systems.load("alanine-dipeptide-implicit", constraints=None)
    assert ZMatrix.from_system(vacuum) == ZMatrix.from_system(again)
    assert ZMatrix.from_system(vacuum).to_list() == ZMatrix(
        ZMatrix.from_system(vacuum).to_list()).to_list()


def test_root_override():
    zm = ZMatrix.from_bonds(4, [(0, 1), (1, 2), (2, 3)], root=3)
    assert zm.rows.tolist() == [[3, -1, -1, -1], [2, 3, -1, -1], [1, 2, 3, -1], [0, 1, 2, 3]]
    with pytest.raises(InputError, match="root"):
        ZMatrix.from_bonds(4, [(0, 1), (1, 2), (2, 3)], root=7)


def test_branching_uses_improper_torsions():
    # neopentane-like star: centre 0 with four neighbours
    zm = ZMatrix.from_bonds(5, [(0, 1), (0, 2), (0, 3), (0, 4)])
    assert zm.rows.tolist() == [
        [1, -1, -1, -1], [0, 1, -1, -1], [2, 0, 1, -1], [3, 0, 1, 2], [4, 0, 1, 2]]


def test_collinear_reference_frames_are_avoided():
    # chain 0-1-2-3-4 with 1-2-3 collinear (an alkyne): the chain torsion of atom 4 would
    # use the collinear frame (1, 2, 3); with positions another torsion atom is taken
    positions = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0], [2, 0, 0], [2, 1, 0.5]]) * 0.1
    bonds = [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert ZMatrix.from_bonds(5, bonds).row_of(4).tolist() == [4, 3, 2, 1]
    assert ZMatrix.from_bonds(5, bonds, positions=positions).row_of(4).tolist() == [4, 3, 2, 0]


def test_disconnected_molecules_raise(molecules):
    with pytest.raises(InputError, match="2 disconnected molecules"):
        ZMatrix.from_bonds(6, [(0, 1), (1, 2), (3, 4), (4, 5)])
    toluene = testsystems.TolueneVacuum()
    modeller = app.Modeller(toluene.topology, toluene.positions)
    modeller.add(toluene.topology, toluene.positions)
    with pytest.raises(InputError, match=r"disconnected molecules \(atoms per molecule: 15, 15"):
        ZMatrix.from_topology(modeller.topology)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[0, -1, -1, -1], [1, 0, -1, -1]], "at least 3 atoms"),
        ([[0, -1, -1], [1, 0, -1], [2, 1, 0]], r"shape \(N, 4\)"),
        ([[0, -1, -1, -1], [1, 0, -1, -1], [5, 1, 0, -1]], r"indices must lie in \[0, 2\]"),
        ([[0, -1, -1, -1], [1, 0, -1, -1], [1, 0, 2, -1]], "places atom 1 a second time"),
        ([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, -1, -1]], "must have references"),
        ([[0, -1, -1, -1], [1, 0, 2, -1], [2, 1, 0, -1]], "must have references"),
        ([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 1, -1]], "repeats an atom"),
        ([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1], [3, 2, 1, 2]], "repeats an atom"),
        ([[0, -1, -1, -1], [1, 0, -1, -1], [2, 3, 0, -1], [3, 2, 1, 0]], "before they are placed"),
        ([[0, -1, -1, -1], [1, 0, -1, -1], [-1, 1, 0, -1]], "indices must lie|no atom"),
        ("abc", "integer table"),
    ],
)
def test_explicit_zmatrix_validation(rows, message):
    with pytest.raises(InputError, match=message):
        ZMatrix(rows)


def test_explicit_zmatrix_must_match_system(vacuum):
    with pytest.raises(InputError, match="one row per atom"):
        ZMatrix([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1]], n_atoms=22)
    zm = ZMatrix([[0, -1, -1, -1], [1, 0, -1, -1], [2, 1, 0, -1]])
    with pytest.raises(InputError, match="places 3 atoms but the system has 22"):
        ot.InternalCoordinates.from_system(vacuum, zmatrix=zm)
