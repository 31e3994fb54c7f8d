"""A capped amino acid from the default pipeline against a parallel-tempering reference of
its own (issue 17): φ/ψ KL and χ1 rotamer populations.

For ``--system`` (default ``ace-leu-nme-implicit``, a member of the development set):

1. the reference: parallel tempering from ``benchmarks/reference.py`` (8 replicas,
   geometric 300-600 K, ``--pt-ns`` per replica), reloaded from the cache (run that script
   first with the same ``--system`` and ``--ns-per-replica``); the first ``--discard`` of
   each replica's frames are dropped as equilibration;
2. the model: the development-set model of ``benchmarks/molecules.py`` (same cache: boundary
   MD at 600 K, default ``TemperatureFlow.for_system`` + ``ot.train``), trained if absent;
3. at each of ``--temperatures`` (the nearest PT temperature): ``--n`` flow samples,
   importance-weighted, against the PT frames:

   * KL(PT ‖ flow) of φ/ψ (:func:`openmm_trade.metrics.ramachandran_kl`), next to the
     same KL between the two halves of the PT run (the reference's own noise floor) and
     the KL a perfect model with the flow's ESS would show (the pseudocount's bias);
   * χ1 rotamer populations (``p``: χ1 in [0°, 120°), ``t``: |χ1| ≥ 120°, ``m``: [−120°, 0°)),
     the flow's with bootstrap errors, the PT's with errors from the statistical inefficiency
     of each indicator, and the z-score of their difference;
   * Δf(T) − Δf(T0) of the flow against MBAR on the PT (T0 = 600 K must be sampled).

Writes ``benchmarks/results/side_chains.json`` and prints a Markdown table.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/reference.py --system ace-leu-nme-implicit \\
        --ns-per-replica 2                                      # ~40 min on 1 core
    OMP_NUM_THREADS=1 python benchmarks/side_chains.py          # ~10 min with the model cached
    OMP_NUM_THREADS=1 python benchmarks/side_chains.py --refine # and with SMC refinement
    OMP_NUM_THREADS=1 python benchmarks/side_chains.py --quick  # pipeline check, minutes
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import mdtraj
import numpy as np
import torch
from molecules import boundary_md, cache, trained_model
from molecules import parse_args as molecules_args
from reference import parse_args as reference_args
from reference import run_parallel_tempering
from validate import md_fraction

import openmm_trade as ot
from openmm_trade.files import write_text_atomic
from openmm_trade.mbar import mbar_reference

RESULTS = Path(__file__).resolve().parent / "results"
ROTAMERS = {"p": [(0.0, 2 * math.pi / 3)],
            "t": [[(2 * math.pi / 3, math.pi)], [(-math.pi, -2 * math.pi / 3)]],
            "m": [(-2 * math.pi / 3, 0.0)]}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="ace-leu-nme-implicit")
    parser.add_argument("--temperatures", type=float, nargs="+", default=(300.0, 600.0))
    parser.add_argument("--n", type=int, default=10_000, help="flow samples per temperature")
    parser.add_argument("--pt-ns", type=float, default=2.0, help="PT ns per replica")
    parser.add_argument("--discard", type=float, default=0.1,
                        help="fraction of each PT replica dropped as equilibration")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--refine", action="store_true",
                        help="also refine the samples with the force field (SMC) and compare")
    parser.add_argument("--torsion-flips", type=int, default=None,
                        help="with --refine: SMC(torsion_flips=...); default: SMC's")
    parser.add_argument("--quick", action="store_true",
                        help="tiny PT, MD and training (pipeline check, minutes)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 300
    suffix = ("_quick" if args.quick else "") + (
        "" if args.torsion_flips is None else f"_flips{args.torsion_flips}")
    args.output = args.output or RESULTS / f"side_chains{suffix}.json"
    return args


def chi1(topology: mdtraj.Topology) -> ot.cv.CollectiveVariable:
    """The χ1 dihedral (N-CA-CB-CG) of the one residue that has it."""
    atoms = mdtraj.compute_chi1(mdtraj.Trajectory(np.zeros((1, topology.n_atoms, 3)),
                                                  topology))[0]
    if len(atoms) != 1:
        raise SystemExit(f"expected one residue with a χ1, found {len(atoms)}")
    return ot.cv.dihedral(atoms[0], name="χ1")


def reference_side(traj: mdtraj.Trajectory, chi: ot.cv.CollectiveVariable) -> dict:
    """φ/ψ, χ1 rotamer populations and the two-halves check of correlated PT frames."""
    phi_psi = ot.cv.evaluate(ot.cv.ramachandran, traj)
    chi_values = ot.cv.evaluate(chi, traj)
    half = len(traj) // 2
    rotamers = {}
    for name, state in ROTAMERS.items():
        mask = ot.free_energy.state_mask(name, state, chi_values)
        p, err, g = md_fraction(mask)
        rotamers[name] = {"population": p, "error": err, "g": g,
                          "halves": [float(mask[:half].mean()), float(mask[half:].mean())]}
    kl_halves = max(ot.metrics.ramachandran_kl(phi_psi[:half], phi_psi[half:]),
                    ot.metrics.ramachandran_kl(phi_psi[half:], phi_psi[:half]))
    return {"n_frames": len(traj), "phi_psi": phi_psi, "rotamers": rotamers,
            "kl_halves": float(kl_halves)}


def flow_side(wt: ot.WeightedTrajectory, ref: dict, chi, seed: int) -> dict:
    """The flow's ESS, φ/ψ KL against the reference and χ1 populations with z-scores."""
    phi_psi = ot.cv.evaluate(ot.cv.ramachandran, wt)
    n_eff = max(float(wt.ess * len(wt)), 1e-9)
    pops = ot.free_energy.populations(wt, ROTAMERS, cv=chi, seed=seed)
    rotamers = {}
    for name in ROTAMERS:
        p, err = pops[name]
        r = ref["rotamers"][name]
        combined = math.hypot(err, r["error"])  # 0 only if both sides are exact
        z = (p - r["population"]) / combined if combined > 0 else math.nan
        rotamers[name] = {"population": float(p), "error": float(err), "z": float(z)}
    return {"n": len(wt), "ess": float(wt.ess), "ess_count": n_eff,
            "kl": float(ot.metrics.ramachandran_kl(ref["phi_psi"], phi_psi, wt.weights)),
            "kl_perfect_model_same_ess": float(ot.metrics.ramachandran_kl(
                ref["phi_psi"], ref["phi_psi"], n_eff=n_eff)),
            "rotamers": rotamers}


