"""SMC refinement of the default model against parallel tempering (issue 14).

On ``alanine-dipeptide-implicit`` (``--system`` to change) with the default pipeline's
model (boundary MD at the top of the range, 600 K, as the pipeline now defaults to;
``TemperatureFlow.for_system`` + ``ot.train``, both cached and
shared with ``benchmarks/validate.py``) and its parallel-tempering reference (8
temperatures geometric over 300-600 K, the halves check and MBAR Δf from ``validate.py``'s
``load_reference``), at every reference temperature:

* ``refined``: ``ot.sample(..., refine=ot.SMC(...))``: ESS, distinct ancestors, φ/ψ KL on
  18 × 18 bins against the reference beside the reference's own floor (KL between its two
  halves), the αL/C7ax population, Δf − Δf_MBAR (kT), ln Z error, force evaluations, wall
  time, and the per-level acceptance;
* ``plain``: importance sampling with the same model and the same number of force
  evaluations as the refinement spent at that temperature;
* ``pt``: the shortest prefix of the parallel-tempering run that reaches the refined KL,
  in energy evaluations (all replicas) and wall time.

With ``--cv`` also the amortisation case: C_v(T) and ⟨U⟩(T) on a grid of 31 temperatures
over 300-600 K from the model plus refinement (force evaluations, wall time), beside ⟨U⟩
from MBAR at the reference temperatures.

Every per-temperature result is cached (``$OPENMM_TRADE_CACHE/validate/<system>/refine``,
HDF5 + JSON), so an interrupted run resumes. Writes ``benchmarks/results/refine.json``
(``refine_quick.json`` with ``--quick``).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/refine.py --quick     # minutes: checks the pipeline
    OMP_NUM_THREADS=1 python benchmarks/refine.py             # 10^4 samples at 8 T (hours)
    OMP_NUM_THREADS=1 python benchmarks/refine.py --cv --kernel hmc
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from validate import (  # the reference, model and cache of validate.py (same folder)
    QUICK,
    RESULTS,
    STATE,
    add_delta_f,
    boundary,
    cache_root,
    get_model,
    load_reference,
    log,
    pt_prefix_cost,
    read_json,
    reference_json,
    write_json,
)

import openmm_trade as ot

BAR = {"kl": 0.06, "population_rel": 0.25, "delta_f_kT": 0.1, "force_evaluations": 3e5}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="alanine-dipeptide-implicit",
                        choices=ot.systems.available())
    parser.add_argument("--n", type=int, default=10_000, help="particles per temperature")
    parser.add_argument("--kernel", default="mala", choices=("mala", "hmc"))
    parser.add_argument("--mcmc-steps", type=int, default=2)
    parser.add_argument("--n-leapfrog", type=int, default=5)
    parser.add_argument("--cess-target", type=float, default=0.9)
    parser.add_argument("--max-levels", type=int, default=50)
    parser.add_argument("--cv", action="store_true",
                        help="also C_v(T) on 31 temperatures from model + refinement")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--frames", type=int, default=15_000, help="boundary MD frames")
    parser.add_argument("--interval-ps", type=float, default=0.5)
    parser.add_argument("--equilibration-ps", type=float, default=20.0)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--n-blocks", type=int, default=None)
    parser.add_argument("--pt-iterations", type=int, default=2000)
    parser.add_argument("--pt-steps", type=int, default=500)
    parser.add_argument("--reference-summary", type=Path,
                        default=RESULTS / "reference_summary.json")
    parser.add_argument("--n-bootstrap", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="minutes: pipeline check")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        for key in ("frames", "interval_ps", "equilibration_ps", "steps", "hidden", "n_blocks",
                    "pt_iterations", "pt_steps", "n_bootstrap"):
            setattr(args, key, QUICK[key])
        args.n = 500
    args.output = args.output or RESULTS / f"refine{'_quick' if args.quick else ''}.json"
    return args


def options(args) -> ot.SMC:
    return ot.SMC(kernel=args.kernel, n_mcmc_steps=args.mcmc_steps, n_leapfrog=args.n_leapfrog,
                  cess_target=args.cess_target, max_levels=args.max_levels)


def metrics(wt, r: dict, wall: float, evaluations: int, args) -> dict:
    phi_psi = ot.cv.evaluate(ot.cv.ramachandran, wt.trajectory)
    pops = ot.free_energy.populations(wt, n_bootstrap=args.n_bootstrap, seed=args.seed)
    row = {"temperature": wt.temperature, "n": len(wt), "ess": float(wt.ess),
           "kl": float(ot.metrics.ramachandran_kl(r["phi_psi"], phi_psi, wt.weights)),
           "kl_reference_floor": r["kl_noise_floor"],
           "population": pops[STATE][0], "population_err": pops[STATE][1],
           "population_reference": r["population"],
           "force_evaluations": int(evaluations), "wall_time_s": wall}
    if wt.refinement is not None:
        ref = wt.refinement
        row.update(distinct_ancestors=ref["distinct_ancestors"], levels=ref["levels"],
                   lineage_ess=wt.lineage_ess,
                   flip_acceptance=[h.get("flip_acceptance") for h in ref["history"]],
                   log_z=wt.log_partition_estimate, log_z_err=wt.log_partition_error,
                   acceptance=[h["acceptance"] for h in ref["history"]],
                   step_size=[h["step_size"] for h in ref["history"]])
    return row


def draw(kind: str, model, energy, r: dict, k: int, budget: int | None, folder: Path, args):
    """One temperature's weighted sample (cached) and its metrics."""
    t = r["temperature"]
    stem = folder / f"{kind}-{t:.2f}K-n{args.n}"
    h5, js = stem.with_suffix(".h5"), stem.with_suffix(".json")
    row = read_json(js)
    if row is not None and h5.exists():
        return ot.WeightedTrajectory.load(h5), row
    before, started = energy.n_evaluations, time.perf_counter()
    if kind == "refined":
        wt = ot.sample(model, energy, temperature=t, n=args.n, seed=args.seed + 31 + k,
                       quiet=True, refine=options(args))
    else:
        wt = ot.sample(model, energy, temperature=t, n=int(budget), seed=args.seed + 37 + k,
                       quiet=True)
    row = metrics(wt, r, time.perf_counter() - started, energy.n_evaluations - before, args)
    wt.save(h5)
    write_json(js, row)
    log(f"  {kind} {t:.1f} K: ESS {row['ess']:.3f} KL {row['kl']:.3f} (floor "
        f"{row['kl_reference_floor']:.3f}) {STATE} {row['population']:.3f} (ref "
        f"{r['population']:.3f}) {row['force_evaluations']} evaluations")
    return wt, row


