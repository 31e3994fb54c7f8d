"""The development set through the package's own pipeline (issue 17): one table row per
molecule at T0 and at the far end of the range.

For each molecule (default: the built-in development set, ``ace-*-nme-implicit``):

1. boundary MD at ``--t0`` (600 K) with :func:`openmm_trade.md.simulate` (``--frames`` ×
   ``--interval-ps``, ``--chains`` parallel chains), cached and resumable;
2. the default ``TemperatureFlow.for_system`` + ``ot.train`` over ``--range`` (checkpointed,
   resumable); the overlap σ on the held-out frames comes from the training history;
3. ``temperature_profile`` on ``--n-temperatures`` temperatures geometric over the range
   (``--n`` flow samples each): ESS, Δf by importance sampling and by TI of ⟨U⟩;
4. at T0 and at the far end: the clash fraction of the flow's samples (ring-closing bonds
   more than 5 σ off their MD length), and with ``--refine`` the same with SMC refinement.

Writes ``benchmarks/results/molecules.json`` (per molecule, as it finishes) and prints a
Markdown table with the issue's bar (ESS ≥ 2 % at T0, ≥ 0.5 % at the far end,
|Δf_IS − Δf_TI| ≤ 0.3 kT at the far end).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/molecules.py                       # the whole set
    OMP_NUM_THREADS=1 python benchmarks/molecules.py --systems ace-pro-nme-implicit --quick
    OMP_NUM_THREADS=1 python benchmarks/molecules.py --draws 10   # how the ESS of a draw spreads
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import openmm_trade as ot
from openmm_trade import metrics
from openmm_trade.files import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"
DEVELOPMENT_SET = ["ace-pro-nme-implicit", "ace-phe-nme-implicit", "ace-leu-nme-implicit",
                   "ace-ala3-nme-implicit"]
BAR = {"ess_t0": 0.02, "ess_far": 0.005, "delta_f_ti_kT": 0.3}
QUICK = dict(frames=200, interval_ps=0.1, steps=30, n=300, n_temperatures=3)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default=",".join(DEVELOPMENT_SET),
                        help="comma list of built-in systems")
    parser.add_argument("--t0", type=float, default=600.0)
    parser.add_argument("--range", type=float, nargs=2, default=(300.0, 600.0))
    parser.add_argument("--frames", type=int, default=6000)
    parser.add_argument("--interval-ps", type=float, default=0.5)
    parser.add_argument("--chains", type=int, default=None, help="default: one per core")
    parser.add_argument("--steps", type=int, default=None, help="default: train's default")
    parser.add_argument("--n", type=int, default=10_000, help="samples per temperature")
    parser.add_argument("--n-temperatures", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=None,
                        help="conditioner width; default: FlowArchitecture's")
    parser.add_argument("--n-blocks", type=int, default=None,
                        help="repetitions of the coupling pattern; default: FlowArchitecture's")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="boundary frames per step; default: TrainingConfig's")
    parser.add_argument("--model-seed", type=int, default=None,
                        help="seed of the model and its training; default: --seed")
    parser.add_argument("--draws", type=int, default=1,
                        help="independent draws of --n samples at T0 and at the far end, to "
                             "see how the ESS of one draw spreads (the first is the table's)")
    parser.add_argument("--refine", action="store_true", help="also SMC at T0 and far end")
    parser.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=True,
                        help="TemperatureFlow.for_system(whiten=...); --no-whiten: the model "
                             "before whitening")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--md-only", action="store_true",
                        help="only run (or finish) the boundary MD of each molecule")
    parser.add_argument("--quick", action="store_true", help="tiny settings (pipeline check)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    suffix = (("_quick" if args.quick else "") + ("" if args.whiten else "_no_whiten")
              + "".join(f"_{key}{value}" for key, value in model_settings(args)))
    args.output = args.output or RESULTS / f"molecules{suffix}.json"
    return args


def cache(args, name: str) -> tuple[Path, Path]:
    """``(boundary MD file, model folder)`` under ``ot.md.cache_dir()/molecules``; the MD is
    shared by every model setting."""
    folder = ot.md.cache_dir() / "molecules" / (
        f"{name}-{args.t0:g}K-{args.frames}x{args.interval_ps:g}ps-seed{args.seed}")
    model_folder = folder / (f"model-steps{args.steps or 'default'}"
                             + ("" if args.whiten else "-no-whiten")
                             + "".join(f"-{key}{value}" for key, value in model_settings(args)))
    model_folder.mkdir(parents=True, exist_ok=True)
    return folder / "boundary.h5", model_folder


def model_settings(args) -> list[tuple[str, int]]:
    """The non-default model settings given on the command line, as ``(name, value)``."""
    names = ("hidden", "n_blocks", "batch_size", "model_seed")
    return [(name, getattr(args, name)) for name in names if getattr(args, name) is not None]


def boundary_md(name: str, args):
    """The molecule's boundary MD at ``--t0`` (cached, resumable) and its wall time."""
    started = time.perf_counter()
    traj = ot.md.simulate(ot.systems.load(name), args.t0, n_frames=args.frames,
                          interval_ps=args.interval_ps, seed=args.seed, n_chains=args.chains,
                          output=cache(args, name)[0], resume=True, quiet=True)
    return traj, time.perf_counter() - started


