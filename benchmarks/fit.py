"""The best fit at T0 against cost: ESS at T0 and at the far end of the range per candidate
default (architecture, boundary frames, training length, reverse-KL weight).

For every combination of the candidates given on the command line:

1. Boundary data: Langevin MD at ``--t0`` with :func:`openmm_trade.md.simulate`
   (``--interval-ps`` between frames), one cached, resumable file per frame count in
   ``ot.md.cache_dir()``.
2. Model and fit: :meth:`TemperatureFlow.for_system` with the candidate's width × coupling
   blocks (× spline bins), then :func:`openmm_trade.train` with its defaults except the
   candidate's length (and ``kl_weight``): ``--steps``, or a budget of ``--minutes`` turned
   into steps by timing the architecture's steps first (that timing includes one-time costs
   such as the first fill of the ⟨U⟩ grid, so a training takes less CPU than its nominal
   budget: the table reports what it took); the last 10 % of the frames are held out,
   the likelihood phase keeps its best held-out parameters, then TRADE.
   Checkpointed in ``<cache>/fit-benchmark/...``: an interrupted benchmark resumes where it
   stopped, and finished candidates are not recomputed.
3. Evaluation: the overlap σ on the held-out frames (``ESS ≈ exp(-σ²)``) and the ESS of
   ``--n-eval`` flow samples at T0 and at the far end of the range
   (:func:`openmm_trade.sample`).

Cost is the training's CPU time (one torch thread, one in-process OpenMM context:
``OMP_NUM_THREADS=1``), in minutes, measured around the training (``*``: resumed, so only
the part run last), and its wall time from the training history (which survives
resumption, but grows when the machine is busy). Writes ``benchmarks/results/fit.json``
(``fit_quick.json`` with ``--quick``) atomically and prints a Markdown table.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/fit.py                 # the full grid (hours)
    OMP_NUM_THREADS=1 python benchmarks/fit.py --frames 6000 --minutes 5,15
    OMP_NUM_THREADS=1 python benchmarks/fit.py --archs 64x3 --frames 6000 --steps 1500
    python benchmarks/fit.py --quick                           # a pipeline check (minutes)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import time
from pathlib import Path

import torch

import openmm_trade as ot
from openmm_trade.files import write_text_atomic
from openmm_trade.flow import TemperatureFlow

RESULTS = Path(__file__).resolve().parent / "results"

#: tiny settings of ``--quick`` (a check that the pipeline runs, not a measurement)
QUICK = dict(archs=["16x1"], frames=[300], steps=[40], minutes=None, kl_weights=[0.0], n_eval=256,
             interval_ps=0.1, equilibration_ps=2.0)


def _list(kind):
    return lambda text: [kind(item) for item in text.split(",") if item.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="alanine-dipeptide-implicit")
    parser.add_argument("--t0", type=float, default=600.0, help="boundary temperature (K)")
    parser.add_argument("--range", type=float, nargs=2, default=(300.0, 600.0),
                        metavar=("T_MIN", "T_MAX"))
    parser.add_argument("--archs", type=_list(str), default=["64x3", "128x6", "256x18"],
                        help="WIDTHxBLOCKS[xBINS], comma-separated (default: today's 64x3, "
                             "a middle size, and the TRADE authors' alanine flow: 18 "
                             "couplings, 256 wide, 8 bins)")
    parser.add_argument("--frames", type=_list(int), default=[6000, 24000])
    parser.add_argument("--steps", type=_list(int), default=None,
                        help="training lengths in steps, the same for every architecture "
                             "(instead of --minutes)")
    parser.add_argument("--minutes", type=_list(float), default=[5.0, 15.0, 60.0],
                        help="training budgets in CPU minutes: each architecture's steps are "
                             "the budget over its measured seconds per step (a short "
                             "calibration run, cached so that a resumed grid keeps its steps)")
    parser.add_argument("--kl-weights", type=_list(float), default=[0.0],
                        help="reverse-KL weights at T0 added to the NLL (energy-informed fit)")
    parser.add_argument("--interval-ps", type=float, default=0.5)
    parser.add_argument("--equilibration-ps", type=float, default=20.0)
    parser.add_argument("--n-eval", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny settings (minutes)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def architecture(spec: str) -> dict:
    """``"64x3"`` → ``{"hidden": 64, "n_blocks": 3}``; ``"256x18x8"`` adds ``n_bins``."""
    parts = [int(p) for p in spec.lower().split("x")]
    if len(parts) not in (2, 3) or min(parts) < 1:
        raise SystemExit(f"--archs: expected WIDTHxBLOCKS[xBINS], got {spec!r}")
    return dict(zip(("hidden", "n_blocks", "n_bins"), parts, strict=False))


def boundary(msys, args, frames: int):
    """Cached (resumable) MD frames at T0 and the seconds spent simulating now."""
    path = ot.md.cache_dir() / (f"fit-{msys.name}-{args.t0:g}K-{frames}x{args.interval_ps:g}ps-"
                                f"seed{args.seed + 1}.h5")
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    traj = ot.md.simulate(msys, args.t0, n_frames=frames, interval_ps=args.interval_ps,
                          seed=args.seed + 1, equilibration_ps=args.equilibration_ps,
                          output=path, resume=True, quiet=True)
    return traj, time.perf_counter() - started


def seconds_per_step(msys, energy, traj, args, arch: str) -> float:
    """Mean CPU seconds of one default training step of ``arch`` (two thirds likelihood
    steps, one third TRADE steps, as in the default schedule), from 15 + 6 timed steps of a
    throwaway model; cached per architecture and frame count. CPU time of this process (one
    torch thread, OpenMM in-process on one thread), so that a busy machine does not change
    the steps a budget buys."""
    path = (ot.md.cache_dir() / "fit-benchmark" / f"{msys.name}-{args.t0:g}K"
            / f"calibration-{arch}-{traj.n_frames}f.json")
    if path.exists():
        return json.loads(path.read_text())["seconds_per_step"]
    path.parent.mkdir(parents=True, exist_ok=True)
    timings = {}
    for phase, steps, warmup in (("likelihood", 15, 15), ("trade", 6, 0)):
        model = TemperatureFlow.for_system(msys, traj, temperature_range=tuple(args.range),
                                           reference_temperature=args.t0, seed=args.seed,
                                           **architecture(arch))
        started = time.process_time()
        ot.train(model, energy, traj, args.t0, steps=steps, warmup_steps=warmup, ramp_steps=1,
                 seed=args.seed, quiet=True)
        timings[phase] = (time.process_time() - started) / steps
    value = (2 * timings["likelihood"] + timings["trade"]) / 3
    write_text_atomic(path, json.dumps({**timings, "seconds_per_step": value}, indent=1))
    return value


def training_lengths(msys, energy, traj, args, arch: str) -> list[int]:
    """``--steps`` as given, or each ``--minutes`` budget in steps of ``arch``."""
    if args.steps:
        return list(args.steps)
    per_step = seconds_per_step(msys, energy, traj, args, arch)
    return [max(int(round(minutes * 60.0 / per_step / 30.0)) * 30, 30)
            for minutes in args.minutes]


def candidate(msys, energy, traj, args, arch: str, steps: int, kl_weight: float) -> dict:
    """Train (or resume) one candidate and evaluate it; cached as ``result.json``."""
    folder = (ot.md.cache_dir() / "fit-benchmark" / f"{msys.name}-{args.t0:g}K"
              / f"{arch}-{traj.n_frames}f-{steps}s-kl{kl_weight:g}-seed{args.seed}"
              f"-{args.range[0]:g}-{args.range[1]:g}K")
    result_file = folder / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    resumed = any(folder.iterdir())  # a checkpoint of an interrupted run is there
    model = TemperatureFlow.for_system(msys, traj, temperature_range=tuple(args.range),
                                       reference_temperature=args.t0, seed=args.seed,
                                       **architecture(arch))
    cpu_started = time.process_time()
    history = ot.train(model, energy, traj, args.t0, steps=steps, kl_weight=kl_weight,
                       checkpoint=folder, checkpoint_every=max(steps // 20, 1), resume=True,
                       seed=args.seed, quiet=True)
    cpu_minutes = (time.process_time() - cpu_started) / 60.0
    model.save(folder / "model.pt")
    far = args.range[0] if abs(args.range[0] - args.t0) > abs(args.range[1] - args.t0) \
        else args.range[1]
    ess = {}
    for temperature in (args.t0, far):
        wt = ot.sample(model, energy, temperature=temperature, n=args.n_eval, seed=args.seed,
                       quiet=True)
        ess[f"{temperature:g}"] = float(wt.ess)
    result = {
        "arch": arch, "frames": traj.n_frames, "steps": steps, "kl_weight": kl_weight,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_minutes": history.last["wall_time"] / 60.0,
        # CPU time of this invocation: less than the whole training's if it was resumed
        "train_cpu_minutes": cpu_minutes, "resumed": resumed,
        "overlap_sigma": history.overlap_sigma, "restored_step": history.restored_step,
        "holdout_nll": history.summary["holdout_nll"], "skipped_steps": history.skipped_steps,
        "ess_t0": ess[f"{args.t0:g}"], "ess_far": ess[f"{far:g}"], "far_temperature": far,
    }
    write_text_atomic(result_file, json.dumps(result, indent=1))
    return result


def table(rows: list[dict]) -> str:
    head = ("| arch | frames | steps | KL weight | train min (wall) | CPU min | σ (held out) | "
            "exp(-σ²) | ESS T0 | ESS far | kept step |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        sigma = r["overlap_sigma"]
        lines.append(
            f"| {r['arch']} | {r['frames']} | {r['steps']} | {r['kl_weight']:g} | "
            f"{r['train_minutes']:.1f} | {r.get('train_cpu_minutes', math.nan):.1f}"
            f"{'*' if r.get('resumed') else ''} | {sigma:.2f} | {math.exp(-sigma * sigma):.1%} | "
            f"{r['ess_t0']:.1%} | {r['ess_far']:.1%} | {r['restored_step']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    msys = ot.systems.load(args.system)
    rows, md_seconds = [], {}
    with ot.OpenMMEnergy(msys, platform="CPU", n_workers=1) as energy:
        for frames in args.frames:
            traj, md_seconds[frames] = boundary(msys, args, frames)
            for arch in args.archs:
                lengths = training_lengths(msys, energy, traj, args, arch)
                for steps, kl_weight in itertools.product(lengths, args.kl_weights):
                    row = candidate(msys, energy, traj, args, arch, steps, kl_weight)
                    rows.append(row)
                    print(table([row]).splitlines()[-1], flush=True)
    data = {"system": args.system, "t0": args.t0, "range": list(args.range),
            "n_eval": args.n_eval, "interval_ps": args.interval_ps, "quick": args.quick,
            "budget_minutes": args.minutes,
            "md_seconds_this_run": md_seconds, "machine": platform.processor() or
            platform.machine(), "rows": rows}
    output = args.output or RESULTS / ("fit_quick.json" if args.quick else "fit.json")
    write_text_atomic(output, json.dumps(data, indent=1))
    print(table(rows))
    print(f"wrote {output}")
    return data


if __name__ == "__main__":
    main()
