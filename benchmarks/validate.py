"""Validation of TRADE temperature transfer against a parallel-tempering reference.

On ``alanine-dipeptide-implicit`` (or ``--system alanine-dipeptide-vacuum``), for each
setting (``up``: boundary MD at T0 = 300 K, ``down``: T0 = 600 K):

1. Reference: parallel tempering (:func:`openmm_trade.md.parallel_tempering`, 8
   temperatures geometric 300-600 K, reloaded from the cache when
   ``benchmarks/reference.py`` has run; its two halves are compared on the φ/ψ state
   populations and on the Ramachandran KL, the reference's own noise floor) and MBAR
   Δf(T) (:func:`openmm_trade.mbar.mbar_reference`).
2. Boundary MD at T0 (:func:`openmm_trade.md.simulate`, cached, ``resume=True``).
3. Models, trained with :func:`openmm_trade.train` (checkpoint and model file in the cache,
   so a rerun resumes or reuses them):
   ``trade`` (defaults, or ``--steps``); baseline (a) ``nll_conditional`` (the same flow,
   ``trade_weight=0``); baseline (b) ``t0_reweighted`` (that NLL model evaluated at the
   T0 condition for every T: an unconditional flow at T0 reweighted to T).
4. At every reference temperature (cached per model and T): ESS, KL(reference ‖ model) of
   φ/ψ on 18 × 18 bins (:func:`openmm_trade.metrics.ramachandran_kl`), αL/C7ax population,
   Δf(T) − Δf_MBAR(T) in kT, energy Wasserstein-1 distance.
5. Baseline (c): plain MD at each T for the wall time of the TRADE pipeline, its effective
   samples estimated from the MD rate of the boundary run and the statistical
   inefficiencies of φ/ψ (of the PT at T, and of the boundary MD at T0).
   Baseline (d): the parallel tempering itself: KL of PT prefixes of increasing length
   against the full reference, and the energy evaluations / wall time it needed to reach
   the TRADE model's KL.
6. Cost in one currency: OpenMM energy evaluations (one per MD step) and wall time, for data
   generation, training and sampling separately.

Writes ``benchmarks/results/validate.json`` (``validate_quick.json`` with ``--quick``),
``docs/validation.md`` (``docs/validation_quick.md``) and one figure per setting,
``docs/validation_ramachandran_up.png`` and ``..._down.png`` (φ/ψ free-energy surfaces at
300, ~445, 600 K, TRADE vs PT, and the state populations against temperature;
``validation_quick_ramachandran_*.png`` with ``--quick``).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/validate.py --quick              # <= 10 minutes
    OMP_NUM_THREADS=1 python benchmarks/validate.py --settings up --steps 2000 --n-eval 10000
    OMP_NUM_THREADS=1 python benchmarks/validate.py                     # both settings (hours)
"""

from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transfer import FixedCondition  # baseline (b), shared with transfer.py (same folder)

import openmm_trade as ot
from openmm_trade.files import atomic_write_path, write_text_atomic
from openmm_trade.flow import TemperatureFlow
from openmm_trade.mbar import mbar_reference
from openmm_trade.timeseries import circular_statistical_inefficiency, statistical_inefficiency

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
STATE = "alphaL/C7ax"
BARS = {"ess": 0.05, "kl": 0.1, "delta_f_kT": 0.3}
QUICK = dict(frames=400, interval_ps=0.5, equilibration_ps=5.0, steps=120, n_eval=1500,
             hidden=32, n_blocks=2, temperature_indices=(0, 4, 7), settings="up,down",
             pt_iterations=40, pt_steps=100, n_bootstrap=50)


