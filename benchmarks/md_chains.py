"""Boundary MD throughput: frames per wall second with 1 chain against 2 chains.

Both variants run ``ot.md.simulate`` in this process on the CPU platform with the same
total ``n_frames`` (two chains do half each, in two child processes with one OpenMM
thread each); the wall time covers everything a user waits for (process start,
minimisation, equilibration of every chain, production, assembly). Repeats are
interleaved (1, 2, 1, 2, ...) so that load from other processes hits both alike; the best
repeat of each is reported, with the load average before and after. Target on 2 free
cores: ratio >= 1.8.

Example
-------
    python benchmarks/md_chains.py --frames 160 --repeats 2

Prints a line per run and writes ``benchmarks/results/md_chains.json`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import openmm

import openmm_trade as ot
from openmm_trade.files import write_bytes_atomic

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "md_chains.json"


def frames_per_second(msys, n_chains: int, args) -> float:
    start = time.perf_counter()
    traj = ot.md.simulate(msys, args.temperature, n_frames=args.frames,
                          interval_ps=args.interval_ps, seed=args.seed,
                          equilibration_ps=args.equilibration_ps, quiet=True, n_chains=n_chains)
    seconds = time.perf_counter() - start
    assert traj.n_frames == args.frames
    return args.frames / seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="alanine-dipeptide-implicit")
    parser.add_argument("--temperature", type=float, default=600.0)
    parser.add_argument("--frames", type=int, default=160, help="total over the chains")
    parser.add_argument("--interval-ps", type=float, default=0.5)
    parser.add_argument("--equilibration-ps", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    msys = ot.systems.load(args.system)
    load_before = os.getloadavg()
    runs: dict[int, list[float]] = {1: [], 2: []}
    for repeat in range(args.repeats):
        for n_chains in (1, 2):
            fps = frames_per_second(msys, n_chains, args)
            runs[n_chains].append(fps)
            print(f"repeat {repeat}: {n_chains} chain(s): {fps:.2f} frames/s", flush=True)
    load_after = os.getloadavg()
    best = {k: max(v) for k, v in runs.items()}
    result = {
        "system": args.system, "temperature_K": args.temperature, "frames": args.frames,
        "interval_ps": args.interval_ps, "equilibration_ps": args.equilibration_ps,
        "steps_per_frame": round(args.interval_ps / ot.md.default_timestep_ps(msys)),
        "frames_per_second": {f"{k}_chain{'s' if k > 1 else ''}": v for k, v in best.items()},
        "all_runs": {str(k): v for k, v in runs.items()},
        "ratio_2_over_1": best[2] / best[1],
        "cores": ot.md.available_cores(),
        "load_average_before": list(load_before), "load_average_after": list(load_after),
        "machine": platform.platform(), "processor": platform.processor(),
        "openmm": openmm.__version__,
    }
    print(f"2 chains / 1 chain: {result['ratio_2_over_1']:.2f}x "
          f"(load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {result['cores']} cores)")
    write_bytes_atomic(args.output, (json.dumps(result, indent=2) + "\n").encode())
    return result


if __name__ == "__main__":
    main()
