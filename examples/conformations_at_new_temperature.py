"""Conformations of alanine dipeptide at 450 K from MD at 300 K only.

Trains a TemperatureFlow on 300 K MD, draws importance-weighted conformations at
450 K, and hands them back as mdtraj objects: the weighted trajectory, an unweighted
resampled trajectory (DCD), and Ramachandran populations with uncertainties.

    python examples/conformations_at_new_temperature.py
    python examples/conformations_at_new_temperature.py --quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

import openmm_trade as ot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("ala2-450K"))
    args = parser.parse_args()
    n_frames, steps, n = (200, 20, 300) if args.quick else (5000, 3000, 20_000)

    msys = ot.systems.load("alanine-dipeptide-vacuum")
    boundary = ot.md.simulate(msys, temperature=300, n_frames=n_frames, interval_ps=1.0, seed=1)
    model = ot.TemperatureFlow.for_system(msys, boundary, temperature_range=(300, 600))
    with ot.OpenMMEnergy(msys) as energy:
        ot.train(model, energy, boundary=boundary, boundary_temperature=300, steps=steps)
        wt = ot.sample(model, energy, temperature=450, n=n, seed=3)

    print(wt.summary())
    traj = wt.trajectory                 # mdtraj.Trajectory, one frame per sample
    print("weighted trajectory:", traj, "ESS:", f"{wt.ess:.1%}")
    unweighted = wt.resample(seed=4)     # equally weighted frames, for any MD analysis tool
    args.out.mkdir(parents=True, exist_ok=True)
    unweighted.save_dcd(str(args.out / "ala2-450K-resampled.dcd"))
    unweighted[0].save_pdb(str(args.out / "ala2-topology.pdb"))
    wt.save(args.out / "ala2-450K.h5")  # reload with ot.WeightedTrajectory.load
    populations = ot.free_energy.populations(wt, ot.cv.RAMACHANDRAN_STATES, seed=5)
    for state, (value, error) in populations.items():
        print(f"  {state:10s} {value:.3f} ± {error:.3f}")
    print(f"wrote {args.out}/")


if __name__ == "__main__":
    main()
