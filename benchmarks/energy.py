"""Throughput of OpenMMEnergy against a raw OpenMM loop (energies + forces per second).

Variants, all in this process, on the CPU platform, with the same conformations:

* (a)  raw loop over one ``openmm.Context`` with OpenMM's default properties
  (``setPositions`` + ``getState(getEnergy=True, getForces=True)``, public API);
* (a1) the same raw loop with ``Threads=1`` (informational: for a 22-atom molecule one
  thread is often faster than several);
* (b)  ``OpenMMEnergy(n_workers=1)`` (in-process), ``energy(x)`` + backward;
* (c)  ``OpenMMEnergy(n_workers=2)`` (two worker processes, one thread each).

Repeats are interleaved (a, a1, b, c, a, a1, ...) so that load from other processes
hits every variant alike; the best repeat is reported. Targets on 2 cores:
(b)/(a) >= 0.9 and (c)/(a) >= 1.6.

Example
-------
    python benchmarks/energy.py --batch 4096 --repeats 3

Prints a markdown table and writes ``benchmarks/results/energy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openmm
import torch
from openmm import unit

import openmm_trade as ot

SYSTEMS = ("alanine-dipeptide-vacuum", "alanine-dipeptide-implicit")
VARIANTS = {
    "a": "(a) raw Context",
    "a1": "(a1) raw Context, 1 thread",
    "b": "(b) OpenMMEnergy n_workers=1",
    "c": "(c) OpenMMEnergy n_workers=2",
}
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "energy.json"


def conformations(msys: ot.MolecularSystem, batch: int, seed: int = 0) -> np.ndarray:
    """``batch`` copies of the reference positions with 0.005 nm Gaussian noise."""
    rng = np.random.default_rng(seed)
    return msys.positions[None] + 0.005 * rng.standard_normal((batch, msys.n_atoms, 3))


def raw_loop(msys: ot.MolecularSystem, properties: dict) -> Callable[[np.ndarray], np.ndarray]:
    """What a user writes with OpenMM alone: one Context, one conformation at a time."""
    context = openmm.Context(msys.system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("CPU"), properties)
    kj, kj_nm = unit.kilojoule_per_mole, unit.kilojoule_per_mole / unit.nanometer

    def run(x: np.ndarray) -> np.ndarray:
        energies, forces = np.empty(len(x)), np.empty_like(x)
        for i, positions in enumerate(x):
            context.setPositions(positions)
            state = context.getState(getEnergy=True, getForces=True)
            energies[i] = state.getPotentialEnergy().value_in_unit(kj)
            forces[i] = state.getForces(asNumpy=True).value_in_unit(kj_nm)
        return energies

    return run


def torch_energy(energy: ot.OpenMMEnergy) -> Callable[[np.ndarray], np.ndarray]:
    """``energy(x)`` with forces (``requires_grad``) and the backward pass, as in training."""

    def run(x: np.ndarray) -> np.ndarray:
        xt = torch.tensor(x, requires_grad=True)
        u = energy(xt)
        u.sum().backward()
        return u.detach().numpy()

    return run


def benchmark_system(name: str, batch: int, repeats: int) -> dict:
    """Evaluations per second of every variant for one built-in system."""
    msys = ot.systems.load(name)
    x = conformations(msys, batch)
    energies = [ot.OpenMMEnergy(msys, n_workers=1), ot.OpenMMEnergy(msys, n_workers=2)]
    runners = {
        "a": raw_loop(msys, {}),
        "a1": raw_loop(msys, {"Threads": "1"}),
        "b": torch_energy(energies[0]),
        "c": torch_energy(energies[1]),
    }
    try:
        results = {key: run(x[:8]) for key, run in runners.items()}  # warm up
        seconds = {key: [] for key in runners}
        for _ in range(repeats):
            for key, run in runners.items():
                start = time.perf_counter()
                results[key] = run(x)
                seconds[key].append(time.perf_counter() - start)
    finally:
        for energy in energies:
            energy.close()
    reference = results["a"]
    return {
        "system": name,
        "batch": batch,
        "evals_per_s": {k: batch / min(v) for k, v in seconds.items()},
        "median_evals_per_s": {k: batch / statistics.median(v) for k, v in seconds.items()},
        "seconds": seconds,
        "max_rel_energy_difference_vs_a": {
            k: float(np.max(np.abs(v - reference) / np.abs(reference))) for k, v in results.items()
        },
    }


def markdown(rows: list[dict]) -> str:
    """A markdown table of evaluations per second and the ratios to (a)."""
    header = ["system", *VARIANTS.values(), "(b)/(a)", "(c)/(a)", "(c)/(a1)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        rate = row["evals_per_s"]
        cells = [row["system"], *(f"{rate[k]:,.0f}/s" for k in VARIANTS),
                 f"{rate['b'] / rate['a']:.2f}", f"{rate['c'] / rate['a']:.2f}",
                 f"{rate['c'] / rate['a1']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json_atomically(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to a temporary file in ``path``'s folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as fh:
        json.dump(data, fh, indent=2)
    os.replace(fh.name, path)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns what is written to the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4096, help="conformations per call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    rows = [benchmark_system(name, args.batch, args.repeats) for name in args.systems]
    table = markdown(rows)
    print(table)
    for row in rows:
        rate = row["evals_per_s"]
        print(f"{row['system']}: (b)/(a) = {rate['b'] / rate['a']:.2f} (target >= 0.9), "
              f"(c)/(a) = {rate['c'] / rate['a']:.2f} (target >= 1.6)")
    data = {
        "benchmark": "energy",
        "variants": VARIANTS,
        "batch": args.batch,
        "repeats": args.repeats,
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "openmm": openmm.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "results": rows,
        "table": table,
    }
    write_json_atomically(args.output, data)
    print(f"written {args.output}")
    return data


if __name__ == "__main__":
    main()
