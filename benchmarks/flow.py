"""Maximum-likelihood fit of a TemperatureFlow on alanine-dipeptide MD; NLL, ESS, speed.

1. Boundary data: Langevin MD at ``--temperature`` (default 300 K) with
   :func:`openmm_trade.md.simulate`, ``--frames`` frames every ``--interval-ps`` ps,
   cached (resumable) in ``ot.md.cache_dir()`` (``~/.cache/openmm-trade``).
2. Fit: :meth:`TemperatureFlow.for_system` on 90 % of the frames, Adam on the negative
   log-likelihood at T0 for ``--minutes`` of wall time (cosine learning-rate decay over
   the budget); NLL of the held-out 10 % (the last frames, in time) is tracked and the
   weights with the best held-out NLL are kept (early stopping).
3. ESS at T0: ``--n-ess`` flow samples, OpenMM energies (float64, plain OpenMM context),
   ``log w = -β U - log p``, ``ESS = (Σw)² / (n Σw²)`` (a fraction).
4. Throughput at batch ``--throughput-batch`` (default 10^4): ``sample`` and ``log_prob``
   (no gradient) in samples per second.

Writes ``benchmarks/results/flow.json`` atomically and prints a summary. NLL values are
in nats per conformation on the internal-coordinate space (rigid-body motion factored
out; see :mod:`openmm_trade.coordinates`), so they are comparable between runs of this
benchmark, not with Cartesian-space NLLs of other codes.

Threads: ``--threads`` torch threads (default 1) and ``OPENMM_CPU_THREADS`` for MD.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/flow.py --minutes 15
    python benchmarks/flow.py --minutes 2 --frames 2000   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import torch
from openmm import unit

import openmm_trade as ot
from openmm_trade.flow import TemperatureFlow
from openmm_trade.units import KB

RESULTS = Path(__file__).resolve().parent / "results" / "flow.json"


def boundary_data(msys, temperature: float, frames: int, interval_ps: float, seed: int):
    """Cached MD frames ``(frames, N, 3)`` nm and the seconds spent simulating now."""
    path = ot.md.cache_dir() / (f"flow-benchmark-{msys.name}-{temperature:g}K-{frames}x"
                                f"{interval_ps:g}ps-seed{seed}.h5")
    if path.exists():
        try:
            traj = mdtraj.load(str(path))
            if traj.n_frames == frames:
                return traj.xyz.astype(np.float64), 0.0
        except OSError:
            pass
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    traj = ot.md.simulate(msys, temperature, n_frames=frames, interval_ps=interval_ps,
                          seed=seed, output=path, resume=path.exists(), quiet=False)
    return traj.xyz.astype(np.float64), time.perf_counter() - start


class Energies:
    """Float64 potential energies (kJ/mol) with one plain OpenMM CPU context."""

    def __init__(self, msys):
        integrator = openmm.VerletIntegrator(0.001)
        platform_ = openmm.Platform.getPlatformByName("CPU")
        self.context = openmm.Context(msys.system, integrator, platform_)

    def __call__(self, xyz: np.ndarray) -> np.ndarray:
        out = np.empty(len(xyz))
        for i, positions in enumerate(xyz):
            self.context.setPositions(positions)
            state = self.context.getState(getEnergy=True)
            out[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        return np.where(np.isfinite(out), out, np.inf)


def ess_fraction(log_w: np.ndarray) -> float:
    """``(Σw)² / (n Σw²)`` computed stably from log-weights."""
    log_w = log_w[np.isfinite(log_w)] if np.isfinite(log_w).any() else log_w
    w = np.exp(log_w - log_w.max())
    return float(w.sum() ** 2 / (len(log_w) * (w ** 2).sum()))


def evaluate_ess(model, energies, temperature: float, n: int, batch: int = 5000) -> dict:
    """ESS fraction of ``n`` model samples at ``temperature`` against the Boltzmann target."""
    log_w, n_failed = [], 0
    with torch.no_grad():
        for start in range(0, n, batch):
            x, log_p = model.sample(min(batch, n - start), temperature)
            u = energies(x.double().numpy())
            n_failed += int(np.sum(~np.isfinite(u)))
            log_w.append(-u / (KB * temperature) - log_p.double().numpy())
    log_w = np.concatenate(log_w)
    return {"temperature": temperature, "n_samples": n, "ess_fraction": ess_fraction(log_w),
            "n_failed_energies": n_failed}


def throughput(model, temperature: float, batch: int, repeats: int = 3) -> dict:
    """Samples per second of ``sample`` and ``log_prob`` at one batch size (no gradient)."""
    with torch.no_grad():
        x, _ = model.sample(batch, temperature)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            x, _ = model.sample(batch, temperature)
        sample_rate = repeats * batch / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(repeats):
            model.log_prob(x, temperature)
        log_prob_rate = repeats * batch / (time.perf_counter() - start)
    return {"batch": batch, "sample_per_s": sample_rate, "log_prob_per_s": log_prob_rate}


def fit(model, train: torch.Tensor, valid: torch.Tensor, temperature: float, minutes: float,
        batch: int, lr: float, seed: int, quiet: bool, weight_decay: float = 0.0) -> dict:
    """AdamW on the NLL at ``temperature`` for a wall-time budget; returns the history.

    At each report the validation NLL is computed; at the end the weights with the best
    validation NLL are restored (early stopping: MD frames are few and correlated).
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    best = (math.inf, None, 0)
    generator = torch.Generator().manual_seed(seed)
    budget, start, step = 60.0 * minutes, time.perf_counter(), 0
    history, running, next_report = [], None, 0.0

    def valid_nll() -> float:
        with torch.no_grad():
            return float(-torch.cat([model.log_prob(v, temperature)
                                     for v in valid.split(5000)]).mean())

    while (elapsed := time.perf_counter() - start) < budget:
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(elapsed / budget, 1.0)))
        index = torch.randint(len(train), (batch,), generator=generator)
        loss = -model.log_prob(train[index], temperature).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        optimizer.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if elapsed >= next_report:
            record = {"step": step, "minutes": elapsed / 60, "train_nll": running,
                      "valid_nll": valid_nll()}
            history.append(record)
            if record["valid_nll"] < best[0]:
                best = (record["valid_nll"], copy.deepcopy(model.state_dict()), step)
            next_report += max(budget / 20, 5.0)
            if not quiet:
                print(f"  step {step:6d}  {elapsed / 60:5.1f} min  train NLL {running:8.3f}  "
                      f"valid NLL {record['valid_nll']:8.3f}", file=sys.stderr, flush=True)
    final = {"step": step, "minutes": (time.perf_counter() - start) / 60,
             "train_nll": running, "valid_nll": valid_nll()}
    history.append(final)
    if best[1] is not None and best[0] < final["valid_nll"]:
        model.load_state_dict(best[1])
    return {"steps": step, "final": final, "history": history,
            "restored_best_valid": {"step": best[2], "valid_nll": min(best[0],
                                                                     final["valid_nll"])}}


