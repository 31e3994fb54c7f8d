"""Collect boundary data from your own OpenMM Simulation with BoundaryReporter.

This is how openmm-trade attaches to an MD workflow you already have: append a
``BoundaryReporter`` to ``simulation.reporters``, run as usual, then train on
``reporter.trajectory()`` (frames plus potential energies).

    python examples/boundary_from_simulation_reporter.py
    python examples/boundary_from_simulation_reporter.py --quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

import openmm
from openmm import app, unit

import openmm_trade as ot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("reporter-output"))
    args = parser.parse_args()
    n_frames, steps = (200, 20) if args.quick else (5000, 2000)

    # Your usual OpenMM setup (here: the alanine-dipeptide PDB in OBC2 implicit solvent).
    pdb = app.PDBFile(str(ot.systems.path("alanine-dipeptide.pdb")))
    forcefield = app.ForceField("amber99sbildn.xml", "amber96_obc.xml")
    system = forcefield.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                     constraints=app.HBonds)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond,
                                                 2 * unit.femtoseconds)
    simulation = app.Simulation(pdb.topology, system, integrator)
    simulation.context.setPositions(pdb.positions)
    simulation.minimizeEnergy()
    simulation.step(5000 if not args.quick else 100)   # equilibration, not recorded

    # The only new lines in your script: a reporter that keeps frames and energies.
    args.out.mkdir(parents=True, exist_ok=True)
    reporter = ot.md.BoundaryReporter(file=str(args.out / "boundary.h5"), report_interval=250)
    simulation.reporters.append(reporter)
    simulation.step(250 * n_frames)
    reporter.close()
    boundary = reporter.trajectory()
    print(f"collected {boundary.n_frames} frames; energies:",
          ot.md.potential_energies(boundary)[:3], "kJ/mol ...")

    msys = ot.MolecularSystem.from_openmm(system, pdb.topology, pdb.positions)
    model = ot.TemperatureFlow.for_system(msys, boundary, temperature_range=(300, 500))
    with ot.OpenMMEnergy(msys) as energy:
        ot.train(model, energy, boundary=boundary, boundary_temperature=300, steps=steps)
        wt = ot.sample(model, energy, temperature=500, n=1000, seed=1)
    print(wt.summary())


if __name__ == "__main__":
    main()