def add_delta_f(rows: list[dict], wts: list, t0: float, pt, seed: int) -> None:
    """Δf(T) − Δf(T0) of the flow (importance sampling) against MBAR on the PT, into ``rows``
    (T0 must be one of the sampled temperatures)."""
    profile = ot.free_energy.profile_from_trajectories(wts, reference_temperature=t0, seed=seed)
    comparison = ot.free_energy.compare_with_mbar(profile, mbar_reference(pt))
    for i, row in enumerate(rows):
        row["flow"]["delta_f_kT"] = float(profile.delta_f_kT[i])
        row["flow"]["delta_f_kT_err"] = float(profile.delta_f_kT_err[i])
        row["flow"]["delta_f_minus_mbar_kT"] = float(comparison.difference[i])
        row["flow"]["delta_f_minus_mbar_err_kT"] = float(comparison.error[i])


def _line(label: str, f: dict, ref: dict, delta_f: str) -> str:
    cells = [f"{f['rotamers'][k]['population']:.3f} ± {f['rotamers'][k]['error']:.3f} / "
             f"{ref['rotamers'][k]['population']:.3f} ± {ref['rotamers'][k]['error']:.3f} "
             f"({f['rotamers'][k]['z']:+.1f})" for k in ROTAMERS]
    return (f"| {label} | {f['ess']:.2%} | {delta_f} | {f['kl']:.3f} | "
            f"{f['kl_perfect_model_same_ess']:.3f} | {ref['kl_halves']:.3f} | "
            + " | ".join(cells) + " |")


