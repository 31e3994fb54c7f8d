"""MolecularSystem and the built-in systems, checked against OpenMM directly."""

from __future__ import annotations

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit
from openmmtools import testsystems

import openmm_trade as ot
from openmm_trade.errors import InputError, UnsupportedSystemError

#: built-in system -> residues; atoms per residue with hydrogens, from the amino-acid formulas
DEVELOPMENT_SET = {
    "ace-pro-nme-implicit": ["ACE", "PRO", "NME"],
    "ace-phe-nme-implicit": ["ACE", "PHE", "NME"],
    "ace-leu-nme-implicit": ["ACE", "LEU", "NME"],
    "ace-ala3-nme-implicit": ["ACE", "ALA", "ALA", "ALA", "NME"],
}
RESIDUE_ATOMS = {"ACE": 6, "NME": 6, "ALA": 10, "PRO": 14, "LEU": 19, "PHE": 20}


def test_builtins_follow_design(vacuum, implicit):
    assert ot.systems.available() == sorted(
        ["alanine-dipeptide-implicit", "alanine-dipeptide-vacuum", *DEVELOPMENT_SET])
    for msys in (vacuum, implicit):
        assert msys.n_atoms == 22
        assert len(msys.constraint_lengths) == 12  # HBonds: every bond to hydrogen
        names = [type(f).__name__ for f in msys.system.getForces()]
        nb = next(f for f in msys.system.getForces() if isinstance(f, openmm.NonbondedForce))
        assert nb.getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
        assert ("GBSAOBCForce" in names) == (msys is implicit)
    assert [r.name for r in vacuum.topology.residues()] == ["ACE", "ALA", "NME"]


@pytest.mark.parametrize("name", sorted(DEVELOPMENT_SET))
def test_development_set(name):
    msys = ot.systems.load(name)
    residues = [r.name for r in msys.topology.residues()]
    assert residues == DEVELOPMENT_SET[name]
    assert msys.n_atoms == sum(RESIDUE_ATOMS[r] for r in residues)
    hydrogens = sum(a.element.symbol == "H" for a in msys.topology.atoms())
    assert len(msys.constraint_lengths) == hydrogens  # HBonds
    forces = {type(f).__name__: f for f in msys.system.getForces()}
    assert forces["NonbondedForce"].getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
    assert any("GB" in force for force in forces)  # implicit solvent (OBC2)
    # OpenMMEnergy gives OpenMM's own energy on the stored structure and near it
    x = msys.positions[None] + 0.002 * np.random.default_rng(5).standard_normal(
        (3, msys.n_atoms, 3))
    x = np.concatenate([msys.positions[None], x])
    context = openmm.Context(msys.system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    expected = []
    for p in x:
        context.setPositions(p * unit.nanometer)
        state = context.getState(getEnergy=True)
        expected.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    with ot.OpenMMEnergy(msys, platform="Reference") as energy:
        np.testing.assert_allclose(energy(torch.as_tensor(x)).numpy(), expected, rtol=1e-8)


def test_unconstrained_variant():
    msys = ot.systems.load("alanine-dipeptide-implicit", constraints=None)
    assert msys.constrained_pairs.shape == (0, 2)


def test_unknown_system_lists_valid_names():
    with pytest.raises(InputError, match="alanine-dipeptide-vacuum"):
        ot.systems.load("ubiquitin")


def test_constraint_lengths_match_openmm(vacuum):
    for k, (i, j) in enumerate(vacuum.constrained_pairs):
        a, b, d = vacuum.system.getConstraintParameters(k)
        assert {a, b} == {i, j}
        assert vacuum.constraint_lengths[k] == pytest.approx(d.value_in_unit(unit.nanometer))
    elements = {a.index: a.element.symbol for a in vacuum.topology.atoms()}
    assert all("H" in (elements[i], elements[j]) for i, j in vacuum.constrained_pairs)


def test_from_testsystem_and_xml(tmp_path):
    t = testsystems.AlanineDipeptideVacuum()
    msys = ot.MolecularSystem.from_testsystem(t)
    assert msys.n_atoms == 22 and np.allclose(msys.masses.sum(), 144.17, atol=0.1)
    xml = tmp_path / "system.xml"
    xml.write_text(msys.system_xml)
    again = ot.MolecularSystem.from_xml(xml, ot.systems.path("alanine-dipeptide.pdb"))
    assert again.fingerprint == ot.MolecularSystem.from_xml(
        xml, ot.systems.path("alanine-dipeptide.pdb")).fingerprint
    assert again.n_atoms == 22


def test_from_prmtop():
    import os

    import openmmtools
    folder = os.path.join(os.path.dirname(openmmtools.__file__), "data", "alanine-dipeptide-gbsa")
    msys = ot.MolecularSystem.from_prmtop(
        os.path.join(folder, "alanine-dipeptide.prmtop"),
        os.path.join(folder, "alanine-dipeptide.crd"), implicit_solvent=app.OBC2)
    assert msys.n_atoms == 22 and len(msys.constraint_lengths) == 12


def test_validation_errors(vacuum):
    with pytest.raises(InputError, match="particles but topology has"):
        ot.MolecularSystem.from_openmm(openmm.System(), vacuum.topology, vacuum.positions)
    with pytest.raises(InputError, match="positions are missing"):
        ot.MolecularSystem.from_openmm(vacuum.system, vacuum.topology, None)
    bad = vacuum.positions.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ot.MolecularSystem.from_openmm(vacuum.system, vacuum.topology, bad)
    with pytest.raises(InputError, match="shape"):
        ot.MolecularSystem.from_openmm(vacuum.system, vacuum.topology, bad[:5])
    water = testsystems.WaterBox(box_edge=1.5 * unit.nanometer)
    with pytest.raises(UnsupportedSystemError, match="implicit solvent"):
        ot.MolecularSystem.from_testsystem(water)
    tip4p = testsystems.WaterBox(box_edge=1.5 * unit.nanometer, model="tip4pew")
    with pytest.raises(UnsupportedSystemError):
        ot.MolecularSystem.from_testsystem(tip4p)