# ---------------------------------------------------------------------------- helpers
def log(message: str) -> None:
    print(f"[validate {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def angular_inefficiency(phi_psi) -> float:
    """Largest statistical inefficiency of φ and ψ (frames; each the slower of cos, sin)."""
    return max(circular_statistical_inefficiency(phi_psi[:, k]) for k in (0, 1))


def state_population(phi_psi, state=STATE) -> tuple[float, float, float]:
    """Population of ``state`` in correlated MD frames: (p, error, g of the indicator)."""
    return md_fraction(ot.free_energy.state_mask(state, ot.cv.RAMACHANDRAN_STATES[state],
                                                 phi_psi))


def md_fraction(mask) -> tuple[float, float, float]:
    """Fraction of correlated MD frames where ``mask`` holds: (p, error from the statistical
    inefficiency g of the indicator, g)."""
    mask = np.asarray(mask, dtype=bool)
    p = float(mask.mean())
    g = statistical_inefficiency(mask.astype(float))
    return p, float(np.sqrt(max(p * (1 - p), 1.0 / len(mask) ** 2) * g / len(mask))), g


# ---------------------------------------------------------------------------- arguments
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="alanine-dipeptide-implicit",
                        choices=ot.systems.available())
    parser.add_argument("--settings", default="up,down",
                        help="comma list of 'up' (T0 = lowest T) and 'down' (T0 = highest T)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: openmm_trade.train's default)")
    parser.add_argument("--n-eval", type=int, default=10_000, help="samples per temperature")
    parser.add_argument("--frames", type=int, default=6000, help="boundary MD frames")
    parser.add_argument("--interval-ps", type=float, default=0.5)
    parser.add_argument("--equilibration-ps", type=float, default=20.0)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--n-blocks", type=int, default=None)
    parser.add_argument("--temperature-indices", default=None,
                        help="comma list of indices into the reference temperatures to "
                             "evaluate at (default: all)")
    parser.add_argument("--n-bootstrap", type=int, default=200)
    parser.add_argument("--pt-iterations", type=int, default=2000,
                        help="PT iterations (reused from the cache when present)")
    parser.add_argument("--pt-steps", type=int, default=500)
    parser.add_argument("--reference-summary", type=Path,
                        default=RESULTS / "reference_summary.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-figure", action="store_true", help="skip the docs figure")
    parser.add_argument("--quick", action="store_true", help="<= 10 minutes pipeline check")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        for key, value in QUICK.items():
            if key == "temperature_indices":
                value = ",".join(map(str, value))
            if key == "steps" and args.steps is not None:
                continue
            setattr(args, key, value)
    suffix = "_quick" if args.quick else ""
    args.output = args.output or RESULTS / f"validate{suffix}.json"
    args.markdown = args.markdown or DOCS / f"validation{suffix}.md"
    args.figure = args.figure or DOCS / f"validation{suffix}_ramachandran.png"
    return args


def cache_root(args) -> Path:
    path = ot.md.cache_dir() / "validate" / args.system
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------- reference
def load_reference(msys, args) -> dict:
    """PT reference: trajectories, φ/ψ, energies per T, MBAR, halves check, cost."""
    summary = read_json(args.reference_summary)
    pt = None
    if (summary and summary.get("system") == args.system and not summary.get("quick")
            and Path(summary.get("storage", "")).exists()):
        log(f"reloading PT reference {summary['storage']}")
        pt = ot.md.parallel_tempering(
            msys, summary["temperatures_K"], n_iterations=summary["n_iterations"],
            steps_per_iteration=summary["steps_per_iteration"],
            storage=Path(summary["storage"]), timestep_ps=summary["timestep_ps"],
            seed=summary["seed"], quiet=True)
        wall_total = float(summary["wall_time_s"])
        source = str(args.reference_summary)
    else:
        temperatures = np.geomspace(300.0, 600.0, 8)
        log(f"no cached PT reference for {args.system}: running {args.pt_iterations} "
            f"iterations x {args.pt_steps} steps")
        storage = cache_root(args) / f"pt-{args.pt_iterations}x{args.pt_steps}.nc"
        done_before = stored_iterations(storage)
        started = time.perf_counter()
        pt = ot.md.parallel_tempering(msys, temperatures, n_iterations=args.pt_iterations,
                                      steps_per_iteration=args.pt_steps, storage=storage,
                                      seed=2024, quiet=True)
        meta_path = storage.with_suffix(".json")
        meta = read_json(meta_path)
        if meta is None:
            # A resumed run is timed on the iterations this call ran, scaled to the total.
            ran = max(args.pt_iterations - done_before, 1)
            meta = {"wall_time_s": (time.perf_counter() - started) * args.pt_iterations / ran,
                    "timed_iterations": [done_before, args.pt_iterations]}
            write_json(meta_path, meta)
        wall_total = float(meta["wall_time_s"])
        source = str(storage)
    table = mbar_reference(pt)
    ref = {"pt": pt, "mbar": table, "source": source, "wall_time_s": wall_total,
           "per_temperature": []}
    for k, t in enumerate(pt.temperatures):
        start = int(table.discarded[k])
        phi_psi = ot.cv.evaluate(ot.cv.ramachandran, pt.trajectories[k])[start:]
        energies = np.asarray(pt.energies[k])[start:]
        g = angular_inefficiency(phi_psi)
        half = len(phi_psi) // 2
        halves = [phi_psi[:half], phi_psi[half:]]
        pops = [state_population(h) for h in halves]
        p, err, g_state = state_population(phi_psi)
        z = (pops[0][0] - pops[1][0]) / max(np.hypot(pops[0][1], pops[1][1]), 1e-12)
        # The same KL as for the models (metrics.ramachandran_kl, default n_eff = number
        # of frames); and with n_eff = frames / g(φ,ψ) (independent samples) for comparison.
        kl_halves = ot.metrics.ramachandran_kl(halves[0], halves[1])
        kl_halves_rev = ot.metrics.ramachandran_kl(halves[1], halves[0])
        kl_halves_g = ot.metrics.ramachandran_kl(halves[0], halves[1],
                                                 n_eff=len(halves[1]) / g)
        ref["per_temperature"].append({
            "temperature": float(t), "discarded": start, "n_frames": len(phi_psi),
            "g_phi_psi": g, "g_state": g_state, "population": p, "population_err": err,
            "halves_population": [h[0] for h in pops],
            "halves_population_err": [h[1] for h in pops], "halves_z": float(z),
            "halves_agree": bool(abs(z) <= 2.0),
            "kl_halves": float(kl_halves), "kl_halves_reverse": float(kl_halves_rev),
            "kl_halves_neff_frames_over_g": float(kl_halves_g),
            "kl_noise_floor": float(max(kl_halves, kl_halves_rev)),
            "phi_psi": phi_psi, "energies": energies,
        })
    return ref


