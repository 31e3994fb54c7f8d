"""Temperature transfer with TRADE on alanine dipeptide, both directions, with baselines.

For each direction (``up``: MD boundary at the low end, TRADE over the range; ``down``:
boundary at the high end, transfer downwards):

1. Boundary data: Langevin MD at T0 (:func:`openmm_trade.md.simulate`), cached in
   ``ot.md.cache_dir()``.
2. Models (a :class:`TemperatureFlow` each, same architecture and seed):
   * ``trade``: boundary fit at T0 (NLL, plus the reverse KL at T0 with ``--kl-weight``)
     + TRADE over the range (:func:`openmm_trade.train` with its default schedule);
   * ``nll_conditional``: the same conditional flow and boundary objective without the
     TRADE term (``trade_weight=0``), evaluated at each T's condition;
   * ``t0_reweighted``: that NLL model evaluated at the T0 condition for every T, i.e. an
     unconditional flow at T0 reweighted to T.
3. At each temperature of ``--temperatures``: ``--n-eval`` samples, importance weights
   ``-βU - log p``, ESS (fraction); wall time and energy evaluations of training and of
   evaluation.
4. Optional references (when the files exist): ``benchmarks/results/reference_summary.json``
   from ``benchmarks/reference.py`` gives MBAR Δf(T) (compared with
   :func:`openmm_trade.free_energy.temperature_profile` of each model), and its
   parallel-tempering storage gives reference (φ, ψ) for a Ramachandran KL
   (:func:`openmm_trade.metrics.ramachandran_kl`).

Writes ``benchmarks/results/transfer.json`` atomically (``transfer_smoke.json`` with
``--smoke``) and prints a table.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/transfer.py --directions up      # vacuum, ~25 min
    OMP_NUM_THREADS=1 python benchmarks/transfer.py                       # both directions
    python benchmarks/transfer.py --system alanine-dipeptide-implicit --steps 5000
    python benchmarks/transfer.py --smoke                                 # ~1 minute
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import mdtraj
import numpy as np
import torch

import openmm_trade as ot
from openmm_trade.files import write_text_atomic
from openmm_trade.flow import TemperatureFlow
from openmm_trade.training import DEFAULT_KL_WEIGHT, DEFAULT_STEPS, DEFAULT_TRADE_WEIGHT

RESULTS = Path(__file__).resolve().parent / "results"
SMOKE = dict(frames=100, steps=30, n_eval=64, hidden=16, n_blocks=1, temperatures=3)


class FixedCondition(torch.nn.Module):
    """A model evaluated at one fixed condition T0 whatever temperature is asked for."""

    def __init__(self, model, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, float(temperature)
        for name in ("event_shape", "system", "temperature_range", "reference_temperature"):
            setattr(self, name, getattr(model, name))

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def device(self):
        return self.model.device

    def sample(self, n, temperature, generator=None):
        return self.model.sample(n, self.temperature, generator)

    def log_prob(self, x, temperature):
        return self.model.log_prob(x, self.temperature)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="alanine-dipeptide-vacuum",
                        choices=ot.systems.available())
    parser.add_argument("--t-low", type=float, default=300.0)
    parser.add_argument("--t-high", type=float, default=600.0)
    parser.add_argument("--temperatures", type=int, default=4,
                        help="evaluation temperatures, evenly spaced over the range")
    parser.add_argument("--directions", default="up,down")
    parser.add_argument("--frames", type=int, default=6000)
    parser.add_argument("--interval-ps", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--n-eval", type=int, default=10_000)
    parser.add_argument("--trade-weight", type=float, default=DEFAULT_TRADE_WEIGHT,
                        help="final weight of the TRADE term of the 'trade' model")
    parser.add_argument("--kl-weight", type=float, default=DEFAULT_KL_WEIGHT,
                        help="weight of the reverse KL at T0 added to the NLL (0: NLL only)")
    parser.add_argument("--hidden", type=int, default=None,
                        help="default: TemperatureFlow.for_system's")
    parser.add_argument("--n-blocks", type=int, default=None)
    parser.add_argument("--boundary-file", type=Path, default=None,
                        help="reuse these MD frames (an mdtraj file) as the boundary of the "
                             "'up' direction instead of simulating")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny settings (pipeline check)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    return args


def boundary(msys, temperature: float, args) -> tuple[mdtraj.Trajectory, float]:
    """Cached MD frames at ``temperature`` and the seconds spent simulating now."""
    started = time.perf_counter()
    if args.boundary_file is not None and temperature == args.t_low:
        traj = mdtraj.load(str(args.boundary_file))
        return traj[-args.frames:], time.perf_counter() - started
    path = ot.md.cache_dir() / (f"transfer-{msys.name}-{temperature:g}K-{args.frames}x"
                                f"{args.interval_ps:g}ps-seed{args.seed}.h5")
    traj = ot.md.simulate(msys, temperature, n_frames=args.frames, interval_ps=args.interval_ps,
                          seed=args.seed + 1, output=path, resume=True, quiet=True,
                          equilibration_ps=2.0 if args.smoke else 20.0)
    return traj, time.perf_counter() - started


def evaluate(model, energy, temperatures, args) -> dict:
    """ESS and sampling cost per temperature."""
    rows = {}
    for t in temperatures:
        before, started = energy.n_evaluations, time.perf_counter()
        wt = ot.sample(model, energy, temperature=float(t), n=args.n_eval, seed=args.seed,
                       quiet=True)
        rows[f"{t:g}"] = {"ess": wt.ess, "n_failed": int(wt.n_failed),
                          "wall_time_s": time.perf_counter() - started,
                          "energy_evaluations": energy.n_evaluations - before}
    return rows


def references(msys, temperatures) -> dict:
    """MBAR Δf and PT (φ, ψ) if ``benchmarks/reference.py`` has produced them."""
    summary_path = RESULTS / "reference_summary.json"
    if not summary_path.exists():
        return {}
    summary = json.loads(summary_path.read_text())
    if summary.get("system") != msys.name:  # a reference of another system does not apply
        return {}
    out = {"mbar": summary.get("mbar")}
    storage = Path(summary.get("storage", ""))
    if storage.exists():
        try:
            pt = ot.md.parallel_tempering(
                msys, summary["temperatures_K"], n_iterations=summary["n_iterations"],
                steps_per_iteration=summary["steps_per_iteration"], storage=storage, quiet=True)
            out["phi_psi"] = {f"{t:g}": ot.cv.evaluate(ot.cv.ramachandran, traj)
                              for t, traj in zip(pt.temperatures, pt.trajectories, strict=True)}
        except Exception as error:  # noqa: BLE001 - the reference is optional
            out["phi_psi_error"] = repr(error)
    return out


def compare(model, energy, reference: dict, t0: float, temperatures, args) -> dict:
    """Δf vs MBAR and Ramachandran KL vs PT, where references exist."""
    out = {}
    mbar = reference.get("mbar")
    if mbar:
        t_ref = np.asarray(mbar["temperatures"])
        inside = [t for t in t_ref if min(temperatures) - 1e-6 <= t <= max(temperatures) + 1e-6]
        if inside:
            profile = ot.free_energy.temperature_profile(
                model, energy, inside, n=args.n_eval, reference_temperature=t0, seed=args.seed,
                quiet=True)
            ref_f = np.interp(inside, t_ref, mbar["delta_f"])
            ref_f = ref_f - np.interp(t0, t_ref, mbar["delta_f"])
            cmp = ot.metrics.delta_f_difference(profile.delta_f_kT, ref_f,
                                                profile.delta_f_kT_err)
            out["delta_f_max_abs_kT"] = cmp.max_abs_difference
    for key, phi_psi in reference.get("phi_psi", {}).items():
        wt = ot.sample(model, energy, temperature=float(key), n=args.n_eval, seed=args.seed,
                       quiet=True)
        model_phi_psi = ot.cv.evaluate(ot.cv.ramachandran, wt.trajectory)
        out.setdefault("ramachandran_kl", {})[key] = ot.metrics.ramachandran_kl(
            phi_psi, model_phi_psi, wt.weights)
    return out


def run_direction(msys, energy, t0: float, args, reference: dict) -> dict:
    t_range = (args.t_low, args.t_high)
    temperatures = np.linspace(*t_range, args.temperatures)
    traj, md_seconds = boundary(msys, t0, args)
    result = {"boundary_temperature": t0, "md_wall_time_s": md_seconds,
              "boundary_frames": traj.n_frames, "models": {}}
    trained = {}
    for name, weight in (("trade", args.trade_weight), ("nll_conditional", 0.0)):
        arch = {k: v for k, v in (("hidden", args.hidden), ("n_blocks", args.n_blocks))
                if v is not None}
        model = TemperatureFlow.for_system(msys, traj, temperature_range=t_range,
                                           reference_temperature=t0, seed=args.seed, **arch)
        before, started = energy.n_evaluations, time.perf_counter()
        history = ot.train(model, energy, traj, t0, steps=args.steps, trade_weight=weight,
                           kl_weight=args.kl_weight, seed=args.seed, quiet=True)
        trained[name] = model
        result["models"][name] = {
            "train_wall_time_s": time.perf_counter() - started,
            "train_energy_evaluations": energy.n_evaluations - before,
            "skipped_steps": history.skipped_steps,
            "steps": len(history),
        }
        print(f"  {t0:g} K {name}: trained {len(history)} steps in "
              f"{result['models'][name]['train_wall_time_s']:.0f} s", file=sys.stderr, flush=True)
    trained["t0_reweighted"] = FixedCondition(trained["nll_conditional"], t0)
    result["models"]["t0_reweighted"] = dict(result["models"]["nll_conditional"])
    for name, model in trained.items():
        entry = result["models"][name]
        entry["per_temperature"] = evaluate(model, energy, temperatures, args)
        entry.update(compare(model, energy, reference, t0, temperatures, args))
    return result


def _json_value(value):
    """numpy scalars as numbers, paths (and anything else) as strings."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    msys = ot.systems.load(args.system)
    reference = references(msys, np.linspace(args.t_low, args.t_high, args.temperatures))
    output = args.output or RESULTS / ("transfer_smoke.json" if args.smoke else "transfer.json")
    results = {"system": args.system, "settings": vars(args) | {"output": str(output)},
               "references": sorted(k for k in reference if reference[k]), "directions": {}}
    started = time.perf_counter()
    with ot.OpenMMEnergy(msys, platform="CPU") as energy:
        for direction in args.directions.split(","):
            t0 = {"up": args.t_low, "down": args.t_high}[direction]
            results["directions"][direction] = run_direction(msys, energy, t0, args, reference)
    results["wall_time_s"] = time.perf_counter() - started
    write_text_atomic(output, json.dumps(results, indent=2, default=_json_value) + "\n")
    print(f"{'direction':>9} {'model':>16} {'T':>7} {'ESS':>7} {'train s':>8} {'train U':>9} "
          f"{'eval s':>7} {'eval U':>7}")
    for direction, block in results["directions"].items():
        for name, entry in block["models"].items():
            for t, row in entry["per_temperature"].items():
                print(f"{direction:>9} {name:>16} {t:>7} {row['ess']:7.3f} "
                      f"{entry['train_wall_time_s']:8.1f} {entry['train_energy_evaluations']:9d} "
                      f"{row['wall_time_s']:7.1f} {row['energy_evaluations']:7d}")
    print(f"wrote {output}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
