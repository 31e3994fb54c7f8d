"""Throughput of InternalCoordinates forward/inverse on alanine dipeptide (CPU).

Transforms ``--n`` conformations (default 10^5) in batches of ``--batch`` and reports
samples per second for ``forward``, ``inverse``, a full round trip, and the round trip
with a backward pass (what training through the transform costs), in float32 and
float64. Writes ``benchmarks/results/coordinates.json`` (atomically) and prints a table.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/coordinates.py [--n 100000] [--batch 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import openmm_trade as ot

RESULTS = Path(__file__).resolve().parent / "results" / "coordinates.json"


def conformations(ic: ot.InternalCoordinates, n: int, seed: int) -> torch.Tensor:
    """``n`` alanine-dipeptide conformations: reference z with noise, random torsions."""
    gen = torch.Generator().manual_seed(seed)
    z = ic.reference_z.repeat(n, 1)
    noise = torch.where(ic.bond_mask, 0.003, 0.05).to(z.dtype)
    z = z + noise * torch.randn(z.shape, generator=gen, dtype=z.dtype)
    z[:, ic.torsion_mask] = (torch.rand(n, ic.n_torsions, generator=gen, dtype=z.dtype)
                             * 2 - 1) * torch.pi
    return ic.inverse(z)[0]


def throughput(fn, batches) -> float:
    """Samples per second of ``fn`` over all batches (one warm-up batch first)."""
    fn(batches[0])
    start = time.perf_counter()
    for batch in batches:
        fn(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    msys = ot.systems.load("alanine-dipeptide-implicit")
    ic = ot.InternalCoordinates.from_system(msys)
    x64 = conformations(ic, args.n, seed=0)
    rows = []
    for dtype in (torch.float32, torch.float64):
        xs = list(x64.to(dtype).split(args.batch))
        zs = [ic.forward(x)[0] for x in xs]

        def round_trip_backward(x):
            x = x.clone().requires_grad_(True)
            z, logdet = ic.forward(x)
            x_back, logdet_back = ic.inverse(z)
            (x_back.sum() + logdet.sum() + logdet_back.sum()).backward()

        with torch.no_grad():
            fwd = throughput(ic.forward, xs)
            inv = throughput(lambda z: ic.inverse(z), zs)
            both = throughput(lambda x: ic.inverse(ic.forward(x)[0]), xs)
        grad = throughput(round_trip_backward, xs)
        rows.append({"dtype": str(dtype).replace("torch.", ""), "forward": fwd,
                     "inverse": inv, "forward+inverse": both,
                     "forward+inverse+backward": grad})

    result = {
        "benchmark": "InternalCoordinates throughput, alanine dipeptide (22 atoms, HBonds)",
        "unit": "samples/s",
        "n_samples": args.n,
        "batch_size": args.batch,
        "n_dof": ic.n_dof,
        "n_layers": len(ic.zmatrix.layers),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "results": rows,
    }
    header = f"{'dtype':<8}" + "".join(f"{k:>26}" for k in rows[0] if k != "dtype")
    print(f"{args.n} conformations, batch {args.batch}, {torch.get_num_threads()} "
          f"torch thread(s), samples/s")
    print(header)
    for row in rows:
        print(f"{row['dtype']:<8}" + "".join(f"{v:>26,.0f}" for k, v in row.items()
                                             if k != "dtype"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.output.parent, delete=False,
                                     suffix=".tmp") as handle:
        json.dump(result, handle, indent=2)
    os.replace(handle.name, args.output)
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
