"""Bring your own molecule: a PDB file plus OpenMM force-field XML files.

The molecule here is capped serine (ACE-SER-NME, ``data/serine-dipeptide.pdb``) with
Amber14 and OBC2 implicit solvent -- not one of the built-in systems. Swap in your own
PDB and force fields; anything ``openmm.app.ForceField`` can parametrise works, as long
as it is a single molecule without periodic boundaries.

    python examples/attach_to_openmm_system.py            # a few minutes
    python examples/attach_to_openmm_system.py --quick    # seconds (smoke test)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import openmm_trade as ot

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("serine-output"))
    args = parser.parse_args()
    n_frames, steps, n = (200, 20, 200) if args.quick else (5000, 2000, 5000)

    # 1. The system: your PDB + force-field XML files (implicit solvent via the XML).
    msys = ot.MolecularSystem.from_pdb(
        HERE / "data" / "serine-dipeptide.pdb",
        forcefield=("amber14-all.xml", "implicit/obc2.xml"),
        constraints="HBonds",
    )
    print(msys)

    # 2. Boundary MD at T0 = 300 K (an mdtraj.Trajectory with potential energies).
    traj = ot.md.simulate(msys, temperature=300, n_frames=n_frames, interval_ps=0.5, seed=1)

    # 3. One flow for 300-450 K, trained by likelihood at 300 K plus TRADE.
    model = ot.TemperatureFlow.for_system(msys, traj, temperature_range=(300, 450))
    with ot.OpenMMEnergy(msys) as energy:
        ot.train(model, energy, boundary=traj, boundary_temperature=300, steps=steps)
        # 4. Conformations at 450 K, importance-weighted against the real force field.
        wt = ot.sample(model, energy, temperature=450, n=n, seed=2)
    print(wt.summary())
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "serine-model.pt")
    wt.save(args.out / "serine-450K.h5")
    print(f"wrote {args.out}/serine-model.pt and serine-450K.h5")


if __name__ == "__main__":
    main()