def markdown(rows: list[dict]) -> str:
    lines = ["| T (K) | flow ESS | Δf − Δf_MBAR (kT) | φ/ψ KL flow | KL perfect model, same ESS "
             "| KL PT halves | " + " | ".join(f"χ1 {k}: flow / PT (z)" for k in ROTAMERS) + " |",
             "|---" * (6 + len(ROTAMERS)) + "|"]
    for r in rows:
        f, ref = r["flow"], r["reference"]
        lines.append(_line(f"{r['temperature']:.0f}", f, ref,
                           f"{f['delta_f_minus_mbar_kT']:+.2f} ± "
                           f"{f['delta_f_minus_mbar_err_kT']:.2f}"))
        if "refined" in r:
            lines.append(_line(f"{r['temperature']:.0f} refined (ESS over lineages "
                               f"{r['refined']['lineage_ess']:.2%})", r["refined"], ref, "—"))
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    quick = ["--quick"] if args.quick else []
    pt = run_parallel_tempering(reference_args(["--system", args.system, "--ns-per-replica",
                                                str(args.pt_ns), "--quiet", *quick]))
    margs = molecules_args(["--systems", args.system, "--seed", str(args.seed), *quick])
    msys = ot.systems.load(args.system)
    chi = chi1(msys.mdtraj_topology)
    traj, _ = boundary_md(args.system, margs)
    rows, wts = [], []
    with ot.OpenMMEnergy(msys) as energy:
        model, sigma, _ = trained_model(msys, energy, traj, cache(margs, args.system)[1], margs)
        for i, temperature in enumerate(args.temperatures):
            k = int(np.argmin(np.abs(pt.temperatures - temperature)))
            frames = pt.trajectories[k]
            ref = reference_side(frames[int(args.discard * len(frames)):], chi)
            wt = ot.sample(model, energy, temperature=float(pt.temperatures[k]), n=args.n,
                           seed=args.seed + 31 + i, quiet=True)
            flow = flow_side(wt, ref, chi, args.seed)
            wts.append(wt)
            row = {"temperature": float(pt.temperatures[k]), "flow": flow, "reference": ref}
            if args.refine:
                started_smc, before = time.perf_counter(), energy.n_evaluations
                options = (ot.SMC() if args.torsion_flips is None
                           else ot.SMC(torsion_flips=args.torsion_flips))
                refined = ot.sample(model, energy, temperature=float(pt.temperatures[k]),
                                    n=args.n, seed=args.seed + 61 + i, quiet=True,
                                    refine=options)
                row["refined"] = {**flow_side(refined, ref, chi, args.seed),
                                  "distinct_ancestors":
                                      refined.refinement.get("distinct_ancestors"),
                                  "lineage_ess": refined.lineage_ess,
                                  "flip_acceptance": [level["flip_acceptance"] for level in
                                                      refined.refinement["history"]],
                                  "wall_s": time.perf_counter() - started_smc,
                                  "force_evaluations": int(energy.n_evaluations - before)}
            ref.pop("phi_psi")
            rows.append(row)
            print(f"[side_chains] {pt.temperatures[k]:.0f} K: ESS {flow['ess']:.2%}, "
                  f"KL {flow['kl']:.3f} (PT halves {ref['kl_halves']:.3f})", flush=True)
    add_delta_f(rows, wts, margs.t0, pt, args.seed)
    result = {"system": args.system, "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                  for k, v in vars(args).items()},
              "model": {"t0": margs.t0, "range": list(margs.range), "frames": margs.frames,
                        "interval_ps": margs.interval_ps, "overlap_sigma": float(sigma)},
              "reference": {"ns_per_replica": pt.simulated_time_ps / 1000,
                            "temperatures": pt.temperatures.tolist(),
                            "acceptance_rates": pt.acceptance_rates.tolist()},
              "rows": rows, "wall_s": time.perf_counter() - started,
              "command": "OMP_NUM_THREADS=1 python benchmarks/side_chains.py "
                         + shlex.join(sys.argv[1:] if argv is None else argv)}
    write_text_atomic(args.output, json.dumps(result, indent=1) + "\n")
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