def ends(wt, traj, msys) -> dict:
    """ESS, failures and ring closure of one temperature's samples: the clash fraction
    (rings > 5 σ off) and, for a molecule with rings, what the near misses cost
    (``ring_closure``: rings > 3 σ off, see ``metrics.ring_closure_cost``)."""
    row = {"ess": float(wt.ess), "n_failed": int(wt.n_failed),
           "clash_fraction": metrics.clash_fraction(wt.samples, msys, traj)}
    cost = metrics.ring_closure_cost(wt.samples, wt.log_weights, msys, traj, k=3.0)
    if cost is not None:
        row["ring_closure"] = cost
    return row


def trained_model(msys, energy, traj, folder: Path, args) -> tuple:
    """``(model, held-out overlap σ, wall s)``: the default flow trained on ``traj``, or the
    one saved in ``folder`` by an earlier run (training itself is checkpointed)."""
    model_path = folder / "model.pt"
    started = time.perf_counter()
    if model_path.exists():
        model = ot.TemperatureFlow.load(model_path, msys)
        sigma = model.metadata.get("overlap_sigma", float("nan"))
    else:
        settings = dict(model_settings(args))
        seed = settings.pop("model_seed", args.seed)
        kwargs = {key: settings.pop(key) for key in ("batch_size",) if key in settings}
        model = ot.TemperatureFlow.for_system(msys, traj, temperature_range=tuple(args.range),
                                              reference_temperature=args.t0, seed=seed,
                                              whiten=args.whiten, **settings)
        if args.steps is not None:
            kwargs["steps"] = args.steps
        history = ot.train(model, energy, traj, args.t0, seed=seed, quiet=True,
                           checkpoint=folder / "checkpoint.pt", resume=True, **kwargs)
        sigma = history.overlap_sigma
        model.save(model_path)
    return model, sigma, time.perf_counter() - started