def stored_iterations(storage: Path) -> int:
    """Iterations already in an openmmtools storage file (0 when there is none)."""
    if not storage.exists():
        return 0
    import netCDF4

    with netCDF4.Dataset(storage) as data:
        return int(data.variables["last_iteration"][0])


def reference_json(ref) -> dict:
    pt = ref["pt"]
    return {
        "source": ref["source"], "storage": str(pt.storage),
        "temperatures": pt.temperatures.tolist(), "n_iterations": pt.n_iterations,
        "steps_per_iteration": pt.steps_per_iteration, "timestep_ps": pt.timestep_ps,
        "energy_evaluations": int(pt.n_energy_evaluations), "wall_time_s": ref["wall_time_s"],
        "acceptance_rates": pt.acceptance_rates.tolist(),
        "mbar": ref["mbar"].as_dict(),
        "halves_check": ("two halves of the run (after MBAR's equilibration cut) compared on "
                         f"the {STATE} population (error from the indicator's statistical "
                         "inefficiency, agree when |z| <= 2) and by the Ramachandran KL "
                         "between them (n_eff = frames / g(φ,ψ)), the noise floor"),
        "per_temperature": [{k: v for k, v in row.items() if k not in ("phi_psi", "energies")}
                            for row in ref["per_temperature"]],
    }


# ---------------------------------------------------------------------------- boundary MD
def boundary(msys, t0: float, args) -> tuple:
    name = (f"boundary-{t0:g}K-{args.frames}x{args.interval_ps:g}ps-"
            f"eq{args.equilibration_ps:g}-seed{args.seed}")
    path = cache_root(args) / f"{name}.h5"
    meta_path = cache_root(args) / f"{name}.json"
    meta = read_json(meta_path) or {"wall_time_s": 0.0}
    if meta.get("complete"):
        log(f"boundary MD at {t0:g} K from cache {path.name}")
    else:
        log(f"boundary MD at {t0:g} K: {args.frames} frames x {args.interval_ps} ps")
    started = time.perf_counter()
    traj = ot.md.simulate(msys, t0, n_frames=args.frames, interval_ps=args.interval_ps,
                          seed=args.seed + 1, output=path, resume=True, quiet=True,
                          equilibration_ps=args.equilibration_ps)
    if not meta.get("complete"):
        timestep = ot.md.default_timestep_ps(msys)
        steps = round((args.frames * args.interval_ps + args.equilibration_ps) / timestep)
        meta = {"complete": True, "wall_time_s": meta["wall_time_s"]
                + time.perf_counter() - started, "md_steps": int(steps),
                "timestep_ps": timestep, "path": str(path)}
        phi_psi = ot.cv.evaluate(ot.cv.ramachandran, traj)
        meta["g_phi_psi_frames"] = angular_inefficiency(phi_psi)
        meta["population"] = state_population(phi_psi)[:2]
        write_json(meta_path, meta)
    meta["steps_per_second"] = meta["md_steps"] / max(meta["wall_time_s"], 1e-9)
    return traj, meta


# ---------------------------------------------------------------------------- models
def get_model(name: str, msys, energy, traj, t0, t_range, args) -> tuple:
    weight = {"trade": 1.0, "nll_conditional": 0.0}[name]
    arch = {k: v for k, v in (("hidden", args.hidden), ("n_blocks", args.n_blocks))
            if v is not None}
    steps = args.steps
    tag = f"{name}-T0{t0:g}-steps{steps or 'default'}-" + "-".join(
        f"{k}{v}" for k, v in sorted(arch.items())) + f"-seed{args.seed}-f{args.frames}"
    folder = cache_root(args) / "models" / tag
    folder.mkdir(parents=True, exist_ok=True)
    model_path, meta_path = folder / "model.pt", folder / "model.json"
    meta = read_json(meta_path)
    if model_path.exists() and meta:
        log(f"model {tag} from cache")
        return TemperatureFlow.load(model_path, msys), meta
    model = TemperatureFlow.for_system(msys, traj, temperature_range=t_range,
                                       reference_temperature=t0, seed=args.seed, **arch)
    log(f"training {tag}")
    kwargs = {} if steps is None else {"steps": steps}
    history = ot.train(model, energy, traj, t0, trade_weight=weight, seed=args.seed,
                       checkpoint=folder / "checkpoint.pt", checkpoint_every=100, resume=True,
                       history_csv=folder / "history.csv", quiet=True, **kwargs)
    last = history.last
    meta = {"tag": tag, "trade_weight": weight, "steps": len(history),
            "wall_time_s": float(last.get("wall_time", np.nan)),
            "energy_evaluations": int(last.get("energy_evaluations", 0)),
            "skipped_steps": int(history.skipped_steps), "architecture": arch or "default",
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
            "final": {k: float(v) for k, v in last.items()
                      if isinstance(v, (int, float)) and k.startswith(("ess_", "loss", "resid"))}}
    model.save(model_path)
    write_json(meta_path, meta)
    log(f"trained {tag}: {meta['steps']} steps, {meta['wall_time_s']:.0f} s, "
        f"{meta['energy_evaluations']} energy evaluations")
    return model, meta


