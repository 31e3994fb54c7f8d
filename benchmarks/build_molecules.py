"""Build the development set of capped peptides (issue 17) into the top-level ``systems/``.

Every molecule starts from ``systems/alanine-dipeptide.pdb`` (ACE-ALA-NME) and is edited
with pdbfixer (``pip install openmm-trade[build]``):

* ``ace-X-nme``: ``PDBFixer.applyMutations(["ALA-2-X"])`` renames residue 2 and deletes
  its hydrogens and every atom the new residue does not have (for ALA that leaves the
  backbone and CB), then ``addMissingAtoms`` grows the side chain from its template and
  ``addMissingHydrogens`` protonates it (pH 7).
* ``ace-ala3-nme``: the NME cap is deleted and ``ALA ALA NME`` are declared as missing
  residues at the C terminus (``fixer.missingResidues``), which ``addMissingAtoms``
  builds from templates; then ``addMissingHydrogens``.

Each structure is energy-minimised with amber14-all + implicit/obc2 (NoCutoff, HBonds) on
the Reference platform, written as ``systems/<name>.pdb`` with a TOML
definition next to it, so ``openmm_trade.systems.load(name)`` builds it. Python's ``random``
(hydrogen start positions) and pdbfixer's integrator are seeded and every calculation runs on
the Reference platform, so running the script twice gives identical files.

Usage::

    python benchmarks/build_molecules.py            # writes systems/ace-*-nme*.{pdb,toml}
    python benchmarks/build_molecules.py --out DIR  # elsewhere (e.g. to diff two runs)
"""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path

import openmm
from openmm import app, unit

from openmm_trade.files import write_text_atomic
from openmm_trade.systems import SYSTEMS_DIR

FORCEFIELD = ("amber14-all.xml", "implicit/obc2.xml")
SEED = 2024
SOURCE = SYSTEMS_DIR / "alanine-dipeptide.pdb"

#: name -> (description, edit); edit is ("mutate", residue) or ("extend", residues).
MOLECULES = {
    "ace-pro-nme": ("ACE-PRO-NME (proline: aliphatic ring)", ("mutate", "PRO")),
    "ace-phe-nme": ("ACE-PHE-NME (phenylalanine: aromatic ring)", ("mutate", "PHE")),
    "ace-leu-nme": ("ACE-LEU-NME (leucine: branched side chain, no ring)", ("mutate", "LEU")),
    "ace-ala3-nme": ("ACE-(ALA)3-NME (longer backbone)", ("extend", ["ALA", "ALA", "NME"])),
}


def _reference() -> openmm.Platform:
    """The Reference platform: single-threaded, so minimisations repeat bit for bit."""
    return openmm.Platform.getPlatformByName("Reference")


def _fixer(edit):
    from pdbfixer import PDBFixer

    random.seed(SEED)  # Modeller.addHydrogens starts new hydrogens at random.random() offsets
    fixer = PDBFixer(filename=str(SOURCE), platform=_reference())
    chain = next(fixer.topology.chains())
    kind, what = edit
    if kind == "mutate":
        fixer.applyMutations([f"ALA-2-{what}"], chain.id)
        fixer.missingResidues = {}
    else:
        nme = [r for r in chain.residues() if r.name == "NME"]
        modeller = app.Modeller(fixer.topology, fixer.positions)
        modeller.delete(nme)
        fixer.topology, fixer.positions = modeller.topology, modeller.positions
        fixer.missingResidues = {(0, 2): list(what)}
    fixer.findMissingAtoms()
    fixer.missingTerminals = {}  # the caps are the termini
    fixer.addMissingAtoms(seed=SEED)
    fixer.addMissingHydrogens(7.0)
    return fixer


def build(name: str, out: Path) -> tuple[int, float]:
    """Build one molecule into ``out``; returns (atoms, minimised energy in kJ/mol)."""
    description, edit = MOLECULES[name]
    fixer = _fixer(edit)
    forcefield = app.ForceField(*FORCEFIELD)
    system = forcefield.createSystem(fixer.topology, nonbondedMethod=app.NoCutoff,
                                     constraints=app.HBonds)
    integrator = openmm.VerletIntegrator(0.001)
    context = openmm.Context(system, integrator, _reference())
    context.setPositions(fixer.positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, 0)
    state = context.getState(getPositions=True, getEnergy=True)
    buffer = io.StringIO()
    app.PDBFile.writeFile(fixer.topology, state.getPositions(), buffer, keepIds=False)
    lines = [line for line in buffer.getvalue().splitlines() if not line.startswith("REMARK")]
    write_text_atomic(out / f"{name}.pdb", "\n".join(lines) + "\n")
    forcefield_list = ", ".join(f'"{f}"' for f in FORCEFIELD)
    write_text_atomic(out / f"{name}-implicit.toml", (
        f"# {description} in OBC2 implicit solvent; built by benchmarks/build_molecules.py.\n"
        f'description = "{description}, amber14-all + implicit/obc2, NoCutoff, HBonds"\n'
        f'pdb = "{name}.pdb"\n'
        f"forcefield = [{forcefield_list}]\n"
        'constraints = "HBonds"\n'
    ))
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    return system.getNumParticles(), energy


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SYSTEMS_DIR, help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in MOLECULES:
        n_atoms, energy = build(name, args.out)
        print(f"{name}: {n_atoms} atoms, minimised energy {energy:.2f} kJ/mol")


if __name__ == "__main__":
    main()
