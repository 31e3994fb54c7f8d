"""The run report: figures and ``report.md`` built from a run's output directory.

Everything is read back from files (``config.toml``, ``stages.json``, ``free_energy.csv``,
``populations.csv``, ``training_history.csv``, ``samples/*.h5``), so ``openmm-trade report
DIR`` can rebuild the report of any finished (or partly finished) run.

Example
-------
>>> write_report("openmm-trade-demo")  # doctest: +SKIP
PosixPath('openmm-trade-demo/report.md')
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from pathlib import Path

from .errors import InputError

#: Fewer effective samples than this flags a temperature as unreliable in the report.
LOW_EFFECTIVE_SAMPLES = 100


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def overlap_line(out) -> str | None:
    """One sentence on the trained model's overlap σ at T0 (from ``training_history.csv``),
    or None when the run has no held-out boundary frames (or no history yet).

    σ is the standard deviation of ``log w = -β0 U - log p_θ(x|T0)`` on held-out boundary
    frames (:func:`openmm_trade.metrics.overlap_sigma`); ``ESS ≈ exp(-σ²)``.

    Examples
    --------
    >>> overlap_line("no-such-run") is None
    True
    """
    path = Path(out) / "training_history.csv"
    if not path.exists():
        return None
    rows = [r for r in _read_csv(path) if r.get("overlap_sigma") not in (None, "")]
    if not rows:
        return None
    last = rows[-1]
    sigma = float(last["overlap_sigma"])
    restored = [r["restored_step"] for r in _read_csv(path) if r.get("restored_step")]
    kept = (f"; the likelihood fit kept step {int(float(restored[-1]))} (best held-out NLL)"
            if restored else "")
    return (f"Overlap at T0: σ = {sigma:.2f} (std of log w on {int(float(last['holdout_frames']))}"
            f" held-out boundary frames; ESS ≈ exp(-σ²) = {math.exp(-sigma * sigma):.1%}"
            f"{', poor: the model misses the Boltzmann density at T0' if sigma > 2 else ''})"
            f"{kept}.")


def _reference_temperature(out: Path) -> float:
    with open(out / "config.toml", "rb") as handle:
        return float(tomllib.load(handle)["boundary"]["temperature"])


def write_figures(out, msys, trajectories: dict) -> list[Path]:
    """Draw the run's figures into ``out/figures``; returns the files written.

    Parameters
    ----------
    out : path
        Run directory holding ``free_energy.csv`` (and ``populations.csv`` for peptides).
    msys : MolecularSystem
        The system (decides whether Ramachandran figures apply).
    trajectories : dict
        Temperature (K) -> :class:`~openmm_trade.sampling.WeightedTrajectory`.
    """
    from . import cv, free_energy, plots

    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    profile = free_energy.TemperatureProfile.from_csv(
        out / "free_energy.csv", reference_temperature=_reference_temperature(out))
    written = [
        plots.ess_vs_temperature(profile, figures / "ess.png"),
        plots.delta_f_vs_temperature(profile, figures / "delta_f.png"),
        plots.energy_histograms(list(trajectories.values()), figures / "energies.png"),
    ]
    if cv.has_ramachandran(msys.mdtraj_topology):
        surfaces = [free_energy.surface(wt, cv.ramachandran, bins=36, n_bootstrap=20, seed=0)
                    for wt in trajectories.values()]
        written.append(plots.ramachandran_panels(surfaces, figures / "ramachandran.png"))
        if (out / "populations.csv").exists():
            table = free_energy.PopulationProfile.from_csv(out / "populations.csv")
            written.append(plots.populations_vs_temperature(table, figures / "populations.png"))
    return written


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def write_report(out, figures: bool = False) -> Path:
    """Write ``out/report.md`` summarising ESS, Δf, populations and the cost per stage.

    With ``figures=True`` the figures are redrawn first from ``samples/*.h5``.
    """
    from .files import write_text_atomic

    out = Path(out)
    if not (out / "config.toml").exists():
        raise InputError(f"{out} is not a run directory (no config.toml)")
    if figures:
        _redraw_figures(out)
    with open(out / "config.toml", "rb") as handle:
        config = tomllib.load(handle)
    system = config["system"].get("name") or config["system"].get("pdb")
    lines = [
        "# openmm-trade run report", "",
        f"System: `{system}`; boundary MD at T0 = {config['boundary']['temperature']:g} K; "
        f"temperature range {config['temperatures']['range'][0]:g}–"
        f"{config['temperatures']['range'][1]:g} K.", "",
    ]
    lines += _coverage_section(out)
    if (out / "free_energy.csv").exists():
        rows = _read_csv(out / "free_energy.csv")
        n_drawn = int(config.get("free_energy", {}).get("n", 0))
        lines += ["## Free energies and sampling efficiency", "",
                  "Δf = f(β) − f(β0) with f = −ln Z (importance sampling with the flow; "
                  "bootstrap errors); Δf_TI is thermodynamic integration of ⟨U⟩ as a check; "
                  f"ESS is the effective sample size as a fraction of the {n_drawn} samples "
                  f"drawn per temperature. Rows marked (!) have fewer than "
                  f"{LOW_EFFECTIVE_SAMPLES} effective samples: their estimates are unreliable "
                  "(train longer, use more boundary data, or draw more samples).", ""]
        lines += _table(
            ["T (K)", "ESS", "Δf (kT)", "Δf_TI (kT)", "⟨U⟩ (kJ/mol)", "C_v (kJ/mol/K)"],
            [[f"{float(r['temperature']):g}"
              + (" (!)" if float(r["ess"]) * n_drawn < LOW_EFFECTIVE_SAMPLES else ""),
              f"{float(r['ess']):.1%}",
              f"{float(r['delta_f_kT']):.3f} ± {float(r['delta_f_kT_err']):.3f}",
              f"{float(r['delta_f_ti_kT']):.3f}",
              f"{float(r['mean_energy']):.2f} ± {float(r['mean_energy_err']):.2f}",
              f"{float(r['heat_capacity']):.4f} ± {float(r['heat_capacity_err']):.4f}"]
             for r in rows])
        lines.append("")
    if (out / "populations.csv").exists():
        rows = _read_csv(out / "populations.csv")
        states = [k for k in rows[0] if k != "temperature" and not k.endswith("_err")]
        lines += ["## Conformational populations (Ramachandran regions)", ""]
        lines += _table(["T (K)"] + states,
                        [[f"{float(r['temperature']):g}"]
                         + [f"{float(r[s]):.3f} ± {float(r[s + '_err']):.3f}" for s in states]
                         for r in rows])
        lines.append("")
    lines += _refinement_section(out)
    overlap = overlap_line(out)
    if overlap:
        lines += ["## Overlap of the trained model", "", overlap, ""]
    lines += _cost_section(out)
    figure_files = sorted((out / "figures").glob("*.png")) if (out / "figures").exists() else []
    if figure_files:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in figure_files]
        lines.append("")
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def _coverage_section(out: Path) -> list[str]:
    """Basin transitions of the slow torsions in the boundary data (``coverage.json``)."""
    path = out / "coverage.json"
    if not path.exists():
        return []
    coverage = json.loads(path.read_text())
    lines = ["## Boundary coverage", "",
             f"Slow torsions of the {coverage['n_frames']} boundary frames "
             f"({coverage['n_chains']} MD chain(s)): transitions between basins (core sets "
             "with hysteresis) and statistical inefficiency g in frames. A model can only "
             "transfer states the boundary data visit.", ""]
    lines += _table(["torsion", "basins", "transitions", "g (frames)", "widest empty arc"],
                    [[t["name"], str(t["n_basins"]), str(t["transitions"]),
                      f"{t['statistical_inefficiency']:.1f}", _gap(t)]
                     for t in coverage["torsions"]])
    if coverage["flagged"]:
        lines += ["", f"**Warning:** {', '.join(coverage['flagged'])}: fewer than "
                  f"{coverage['min_transitions']} crossings between basins, or part of the "
                  "circle never visited: the boundary data likely miss or misweight states "
                  "(run longer MD, or MD at the top of the range)."]
    return lines + [""]


def _refinement_section(out: Path) -> list[str]:
    """Refined beside plain: for each refined ``samples/<T>K.h5``, the flow's own importance
    sampling (the SMC's first population, before any move) against the SMC result."""
    from .sampling import WeightedTrajectory

    rows = []
    for path in sorted((out / "samples").glob("*K.h5")) if (out / "samples").exists() else []:
        wt = WeightedTrajectory.load(path)
        ref = wt.refinement
        if not ref or "flow_ess" not in ref:
            continue
        rows.append([f"{wt.temperature:g}", f"{ref['flow_ess']:.1%}", f"{wt.ess:.1%}",
                     str(ref["distinct_ancestors"]), str(ref["levels"]),
                     f"{ref['flow_log_partition_estimate']:.3f}",
                     f"{wt.log_partition_estimate:.3f} ± {wt.log_partition_error:.3f}",
                     f"{ref['force_evaluations']:,}"])
    if not rows:
        return []
    lines = ["## Refinement (SMC with the force field) beside the flow alone", "",
             "Plain: importance sampling with the flow's own draws at T (the SMC's first "
             "population). Refined: after annealing to exp(−U/kT) with MCMC moves. ln Z = "
             "ln ∫ exp(−U/kT) dx (positions in nm), the same quantity in both columns: they "
             "agree within errors where the flow covers the ensemble.", ""]
    lines += _table(["T (K)", "ESS plain", "ESS refined", "distinct ancestors", "levels",
                     "ln Z plain", "ln Z refined", "force evaluations"], rows)
    return lines + [""]


def _gap(torsion: dict) -> str:
    """The widest empty arc of a coverage record (absent in runs made before it existed)."""
    gap = torsion.get("largest_gap_deg")
    return "n/a" if gap is None else f"{gap:.0f}°"


def _cost_section(out: Path) -> list[str]:
    stages_file = out / "stages.json"
    if not stages_file.exists():
        return []
    stages = json.loads(stages_file.read_text())
    rows = [[name, f"{record.get('seconds', float('nan')):.1f}",
             f"{record.get('energy_evaluations', 0):,}"]
            for name, record in stages.items() if name != "report"]
    total_s = sum(r.get("seconds", 0.0) for r in stages.values())
    total_e = sum(r.get("energy_evaluations", 0) for r in stages.values())
    rows.append(["**total**", f"{total_s:.1f}", f"{total_e:,}"])
    lines = ["## Cost", "",
             "Energy evaluations are OpenMM force/energy calls (MD steps for the boundary).", ""]
    lines += _table(["stage", "wall time (s)", "energy evaluations"], rows)
    lines.append("")
    history = out / "training_history.csv"
    if history.exists():
        rows = _read_csv(history)
        if rows:
            last = rows[-1]
            lines += [f"Training: {last['step']} steps, {last.get('skipped', '0')} skipped "
                      f"(non-finite), last TRADE residual {float(last['residual']):.3g}, "
                      f"{int(float(last['energy_evaluations'])):,} energy evaluations.", ""]
    return lines


def _redraw_figures(out: Path) -> None:
    from .sampling import WeightedTrajectory
    from .systems import system_from_spec

    files = sorted((out / "samples").glob("*K.h5"))
    if not files:
        raise InputError(f"{out}/samples holds no weighted trajectories to draw")
    trajectories = {float(p.stem[:-1]): WeightedTrajectory.load(p) for p in files}
    trajectories = dict(sorted(trajectories.items()))
    with open(out / "config.toml", "rb") as handle:
        spec = tomllib.load(handle)["system"]
    write_figures(out, system_from_spec(spec), trajectories)


__all__ = ["overlap_line", "write_figures", "write_report"]