def add_delta_f(rows: dict, wts: dict, t0: float, ref, args) -> None:
    """Fill ``rows[k]`` with Δf(T_k) (kT), its error and its difference from MBAR, from the
    weighted trajectories ``wts[k]`` (T0 among them)."""
    profile = ot.free_energy.profile_from_trajectories(
        list(wts.values()), reference_temperature=t0, n_bootstrap=args.n_bootstrap,
        seed=args.seed)
    cmp = ot.free_energy.compare_with_mbar(profile, ref["mbar"])
    for i, k in enumerate(wts):
        rows[k]["delta_f_kT"] = float(profile.delta_f_kT[i])
        rows[k]["delta_f_kT_err"] = float(profile.delta_f_kT_err[i])
        rows[k]["delta_f_minus_mbar_kT"] = float(cmp.difference[i])
        rows[k]["delta_f_minus_mbar_err_kT"] = float(cmp.error[i])


def evaluate_model(name, model, energy, ref, t0, indices, folder, args) -> dict:
    """Per-temperature metrics (cached as JSON) and the weighted samples (cached as h5)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, wts = {}, {}
    for k in indices:
        r = ref["per_temperature"][k]
        t = r["temperature"]
        h5, js = folder / f"{t:.2f}K-n{args.n_eval}.h5", folder / f"{t:.2f}K-n{args.n_eval}.json"
        row = read_json(js)
        if row is not None and h5.exists():
            wts[k] = wt = ot.WeightedTrajectory.load(h5)
            if "kl_perfect_model_same_ess" not in row:  # rows cached by an older version
                row["kl_perfect_model_same_ess"] = float(ot.metrics.ramachandran_kl(
                    r["phi_psi"], r["phi_psi"], n_eff=max(float(wt.ess * len(wt)), 1e-9)))
                write_json(js, row)
            rows[k] = row
            continue
        before, started = energy.n_evaluations, time.perf_counter()
        wt = ot.sample(model, energy, temperature=t, n=args.n_eval, seed=args.seed + 17 + k,
                       quiet=True)
        wall = time.perf_counter() - started
        evals = energy.n_evaluations - before
        phi_psi = ot.cv.evaluate(ot.cv.ramachandran, wt.trajectory)
        weights = wt.weights
        pops = ot.free_energy.populations(wt, n_bootstrap=args.n_bootstrap, seed=args.seed)
        row = {
            "temperature": t, "n": len(wt), "ess": float(wt.ess),
            "ess_count": float(wt.ess * len(wt)), "n_failed": int(wt.n_failed),
            "kl": float(ot.metrics.ramachandran_kl(r["phi_psi"], phi_psi, weights)),
            # KL of a perfect model with this ESS: the reference against itself, smoothed
            # with n_eff = ESS count (the pseudocount's bias alone).
            "kl_perfect_model_same_ess": float(ot.metrics.ramachandran_kl(
                r["phi_psi"], r["phi_psi"], n_eff=max(float(wt.ess * len(wt)), 1e-9))),
            "population": pops[STATE][0], "population_err": pops[STATE][1],
            "energy_w1_kJmol": float(ot.metrics.energy_wasserstein(
                r["energies"], wt.energies, weights)),
            "sampling_wall_time_s": wall, "sampling_energy_evaluations": int(evals),
        }
        wt.save(h5)
        write_json(js, row)
        rows[k], wts[k] = row, wt
        log(f"  {name} {t:.1f} K: ESS {row['ess']:.3f} KL {row['kl']:.3f} "
            f"{STATE} {row['population']:.3f} (ref {r['population']:.3f}) {wall:.0f} s")
    # Δf(T) - Δf_MBAR(T) with all temperatures of this model (T0 among them).
    add_delta_f(rows, {k: wts[k] for k in indices}, t0, ref, args)
    return {"per_temperature": [rows[k] for k in indices], "wts": wts}


# ---------------------------------------------------------------------------- baselines
def pt_prefix_cost(ref, k: int, target_kl: float) -> dict:
    """Baseline (d): the shortest PT prefix whose KL to the full reference at T_k is at most
    ``target_kl``; its energy evaluations and wall time (all replicas)."""
    pt, r = ref["pt"], ref["per_temperature"][k]
    phi_psi, g = r["phi_psi"], r["g_phi_psi"]
    n = len(phi_psi)
    lengths = sorted({int(x) for x in np.unique(np.geomspace(10, n, 14).astype(int))} | {n})
    curve = []
    reached = None
    for length in lengths:
        kl = float(ot.metrics.ramachandran_kl(phi_psi, phi_psi[:length],
                                              n_eff=max(length / g, 1.0)))
        iterations = length + r["discarded"]
        curve.append({"iterations": iterations, "kl": kl})
        if reached is None and kl <= target_kl:
            reached = iterations
    per_iteration_evals = len(pt.temperatures) * pt.steps_per_iteration
    per_iteration_wall = ref["wall_time_s"] / pt.n_iterations
    out = {"curve": curve, "target_kl": target_kl, "iterations_to_target": reached}
    if reached is not None:
        out["energy_evaluations"] = int(reached * per_iteration_evals)
        out["wall_time_s"] = float(reached * per_iteration_wall)
    return out


def plain_md(ref, k: int, md_meta: dict, wall_s: float, t0: float) -> dict:
    """Baseline (c): effective φ/ψ samples of plain MD at T_k in ``wall_s`` seconds.

    MD steps = rate of the boundary run x wall time; independent samples = simulated time /
    (g(φ,ψ) x frame interval) with g from the PT at T_k (replica exchange decorrelates faster
    than plain MD, so this is an upper bound) and, at T0, also from the boundary MD itself.
    """
    pt, r = ref["pt"], ref["per_temperature"][k]
    steps = md_meta["steps_per_second"] * wall_s
    frame_ps = pt.steps_per_iteration * pt.timestep_ps
    simulated_ps = steps * md_meta["timestep_ps"]
    out = {"wall_time_s": wall_s, "md_steps": int(steps), "simulated_ps": simulated_ps,
           "n_eff_pt_g": simulated_ps / (r["g_phi_psi"] * frame_ps),
           "n_eff_pt_g_per_T": simulated_ps / (r["g_phi_psi"] * frame_ps) / len(pt.temperatures)}
    if np.isclose(r["temperature"], t0):
        g_md_ps = md_meta["g_phi_psi_frames"] * md_meta.get("interval_ps", 0.5)
        out["n_eff_md_g"] = simulated_ps / g_md_ps
    return out


# ---------------------------------------------------------------------------- a setting
def run_setting(direction, msys, energy, ref, indices, args) -> tuple[dict, dict]:
    temps = ref["pt"].temperatures
    t0 = float(temps[0] if direction == "up" else temps[-1])
    k0 = int(np.argmin(np.abs(temps - t0)))
    if k0 not in indices:
        indices = sorted(set(indices) | {k0})
    t_range = (float(temps[0]), float(temps[-1]))
    traj, md_meta = boundary(msys, t0, args)
    md_meta["interval_ps"] = args.interval_ps
    models, trained = {}, {}
    for name in ("trade", "nll_conditional"):
        trained[name], models[name] = get_model(name, msys, energy, traj, t0, t_range, args)
    trained["t0_reweighted"] = FixedCondition(trained["nll_conditional"], t0)
    models["t0_reweighted"] = dict(models["nll_conditional"])
    wts = {}
    for name, model in trained.items():
        folder = (cache_root(args) / "evaluations" / f"{direction}-{models[name]['tag']}"
                  / name)
        result = evaluate_model(name, model, energy, ref, t0, indices, folder, args)
        models[name]["per_temperature"] = result["per_temperature"]
        wts[name] = result["wts"]
        sampling_wall = sum(r["sampling_wall_time_s"] for r in result["per_temperature"])
        sampling_evals = sum(r["sampling_energy_evaluations"] for r in result["per_temperature"])
        models[name]["cost"] = {
            "data_wall_time_s": md_meta["wall_time_s"],
            "data_energy_evaluations": md_meta["md_steps"],
            "training_wall_time_s": models[name]["wall_time_s"],
            "training_energy_evaluations": models[name]["energy_evaluations"],
            "sampling_wall_time_s": sampling_wall, "sampling_energy_evaluations": sampling_evals,
        }
        c = models[name]["cost"]
        c["total_wall_time_s"] = (c["data_wall_time_s"] + c["training_wall_time_s"]
                                  + c["sampling_wall_time_s"])
        c["total_energy_evaluations"] = (c["data_energy_evaluations"]
                                         + c["training_energy_evaluations"]
                                         + c["sampling_energy_evaluations"])
    trade_rows = {r["temperature"]: r for r in models["trade"]["per_temperature"]}
    total_wall = models["trade"]["cost"]["total_wall_time_s"]
    baselines = {"plain_md": [], "parallel_tempering": []}
    for k in indices:
        t = float(temps[k])
        baselines["plain_md"].append(
            {"temperature": t, **plain_md(ref, k, md_meta, total_wall, t0)})
        baselines["parallel_tempering"].append(
            {"temperature": t, **pt_prefix_cost(ref, k, trade_rows[t]["kl"])})
    far = float(temps[-1] if direction == "up" else temps[0])
    far_rows = {name: next(r for r in m["per_temperature"] if np.isclose(r["temperature"], far))
                for name, m in models.items()}
    bars = {
        "ess_ge_5pct_all_T": all(r["ess"] >= BARS["ess"] for r in trade_rows.values()),
        "kl_le_0.1_all_T": all(r["kl"] <= BARS["kl"] for r in trade_rows.values()),
        "abs_delta_f_le_0.3kT_all_T": all(abs(r["delta_f_minus_mbar_kT"]) <= BARS["delta_f_kT"]
                                          for r in trade_rows.values()),
        "farthest_T": far,
        "trade_kl_below_a_and_b_at_farthest_T": all(
            far_rows["trade"]["kl"] < far_rows[b]["kl"] for b in ("nll_conditional",
                                                                   "t0_reweighted")),
        "trade_ess_above_a_and_b_at_farthest_T": all(
            far_rows["trade"]["ess"] > far_rows[b]["ess"] for b in ("nll_conditional",
                                                                    "t0_reweighted")),
    }
    setting = {"direction": direction, "boundary_temperature": t0,
               "boundary_md": {k: v for k, v in md_meta.items()}, "models": models,
               "baselines": baselines, "bars": bars}
    return setting, wts


# ---------------------------------------------------------------------------- outputs
def machine() -> str:
    cores = os.cpu_count()
    gpu = torch.cuda.is_available()
    return (f"{socket.gethostname()}: {cores} CPU cores (shared), "
            f"{'GPU ' + torch.cuda.get_device_name(0) if gpu else 'no GPU'}, "
            f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, Python {_platform.python_version()}")


def markdown(results: dict) -> str:
    lines = [f"# Validation of TRADE temperature transfer: {results['system']}", "",
             f"Command: `{results['command']}`  ",
             f"Machine: {results['machine']}  ",
             f"Date: {results['date']}; total wall time of this call "
             f"{results['wall_time_s']:.0f} s (stages reused from the cache are counted "
             "below with the cost recorded when they ran)"
             f"{' (quick mode: pipeline check only)' if results['quick'] else ''}.",
             ""]
    ref = results["reference"]
    lines += ["## Reference (parallel tempering)", "",
              f"{len(ref['temperatures'])} temperatures {ref['temperatures'][0]:.0f}-"
              f"{ref['temperatures'][-1]:.0f} K, {ref['n_iterations']} iterations x "
              f"{ref['steps_per_iteration']} steps x {ref['timestep_ps'] * 1000:g} fs; "
              f"{ref['energy_evaluations']:.3g} energy evaluations, "
              f"{ref['wall_time_s']:.0f} s wall. Two halves of the run:", "",
              f"| T (K) | g(φ,ψ) | {STATE} 1st half | 2nd half | z | agree | KL(half1‖half2) |",
              "|---:|---:|---:|---:|---:|:---:|---:|"]
    for r in ref["per_temperature"]:
        (p1, p2), (e1, e2) = r["halves_population"], r["halves_population_err"]
        lines.append(f"| {r['temperature']:.1f} | {r['g_phi_psi']:.1f} | {p1:.3f} ± {e1:.3f} | "
                     f"{p2:.3f} ± {e2:.3f} | {r['halves_z']:+.1f} | "
                     f"{'yes' if r['halves_agree'] else '**no**'} | {r['kl_halves']:.3f} |")
    lines.append("")
    names = {"trade": "TRADE", "nll_conditional": "(a) NLL cond.",
             "t0_reweighted": "(b) T0 reweighted"}
    for setting in results["settings"].values():
        t0 = setting["boundary_temperature"]
        md = setting["boundary_md"]
        ref_t0 = min(ref["per_temperature"], key=lambda r: abs(r["temperature"] - t0))
        lines += [f"## T0 = {t0:g} K (transfer {setting['direction']})", "",
                  f"Boundary MD: {md['md_steps']} steps ({md['wall_time_s']:.0f} s), "
                  f"g(φ,ψ) = {md['g_phi_psi_frames']:.1f} frames, {STATE} population "
                  f"{md['population'][0]:.3f} ± {md['population'][1]:.3f} (PT at T0: "
                  f"{ref_t0['population']:.3f} ± {ref_t0['population_err']:.3f}); a state "
                  "missing from the boundary data can only come from the transfer.", "",
                  "| model | T (K) | ESS | KL (nats) | KL of a perfect model at this ESS "
                  "| PT noise floor | "
                  f"{STATE} model | {STATE} PT | Δf − Δf_MBAR (kT) | W1(U) (kJ/mol) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        ref_rows = {round(r["temperature"], 2): r for r in ref["per_temperature"]}
        for name, m in setting["models"].items():
            for r in m["per_temperature"]:
                rr = ref_rows[round(r["temperature"], 2)]
                ess = f"{r['ess']:.3f}" + ("" if r["ess"] >= BARS["ess"] else " ✗")
                kl = f"{r['kl']:.3f}" + ("" if r["kl"] <= BARS["kl"] else " ✗")
                df = r["delta_f_minus_mbar_kT"]
                dfs = (f"{df:+.3f} ± {r['delta_f_minus_mbar_err_kT']:.3f}"
                       + ("" if abs(df) <= BARS["delta_f_kT"] else " ✗"))
                lines.append(
                    f"| {names[name]} | {r['temperature']:.1f} | {ess} | {kl} | "
                    f"{r['kl_perfect_model_same_ess']:.3f} | "
                    f"{rr['kl_noise_floor']:.3f} | {r['population']:.3f} ± "
                    f"{r['population_err']:.3f} | {rr['population']:.3f} ± "
                    f"{rr['population_err']:.3f} | {dfs} | {r['energy_w1_kJmol']:.2f} |")
        lines += ["", "✗: misses the bar (ESS ≥ 5%, KL ≤ 0.1 nats, |Δf − Δf_MBAR| ≤ 0.3 kT). "
                  "KL: reference = full PT at T (after MBAR's equilibration cut), model "
                  "histogram smoothed by 0.5 count per bin counted with the ESS; the column "
                  "after it is the KL a perfect model would get with the same ESS (smoothing "
                  "bias alone); PT noise floor = the same KL between the two halves of the PT "
                  "(larger of both orders, n_eff = frames).",
                  "", "Cost (energy evaluations = OpenMM energies; one per MD step):", "",
                  "| model | data (evals / s) | training (evals / s) | sampling (evals / s) | "
                  "total (evals / s) |", "|---|---:|---:|---:|---:|"]
        for name, m in setting["models"].items():
            c = m["cost"]
            lines.append(
                f"| {names[name]} | {c['data_energy_evaluations']:.3g} / "
                f"{c['data_wall_time_s']:.0f} | {c['training_energy_evaluations']:.3g} / "
                f"{c['training_wall_time_s']:.0f} | {c['sampling_energy_evaluations']:.3g} / "
                f"{c['sampling_wall_time_s']:.0f} | {c['total_energy_evaluations']:.3g} / "
                f"{c['total_wall_time_s']:.0f} |")
        lines += ["", "(a) and (b) share one training run (the same NLL model); training "
                  "(a)+(b) is counted once in practice.", "",
                  "Baselines (c) plain MD for the TRADE pipeline's wall time and (d) PT:", "",
                  "| T (K) | TRADE ESS count | (c) MD n_eff, all time at T | (c) per T (time/K) "
                  "| (d) PT iterations to TRADE's KL | (d) evals | (d) wall s |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        trade = {round(r["temperature"], 2): r
                 for r in setting["models"]["trade"]["per_temperature"]}
        for c, d in zip(setting["baselines"]["plain_md"],
                        setting["baselines"]["parallel_tempering"], strict=True):
            t = round(c["temperature"], 2)
            it = d["iterations_to_target"]
            extra = f" (boundary-MD g: {c['n_eff_md_g']:.0f})" if "n_eff_md_g" in c else ""
            lines.append(
                f"| {c['temperature']:.1f} | {trade[t]['ess_count']:.0f} | "
                f"{c['n_eff_pt_g']:.0f}{extra} | {c['n_eff_pt_g_per_T']:.0f} | "
                f"{it if it is not None else 'not reached'} | "
                f"{d.get('energy_evaluations', float('nan')):.3g} | "
                f"{d.get('wall_time_s', float('nan')):.0f} |")
        lines += ["", "(c) uses the PT's statistical inefficiency of φ/ψ at T (replica exchange "
                  "decorrelates faster than plain MD, so it is an upper bound for MD) and the "
                  "MD rate of the boundary run; (d) compares PT prefixes with the full run they "
                  "are part of (optimistic for PT at long prefixes); 'not reached': even the "
                  "full run scored against itself (same histogram smoothing, its own n_eff) has "
                  "a larger KL than TRADE's, i.e. this reference cannot resolve TRADE's KL.",
                  ""]
        b = setting["bars"]
        lines += ["Minimum bars (TRADE):", "",
                  f"* ESS ≥ 5% at every T: {'pass' if b['ess_ge_5pct_all_T'] else '**FAIL**'}",
                  f"* KL ≤ 0.1 nats at every T: {'pass' if b['kl_le_0.1_all_T'] else '**FAIL**'}",
                  f"* |Δf − Δf_MBAR| ≤ 0.3 kT at every T: "
                  f"{'pass' if b['abs_delta_f_le_0.3kT_all_T'] else '**FAIL**'}",
                  f"* TRADE KL below (a) and (b) at {b['farthest_T']:.0f} K: "
                  f"{'pass' if b['trade_kl_below_a_and_b_at_farthest_T'] else '**FAIL**'}",
                  f"* TRADE ESS above (a) and (b) at {b['farthest_T']:.0f} K: "
                  f"{'pass' if b['trade_ess_above_a_and_b_at_farthest_T'] else '**FAIL**'}",
                  ""]
    for direction, path in results.get("figures", {}).items():
        t0 = results["settings"][direction]["boundary_temperature"]
        lines += [f"Figure, T0 = {t0:g} K: `{Path(path).name}` (TRADE vs PT).", ""]
    return "\n".join(lines)


def figure_path(args, direction: str) -> Path:
    """``docs/validation_ramachandran_<direction>.png`` (``--figure`` gives the stem)."""
    return args.figure.with_name(f"{args.figure.stem}_{direction}{args.figure.suffix}")


def figure(setting, wts, ref, indices, args, path: Path) -> Path | None:
    """φ/ψ surfaces at 3 temperatures (TRADE above PT) and populations vs T."""
    import matplotlib.image as mpimg
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    temps = ref["pt"].temperatures
    wanted = [int(np.argmin(np.abs(temps - t))) for t in (300.0, 445.0, 600.0)]
    wanted = [k for k in wanted if k in wts["trade"]]
    if not wanted:
        return None
    model_fes = [ot.free_energy.surface(wts["trade"][k], ot.cv.ramachandran, bins=36,
                                        n_bootstrap=10, seed=args.seed) for k in wanted]
    ref_fes = [ot.free_energy.surface(ref["pt"].trajectories[k][ref["per_temperature"][k]
                                                                ["discarded"]:],
                                      ot.cv.ramachandran, bins=36, n_bootstrap=10,
                                      temperature=float(temps[k]), seed=args.seed)
               for k in wanted]
    tmp = path.parent / ".validate_fig"
    tmp.mkdir(parents=True, exist_ok=True)
    panels = ot.plots.ramachandran_panels(model_fes, tmp / "panels.png", reference=ref_fes)
    model_pops = ot.free_energy.populations_vs_temperature(
        [wts["trade"][k] for k in sorted(wts["trade"])], n_bootstrap=args.n_bootstrap,
        seed=args.seed)
    ref_pops = ot.free_energy.populations_vs_temperature(
        [ref["pt"].trajectories[k][ref["per_temperature"][k]["discarded"]:]
         for k in range(len(temps))], temperatures=temps.tolist(),
        n_bootstrap=args.n_bootstrap, seed=args.seed)
    pops = ot.plots.populations_vs_temperature(model_pops, tmp / "pops.png", reference=ref_pops)
    images = [mpimg.imread(panels), mpimg.imread(pops)]
    widths = [im.shape[1] for im in images]
    fig = Figure(figsize=(sum(widths) / 120, max(im.shape[0] for im in images) / 120))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": widths})
    for ax, im in zip(axes, images, strict=True):
        ax.imshow(im)
        ax.axis("off")
    fig.suptitle(f"{args.system}: TRADE (T0 = {setting['boundary_temperature']:g} K, top) "
                 "vs parallel tempering (bottom); populations: TRADE (filled) vs PT (open)",
                 fontsize=9)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.93, wspace=0.01)
    with atomic_write_path(path) as tmp_file:
        fig.savefig(tmp_file, dpi=120, format="png")
    for p in (panels, pops):
        p.unlink(missing_ok=True)
    tmp.rmdir()
    return path


# ---------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    msys = ot.systems.load(args.system)
    ref = load_reference(msys, args)
    n_t = len(ref["pt"].temperatures)
    indices = (list(range(n_t)) if args.temperature_indices is None
               else sorted({int(i) for i in str(args.temperature_indices).split(",")}))
    command = "OMP_NUM_THREADS=1 python benchmarks/validate.py " + " ".join(args.argv)
    results = {"system": args.system, "quick": args.quick, "command": command.strip(),
               "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "settings_args": {k: (str(v) if isinstance(v, Path) else v)
                                 for k, v in vars(args).items() if k != "argv"},
               "bars": BARS, "reference": reference_json(ref), "settings": {}}
    with ot.OpenMMEnergy(msys, platform="CPU") as energy:
        for direction in args.settings.split(","):
            setting, wts = run_setting(direction, msys, energy, ref, indices, args)
            results["settings"][direction] = setting
            results["wall_time_s"] = time.perf_counter() - started
            write_json(args.output, results)  # partial results after each setting
            if not args.no_figure:
                log(f"figure ({direction})")
                path = figure(setting, wts, ref, indices, args, figure_path(args, direction))
                if path is not None:
                    results.setdefault("figures", {})[direction] = str(path)
            del wts
    results["wall_time_s"] = time.perf_counter() - started
    write_json(args.output, results)
    text = markdown(results)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.markdown, text + "\n")
    print(text)
    log(f"wrote {args.output}, {args.markdown}"
        + "".join(f", {path}" for path in results.get("figures", {}).values()))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