def write_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as file:
        json.dump(data, file, indent=2)
    os.replace(tmp, path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="alanine-dipeptide-vacuum")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--frames", type=int, default=6000)
    parser.add_argument("--interval-ps", type=float, default=0.5)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--n-blocks", type=int, default=3)
    parser.add_argument("--n-bins", type=int, default=8)
    parser.add_argument("--n-ess", type=int, default=10_000)
    parser.add_argument("--throughput-batch", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    msys = ot.systems.load(args.system)
    t0 = args.temperature
    xyz, md_seconds = boundary_data(msys, t0, args.frames, args.interval_ps, args.seed)
    n_train = int(0.9 * len(xyz))
    model = TemperatureFlow.for_system(
        msys, xyz[:n_train], temperature_range=(t0, 2 * t0), reference_temperature=t0,
        hidden=args.hidden, n_blocks=args.n_blocks, n_bins=args.n_bins, seed=args.seed)
    train = torch.as_tensor(xyz[:n_train], dtype=model.dtype)
    valid = torch.as_tensor(xyz[n_train:], dtype=model.dtype)
    energies = Energies(msys)
    ess_before = evaluate_ess(model, energies, t0, min(args.n_ess, 2000))
    training = fit(model, train, valid, t0, args.minutes, args.batch, args.lr, args.seed,
                   args.quiet, args.weight_decay)
    ess = evaluate_ess(model, energies, t0, args.n_ess)
    speed = throughput(model, t0, args.throughput_batch)
    md_energies = energies(xyz[n_train:])
    result = {
        "system": args.system,
        "boundary": {"temperature": t0, "frames": len(xyz), "interval_ps": args.interval_ps,
                     "train_frames": n_train, "md_seconds_this_run": md_seconds,
                     "mean_energy_kj_mol": float(md_energies.mean())},
        "architecture": {"hidden": args.hidden, "n_blocks": args.n_blocks,
                         "n_bins": args.n_bins, "prior": "truncated_normal",
                         "n_parameters": sum(p.numel() for p in model.parameters()),
                         "n_couplings": len(model.flow.couplings), "dtype": str(model.dtype)},
        "training": {"minutes_budget": args.minutes, "batch": args.batch, "lr": args.lr,
                     "weight_decay": args.weight_decay, **training},
        "ess_at_T0_before_training": ess_before,
        "ess_at_T0": ess,
        "throughput": speed,
        "environment": {"torch": torch.__version__, "threads": args.threads,
                        "cpu_count": os.cpu_count(), "python": platform.python_version(),
                        "date": time.strftime("%Y-%m-%d %H:%M:%S")},
    }
    write_atomic(args.output, result)
    if not args.quiet:
        print(json.dumps({"valid_nll": training["final"]["valid_nll"],
                          "train_nll": training["final"]["train_nll"],
                          "steps": training["steps"], "ess_at_T0": ess["ess_fraction"],
                          **speed}, indent=2))
    return result


if __name__ == "__main__":
    main()