def heat_capacity(model, energy, ref, folder: Path, args) -> dict:
    path = folder / f"cv-31-n{args.n}.json"
    cached = read_json(path)
    if cached is not None:
        return cached
    temperatures = np.geomspace(300.0, 600.0, 31)
    before, started = energy.n_evaluations, time.perf_counter()
    table = ot.free_energy.temperature_profile(
        model, energy, temperatures, n=args.n, n_bootstrap=args.n_bootstrap, seed=args.seed,
        quiet=True, refine=options(args))
    out = {"table": table.as_rows(),
           "force_evaluations": int(energy.n_evaluations - before),
           "wall_time_s": time.perf_counter() - started,
           "mbar": ref["mbar"].as_dict()}
    write_json(path, out)
    return out


def markdown(out: dict) -> str:
    """The README table: refined beside plain importance sampling at the same number of
    force evaluations and beside the parallel-tempering prefix that reaches the refined KL."""
    ref = out["reference"]
    lines = [
        "| T (K) | SMC ESS | over lineages (ancestors) | SMC KL | IS KL | PT floor | αL SMC "
        "| αL IS | αL PT "
        "| Δf−MBAR SMC (kT) | Δf−MBAR IS (kT) | force evals | SMC wall s | PT evals to SMC KL |",
        "|---" * 14 + "|",
    ]
    rows = zip(out["per_temperature"]["refined"], out["per_temperature"]["plain"],
               out["per_temperature"]["pt"], strict=True)
    for refined, plain, pt in rows:
        reached = pt.get("energy_evaluations")
        lines.append(
            f"| {refined['temperature']:.0f} | {refined['ess']:.1%} | "
            f"{refined.get('lineage_ess', math.nan):.1%} ({refined.get('distinct_ancestors', '')})"
            f" | {refined['kl']:.3f} | {plain['kl']:.3f} "
            f"| {refined['kl_reference_floor']:.3f} | {refined['population']:.3f} | "
            f"{plain['population']:.3f} | {refined['population_reference']:.3f} | "
            f"{refined['delta_f_minus_mbar_kT']:+.3f} ± {refined['delta_f_minus_mbar_err_kT']:.3f}"
            f" | {plain['delta_f_minus_mbar_kT']:+.3f} ± {plain['delta_f_minus_mbar_err_kT']:.3f}"
            f" | {refined['force_evaluations']:,} | {refined['wall_time_s']:.0f} | "
            f"{'not reached' if reached is None else f'{reached:,}'} |")
    lines.append(f"\nReference: parallel tempering, {len(ref['temperatures'])} replicas, "
                 f"{ref['n_iterations']} iterations x {ref['steps_per_iteration']} steps "
                 f"({ref['energy_evaluations']:,} force evaluations, "
                 f"{ref['wall_time_s']:.0f} s). IS: plain importance sampling from the same "
                 "model with as many samples as SMC spent force evaluations.")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    msys = ot.systems.load(args.system)
    folder = cache_root(args) / "refine" / (
        f"{args.kernel}-s{args.mcmc_steps}-l{args.n_leapfrog}-c{args.cess_target:g}"
        f"-m{args.max_levels}-seed{args.seed}{'-quick' if args.quick else ''}")
    with ot.OpenMMEnergy(msys, platform="CPU") as energy:
        ref = load_reference(msys, args)
        temps = ref["pt"].temperatures
        t0 = float(temps[-1])  # the default pipeline's boundary: the top of the range
        traj, md_meta = boundary(msys, t0, args)
        model, model_meta = get_model("trade", msys, energy, traj, t0,
                                      (float(temps[0]), float(temps[-1])), args)
        results = {"refined": {}, "plain": {}, "pt": {}}
        wts = {"refined": {}, "plain": {}}
        for k, r in enumerate(ref["per_temperature"]):
            wt, row = draw("refined", model, energy, r, k, None, folder, args)
            wts["refined"][k], results["refined"][k] = wt, row
            wt, row2 = draw("plain", model, energy, r, k, row["force_evaluations"], folder, args)
            wts["plain"][k], results["plain"][k] = wt, row2
            results["pt"][k] = pt_prefix_cost(ref, k, row["kl"])
        for kind in ("refined", "plain"):
            add_delta_f(results[kind], wts[kind], t0, ref, args)
        out = {"system": args.system, "options": asdict(options(args)), "bar": BAR,
               "model": model_meta, "boundary": md_meta, "reference": reference_json(ref),
               "per_temperature": {kind: [results[kind][k] for k in sorted(results[kind])]
                                   for kind in results},
               "command": "python benchmarks/refine.py " + " ".join(sys.argv[1:])}
        if args.cv:
            out["heat_capacity"] = heat_capacity(model, energy, ref, folder, args)
    write_json(args.output, out)
    print(markdown(out))
    log(f"wrote {args.output}")
    return out


if __name__ == "__main__":
    main()