def molecule(name: str, args) -> dict:
    """One molecule's row (every stage cached under ``ot.md.cache_dir()/molecules``)."""
    folder = cache(args, name)[1]
    msys = ot.systems.load(name)
    traj, md_s = boundary_md(name, args)
    with ot.OpenMMEnergy(msys) as energy:
        model, sigma, train_s = trained_model(msys, energy, traj, folder, args)
        temperatures = np.geomspace(args.range[0], args.range[1], args.n_temperatures)
        started = time.perf_counter()
        wts = [ot.sample(model, energy, temperature=float(t), n=args.n, seed=args.seed + k,
                         quiet=True) for k, t in enumerate(temperatures)]
        profile = ot.free_energy.profile_from_trajectories(wts, reference_temperature=args.t0,
                                                           seed=args.seed)
        sample_s = time.perf_counter() - started
        far_end = max(args.range, key=lambda t: abs(t - args.t0))  # the end away from T0
        far = int(np.argmin(np.abs(temperatures - far_end)))
        t0_index = int(np.argmin(np.abs(temperatures - args.t0)))
        row = {
            "system": name, "atoms": msys.n_atoms, "dof": int(model.coordinates.n_dof),
            "rings": len(metrics.ring_closing_bonds(msys)), "overlap_sigma": float(sigma),
            "md_s": md_s, "train_s": train_s, "sample_s": sample_s,
            "temperatures": temperatures.tolist(), "ess": profile.ess.tolist(),
            "delta_f_kT": profile.delta_f_kT.tolist(),
            "delta_f_kT_err": profile.delta_f_kT_err.tolist(),
            "delta_f_ti_kT": profile.delta_f_ti_kT.tolist(),
            "t0": ends(wts[t0_index], traj, msys), "far": ends(wts[far], traj, msys),
            "far_temperature": float(temperatures[far]),
        }
        row["ti_gap_far_kT"] = abs(row["delta_f_kT"][far] - row["delta_f_ti_kT"][far])
        if args.draws > 1:
            row["ess_draws"] = {key: [row["ess"][index]] + [
                float(ot.sample(model, energy, temperature=float(temperatures[index]), n=args.n,
                                seed=args.seed + 1000 * draw + index, quiet=True).ess)
                for draw in range(1, args.draws)] for key, index in (("t0", t0_index),
                                                                     ("far", far))}
        if args.refine:
            for key, index in (("t0_refined", t0_index), ("far_refined", far)):
                started = time.perf_counter()
                before = energy.n_evaluations
                wt = ot.sample(model, energy, temperature=float(temperatures[index]),
                               n=args.n, seed=args.seed + 100 + index, quiet=True, refine=True)
                row[key] = {**ends(wt, traj, msys), "lineage_ess": wt.lineage_ess,
                            "wall_s": time.perf_counter() - started,
                            "force_evaluations": int(energy.n_evaluations - before)}
    row["bar"] = {"ess_t0": row["t0"]["ess"] >= BAR["ess_t0"],
                  "ess_far": row["far"]["ess"] >= BAR["ess_far"],
                  "delta_f_ti": row["ti_gap_far_kT"] <= BAR["delta_f_ti_kT"]}
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| molecule | atoms | dof | rings | σ held-out | ESS T0 | ESS far | clash T0 | "
             "clash far | Δf_IS − Δf_TI far, abs. (kT) | MD s | train s | bar |",
             "|---" * 13 + "|"]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['atoms']} | {r['dof']} | {r['rings']} | "
            f"{r['overlap_sigma']:.2f} | {r['t0']['ess']:.2%} | {r['far']['ess']:.2%} | "
            f"{r['t0']['clash_fraction']:.2f} | {r['far']['clash_fraction']:.2f} | "
            f"{r['ti_gap_far_kT']:.2f} | {r['md_s']:.0f} | {r['train_s']:.0f} | "
            f"{'met' if all(r['bar'].values()) else 'missed'} |")
    refined = [r for r in rows if "t0_refined" in r]
    if refined:
        lines += ["", "| molecule | ESS T0 → refined (over lineages) | ESS far → refined (over "
                  "lineages) | clash T0 / far refined | SMC s T0 / far | force evaluations T0 / "
                  "far |", "|---" * 6 + "|"]
        for r in refined:
            t0, far = r["t0_refined"], r["far_refined"]
            lines.append(
                f"| {r['system']} | {r['t0']['ess']:.2%} → {t0['ess']:.1%} "
                f"({t0.get('lineage_ess', math.nan):.2%}) | {r['far']['ess']:.2%} → "
                f"{far['ess']:.1%} ({far.get('lineage_ess', math.nan):.2%}) | "
                f"{t0['clash_fraction']:.2f} / "
                f"{far['clash_fraction']:.2f} | {t0['wall_s']:.0f} / {far['wall_s']:.0f} | "
                f"{t0['force_evaluations']:.2g} / {far['force_evaluations']:.2g} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.systems.split(","):
        print(f"[molecules {time.strftime('%H:%M:%S')}] {name}", flush=True)
        if args.md_only:
            print(f"  boundary MD: {boundary_md(name.strip(), args)[1]:.0f} s", flush=True)
            continue
        rows.append(molecule(name.strip(), args))
        write_text_atomic(args.output, json.dumps(
            {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
             "bar": BAR, "rows": rows,
             "command": "OMP_NUM_THREADS=1 python benchmarks/molecules.py "
                        + shlex.join(sys.argv[1:] if argv is None else argv)},
            indent=1) + "\n")
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
