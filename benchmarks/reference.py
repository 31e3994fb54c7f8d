"""Parallel-tempering reference ensemble for the flagship system (the ground truth).

Alanine dipeptide in OBC implicit solvent (``alanine-dipeptide-implicit``), 8 replicas at
geometrically spaced temperatures 300-600 K, 5 ns per replica by default (500 steps of
2 fs per iteration, i.e. 5000 iterations). The openmmtools storage lives in the cache
(``$OPENMM_TRADE_CACHE`` or ``~/.cache/openmm-trade``), so an interrupted run resumes
where it stopped when the same command is given again, and a longer run extends it.

Prints neighbour acceptance rates, statistical inefficiencies of U, φ, ψ per
temperature and the MBAR free energies, and writes them (with the settings) to
``benchmarks/results/reference_summary.json`` (``reference_summary_quick.json`` with
``--quick``).

Usage::

    python benchmarks/reference.py                  # full: 5 ns per replica (hours on CPU)
    python benchmarks/reference.py --ns-per-replica 10
    python benchmarks/reference.py --iterations 200 # explicit number of iterations
    python benchmarks/reference.py --quick          # seconds: checks the pipeline
    OPENMM_CPU_THREADS=2 python benchmarks/reference.py --platform CPU
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import openmm_trade as ot
from openmm_trade.files import write_text_atomic
from openmm_trade.mbar import mbar_reference

RESULTS = Path(__file__).resolve().parent / "results"
QUICK = {"iterations": 20, "steps_per_iteration": 50}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="alanine-dipeptide-implicit",
                        choices=ot.systems.available())
    parser.add_argument("--t-min", type=float, default=300.0, help="lowest temperature (K)")
    parser.add_argument("--t-max", type=float, default=600.0, help="highest temperature (K)")
    parser.add_argument("--n-temperatures", type=int, default=8)
    parser.add_argument("--ns-per-replica", type=float, default=5.0)
    parser.add_argument("--iterations", type=int, default=None,
                        help="total iterations (overrides --ns-per-replica)")
    parser.add_argument("--steps-per-iteration", type=int, default=500)
    parser.add_argument("--timestep-ps", type=float, default=None,
                        help="default: 0.002 with constraints, 0.001 without")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--storage", type=Path, default=None,
                        help="NetCDF storage (default: a file in the cache named by a hash "
                             "of the settings)")
    parser.add_argument("--output", type=Path, default=None, help="summary JSON path")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['iterations']} iterations of "
                             f"{QUICK['steps_per_iteration']} steps, to check the pipeline")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def run_parallel_tempering(args: argparse.Namespace) -> ot.md.ParallelTemperingResult:
    """The parallel tempering these ``args`` describe (reloaded from the cache when it has
    run; extended or resumed otherwise)."""
    msys = ot.systems.load(args.system)
    temperatures = np.geomspace(args.t_min, args.t_max, args.n_temperatures)
    timestep = args.timestep_ps or ot.md.default_timestep_ps(msys)
    steps = QUICK["steps_per_iteration"] if args.quick else args.steps_per_iteration
    if args.quick:
        iterations = QUICK["iterations"]
    elif args.iterations is not None:
        iterations = args.iterations
    else:
        iterations = max(1, round(args.ns_per_replica * 1000 / (steps * timestep)))
    return ot.md.parallel_tempering(
        msys, temperatures, n_iterations=iterations, steps_per_iteration=steps,
        storage=args.storage, timestep_ps=timestep, seed=args.seed, platform=args.platform,
        quiet=args.quiet,
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    output = args.output or RESULTS / (
        "reference_summary_quick.json" if args.quick else "reference_summary.json")
    pt = run_parallel_tempering(args)
    temperatures = pt.temperatures
    table = mbar_reference(pt)
    summary = {
        "system": args.system,
        "seed": args.seed,
        "platform": args.platform,
        "quick": args.quick,
        **pt.summary(),
        "mbar": table.as_dict(),
    }

    print(f"\n{args.system}: {pt.n_iterations} iterations, "
          f"{pt.simulated_time_ps / 1000:.3g} ns per replica, wall {pt.wall_time_s:.0f} s "
          f"(this call), storage {pt.storage}")
    print("neighbour acceptance:", " ".join(f"{a:.2f}" for a in pt.acceptance_rates))
    print(f"{'T (K)':>8} {'g(U)':>7} {'g(phi)':>7} {'g(psi)':>7} {'N_eff':>7}")
    for t, s in zip(temperatures, summary["per_temperature"], strict=True):
        g = s["statistical_inefficiency"]
        print(f"{t:8.1f} {g['U']:7.1f} {g.get('phi', np.nan):7.1f} {g.get('psi', np.nan):7.1f} "
              f"{s['n_effective']:7.0f}")
    print("MBAR (auto equilibration, decorrelated):")
    print(table)

    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, json.dumps(summary, indent=2) + "\n")
    print(f"wrote {output}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
