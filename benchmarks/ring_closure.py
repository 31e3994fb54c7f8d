"""Clash fraction of flow samples (issue 17): how often the flow breaks a ring.

Boundary MD at T0, a short training run at default width/depth, samples at T0; prints the
fraction of samples whose ring-closing bond is more than k σ off its MD length
(:func:`openmm_trade.metrics.clash_fraction`), the ESS and the wall times.

    python benchmarks/ring_closure.py ace-pro-nme-implicit --frames 1000 --steps 300
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import openmm_trade as ot
from openmm_trade import metrics


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=ot.systems.available())
    parser.add_argument("--t0", type=float, default=600.0, help="boundary temperature (K)")
    parser.add_argument("--t-low", type=float, default=300.0, help="low end of the range (K)")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--interval-ps", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--k", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    msys = ot.systems.load(args.system)
    result = {"system": args.system, "atoms": msys.n_atoms, **vars(args)}
    result["ring_closing_bonds"] = metrics.ring_closing_bonds(msys).tolist()

    start = time.perf_counter()
    traj = ot.md.simulate(msys, temperature=args.t0, n_frames=args.frames,
                          interval_ps=args.interval_ps, seed=args.seed, quiet=True)
    result["md_s"] = time.perf_counter() - start
    held_out = traj[len(traj) // 2:]  # second half judged against the first half's σ
    result["clash_md_second_half"] = metrics.clash_fraction(held_out, msys, traj[: len(traj) // 2],
                                                            k=args.k)

    start = time.perf_counter()
    model = ot.TemperatureFlow.for_system(msys, traj, temperature_range=(args.t_low, args.t0),
                                          seed=args.seed)
    result["dof"] = int(model.coordinates.n_dof)
    with ot.OpenMMEnergy(msys) as energy:
        ot.train(model, energy, boundary=traj, boundary_temperature=args.t0,
                 temperature_range=(args.t_low, args.t0), steps=args.steps, seed=args.seed,
                 quiet=True)
        result["train_s"] = time.perf_counter() - start
        start = time.perf_counter()
        wt = ot.sample(model, energy, temperature=args.t0, n=args.samples, seed=args.seed + 1)
        result["sample_s"] = time.perf_counter() - start
    deviation = metrics.ring_closure_deviation(wt.samples, msys, traj)
    result["clash_fraction"] = metrics.clash_fraction(wt.samples, msys, traj, k=args.k)
    result["deviation_quantiles_50_90_99"] = np.quantile(deviation, [0.5, 0.9, 0.99]).tolist()
    result["ess"] = float(wt.ess)
    result["n_failed"] = int(wt.n_failed)
    intact = deviation <= args.k
    result["ess_intact_only"] = metrics.effective_sample_size(
        np.where(intact, wt.log_weights, -np.inf)) if intact.any() else 0.0
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
