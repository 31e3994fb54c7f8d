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
from pathlib import Path

from .errors import InputError
from .run_directory import RunDirectory

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
    path = RunDirectory(out).training_history
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


def _reference_temperature(run: RunDirectory) -> float:
    return float(run.read_config()["boundary"]["temperature"])


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

    run = RunDirectory(out)
    figures = run.figures
    figures.mkdir(parents=True, exist_ok=True)
    profile = free_energy.TemperatureProfile.from_csv(
        run.free_energy, reference_temperature=_reference_temperature(run))
    written = [
        plots.ess_vs_temperature(profile, figures / "ess.png"),
        plots.delta_f_vs_temperature(profile, figures / "delta_f.png"),
        plots.energy_histograms(list(trajectories.values()), figures / "energies.png"),
    ]
    if cv.has_ramachandran(msys.mdtraj_topology):
        surfaces = [free_energy.surface(wt, cv.ramachandran, bins=36, n_bootstrap=20, seed=0)
                    for wt in trajectories.values()]
        written.append(plots.ramachandran_panels(surfaces, figures / "ramachandran.png"))
        if run.populations.exists():
            table = free_energy.PopulationProfile.from_csv(run.populations)
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

    run = RunDirectory(out).require()
    if figures:
        _redraw_figures(run)
    config = run.read_config()
    system = config["system"].get("name") or config["system"].get("pdb")
    lines = [
        "# openmm-trade run report", "",
        f"System: `{system}`; boundary MD at T0 = {config['boundary']['temperature']:g} K; "
        f"temperature range {config['temperatures']['range'][0]:g}–"
        f"{config['temperatures']['range'][1]:g} K.", "",
    ]
    lines += _coverage_section(run)
    if run.free_energy.exists():
        rows = _read_csv(run.free_energy)
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
    if run.populations.exists():
        rows = _read_csv(run.populations)
        states = [k for k in rows[0] if k != "temperature" and not k.endswith("_err")]
        lines += ["## Conformational populations (Ramachandran regions)", ""]
        lines += _table(["T (K)"] + states,
                        [[f"{float(r['temperature']):g}"]
                         + [f"{float(r[s]):.3f} ± {float(r[s + '_err']):.3f}" for s in states]
                         for r in rows])
        lines.append("")
    lines += _refinement_section(run)
    lines += _ring_section(run)
    overlap = overlap_line(run.root)
    if overlap:
        lines += ["## Overlap of the trained model", "", overlap, ""]
    lines += _cost_section(run)
    figure_files = sorted(run.figures.glob("*.png")) if run.figures.exists() else []
    if figure_files:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}](figures/{p.name})" for p in figure_files]
        lines.append("")
    path = run.report
    write_text_atomic(path, "\n".join(lines))
    return path


def _coverage_section(run: RunDirectory) -> list[str]:
    """Basin transitions of the slow torsions in the boundary data (``coverage.json``)."""
    path = run.coverage
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
        if coverage.get("needed"):  # absent in runs made before it existed
            lines += ["", coverage["needed"]]
    return lines + [""]


def _refinement_section(run: RunDirectory) -> list[str]:
    """Refined beside plain: for each refined ``samples/<T>K.h5``, the flow's own importance
    sampling (the SMC's first population, before any move) against the SMC result."""
    from .sampling import WeightedTrajectory

    rows = []
    for path in run.sample_paths().values():
        wt = WeightedTrajectory.load(path, lazy=True)  # weights and metadata; no conformations
        ref = wt.refinement
        if not ref or "flow_ess" not in ref:
            continue
        rows.append([f"{wt.temperature:g}", f"{ref['flow_ess']:.1%}", f"{wt.ess:.1%}",
                     f"{wt.lineage_ess:.1%} ({ref['distinct_ancestors']})", str(ref["levels"]),
                     f"{ref['flow_log_partition_estimate']:.3f}",
                     f"{wt.log_partition_estimate:.3f} ± {wt.log_partition_error:.3f}",
                     f"{ref['force_evaluations']:,}"])
    if not rows:
        return []
    lines = ["## Refinement (SMC with the force field) beside the flow alone", "",
             "Plain: importance sampling with the flow's own draws at T (the SMC's first "
             "population). Refined: after annealing to exp(−U/kT) with MCMC moves. ln Z = "
             "ln ∫ exp(−U/kT) dx (positions in nm), the same quantity in both columns: they "
             "agree within errors where the flow covers the ensemble. ESS over lineages: "
             "the refined weights summed over the flow draws each sample descends from "
             "(distinct draws in brackets); errors of refined estimates resample these "
             "lineages, and where this ESS is low so is the information, whatever the "
             "refined ESS.", ""]
    lines += _table(["T (K)", "ESS plain", "ESS refined", "ESS over lineages (draws)", "levels",
                     "ln Z plain", "ln Z refined", "force evaluations"], rows)
    return lines + [""]


def _ring_section(run: RunDirectory) -> list[str]:
    """Broken rings among the drawn samples (the sampling stage's ``ring_closure`` records,
    :func:`openmm_trade.metrics.ring_closure_cost`); empty for a molecule without rings."""
    sampling = run.finished_stages().get("sampling", {})
    records = {label: row for label, row in sampling.items()
               if isinstance(row, dict) and row.get("ring_closure")}
    if not records:
        return []
    k = next(iter(records.values()))["ring_closure"]["k"]
    lines = ["## Ring closure", "",
             "The bond that closes a ring is not one of the flow's internal coordinates, so "
             f"a sample can leave it stretched. Broken: a ring-closing bond more than {k:g} σ "
             "off its length in the boundary MD (an MD frame's median is about 0.67 σ). The "
             "weights discard broken samples, so they cost ESS rather than correctness; the "
             "ESS of the intact samples is roughly what a model that closed its rings would "
             "reach. Refinement (`--refine`) closes them.", ""]
    lines += _table(
        ["samples", "broken", "their weight", "median deviation (σ)", "ESS",
         "ESS of intact samples"],
        [[label, f"{r['ring_closure']['broken_fraction']:.1%}",
          f"{r['ring_closure']['broken_weight']:.2%}",
          f"{r['ring_closure']['median_sd']:.2f}", f"{r['ess']:.1%}",
          f"{r['ring_closure']['ess_intact']:.1%}"] for label, r in records.items()])
    return lines + [""]


def _gap(torsion: dict) -> str:
    """The widest empty arc of a coverage record (absent in runs made before it existed)."""
    gap = torsion.get("largest_gap_deg")
    return "n/a" if gap is None else f"{gap:.0f}°"


def _cost_section(run: RunDirectory) -> list[str]:
    stages = run.finished_stages()
    if not stages:
        return []
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
    history = run.training_history
    if history.exists():
        rows = _read_csv(history)
        if rows:
            last = rows[-1]
            lines += [f"Training: {last['step']} steps, {last.get('skipped', '0')} skipped "
                      f"(non-finite), last TRADE residual {float(last['residual']):.3g}, "
                      f"{int(float(last['energy_evaluations'])):,} energy evaluations.", ""]
    return lines


def _redraw_figures(run: RunDirectory) -> None:
    from .sampling import WeightedTrajectory
    from .systems import system_from_spec

    files = run.sample_paths()
    if not files:
        raise InputError(f"{run.samples} holds no weighted trajectories to draw")
    trajectories = {t: WeightedTrajectory.load(p) for t, p in files.items()}
    write_figures(run.root, system_from_spec(run.read_config()["system"]), trajectories)


__all__ = ["overlap_line", "write_figures", "write_report"]
