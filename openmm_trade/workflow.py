"""RunWorkflow: the staged pipeline behind ``openmm-trade run`` and ``openmm-trade demo``.

Stages, each writing into the output directory and recorded in ``stages.json`` when done::

    boundary     boundary.h5             MD at T0 (or the user's trajectories), with energies
                 coverage.json           basin transitions of the slow torsions (flagged < 10)
    training     model.pt, checkpoints/  TemperatureFlow fitted by NLL at T0 + TRADE
                 training_history.csv
    sampling     samples/<T>K.h5         weighted trajectories at every target temperature
    free_energy  free_energy.csv         Δf(T), ⟨U⟩, C_v, ESS; populations.csv
    figures      figures/*.png           Ramachandran panels, ESS, Δf, populations
    report       report.md               summary of the run and its cost

``config.toml`` (the validated configuration) and ``run.log`` are written first. With
``resume=True`` finished stages are skipped and an interrupted training continues from its
last checkpoint.

Example
-------
>>> from openmm_trade.config import validate
>>> cfg = validate({"system": {"name": "alanine-dipeptide-vacuum"}})
>>> RunWorkflow.STAGES[0], RunWorkflow.STAGES[-1]
('boundary', 'report')
"""

from __future__ import annotations

import json
import logging
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

from .config import RunConfig
from .errors import ConfigError, InputError
from .files import write_text_atomic
from .run_directory import RunDirectory, temperature_label
from .systems import system_from_spec

log = logging.getLogger("openmm_trade.run")



class RunWorkflow:
    """Execute a :class:`~openmm_trade.config.RunConfig` into an output directory.

    Parameters
    ----------
    config : RunConfig
        A validated configuration.
    out : path
        Output directory. It must be new or empty unless ``resume`` is true.
    resume : bool
        Skip finished stages; continue an interrupted training from its checkpoint.
    quiet : bool
        No progress bars.
    """

    STAGES = ("boundary", "training", "sampling", "free_energy", "figures", "report")

    def __init__(self, config: RunConfig, out, resume: bool = False, quiet: bool = False):
        self.config = config
        self.run = RunDirectory(out)
        self.out = self.run.root
        self.resume = resume
        self.quiet = quiet
        self._msys = None
        self._energy = None
        self._check_output_directory()

    # ------------------------------------------------------------------ bookkeeping
    def _check_output_directory(self) -> None:
        config_file = self.run.config
        if self.out.exists() and any(self.out.iterdir()):
            if not self.resume:
                raise InputError(
                    f"out directory {self.out} is not empty; pass --resume to continue the run "
                    "there, or choose a new --out"
                )
            # compared as values: the order of the keys in the file does not matter
            if config_file.exists() and tomllib.loads(config_file.read_text()) != \
                    tomllib.loads(self.config.to_toml()):
                raise ConfigError(
                    f"{config_file}: the configuration differs from the one of the run being "
                    "resumed; resume with the same configuration or choose a new --out"
                )

    def finished_stages(self) -> dict:
        """Stage name -> record (seconds, energy evaluations, ...) of finished stages."""
        return self.run.finished_stages()

    @property
    def msys(self):
        """The MolecularSystem of the configuration (built once)."""
        if self._msys is None:
            self._msys = system_from_spec(self.config.system)
        return self._msys

    @property
    def energy(self):
        """The OpenMMEnergy of the run (workers started on first use)."""
        if self._energy is None:
            from .energy import OpenMMEnergy

            compute = self.config.compute
            self._energy = OpenMMEnergy(self.msys, platform=compute["platform"],
                                        n_workers=compute["n_workers"])
        return self._energy

    @property
    def targets(self) -> list[float]:
        return [float(t) for t in self.config.temperatures["targets"]]

    # ------------------------------------------------------------------ driver
    def execute(self) -> dict:
        """Run every unfinished stage; returns the stage records."""
        import torch

        self.msys  # noqa: B018 - build (and check) the system before anything is written
        self.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run.config, self.config.to_toml())
        handler = logging.FileHandler(self.run.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger("openmm_trade")
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        torch.set_num_threads(self.config.compute["torch_threads"])
        try:
            for stage in self.STAGES:
                if stage in self.finished_stages():
                    log.info("stage %s: already finished, skipped", stage)
                    continue
                run_stage(self.run, stage, getattr(self, f"_stage_{stage}"),
                          evaluations=lambda: self._energy.n_evaluations if self._energy else 0)
        finally:
            root.removeHandler(handler)
            handler.close()
            if self._energy is not None:
                self._energy.close()
                self._energy = None
        return self.finished_stages()

    # ------------------------------------------------------------------ stages
    def _stage_boundary(self) -> dict:
        spec = self.config.boundary
        if self.config.simulate_boundary:
            traj, record = simulate_boundary(
                self.msys, self.run, temperature=spec["temperature"], n_frames=spec["n_frames"],
                interval_ps=spec["interval_ps"], equilibration_ps=spec["equilibration_ps"],
                n_chains=spec.get("n_chains"), seed=self.config.compute["seed"],
                platform=self.config.compute["platform"], resume=self.resume, quiet=self.quiet)
        else:
            traj, record = import_boundary(self.msys, self.run, spec["files"],
                                           stride=spec["stride"])
        return {**record, "coverage_ok": check_coverage(self.run, traj, self.msys.n_dof).ok}

    def _stage_training(self) -> dict:
        from . import md

        history = train_model(
            self.msys, self.energy, self.run, md.load_trajectory(self.run.boundary),
            temperature=float(self.config.boundary["temperature"]),
            temperature_range=tuple(float(t) for t in self.config.temperatures["range"]),
            seed=self.config.compute["seed"], model_options=self.config.model,
            training_options=self.config.training, device=self.config.compute["device"],
            resume=self.resume, quiet=self.quiet)
        return {"steps": len(history)}

    def _model(self):
        from .flow import TemperatureFlow

        return TemperatureFlow.load(self.run.model, self.msys)

    def _stage_sampling(self) -> dict:
        from .refine import options_from_config

        return draw_samples(self._model(), self.energy, self.run, self.targets,
                            n=self.config.sampling["n"], seed=self.config.compute["seed"],
                            refine=options_from_config(self.config.sampling),
                            resume=self.resume, quiet=self.quiet)

    def _weighted_trajectories(self) -> dict:
        from .sampling import WeightedTrajectory

        return {
            t: WeightedTrajectory.load(self.run.sample_path(t))
            for t in self.targets
        }

    def _stage_free_energy(self) -> dict:
        from . import cv, free_energy
        from .refine import options_from_config

        table = temperature_profile(
            self._model(), self.energy, self.run, self.targets,
            n=self.config.free_energy["n"], n_bootstrap=self.config.free_energy["n_bootstrap"],
            seed=self.config.compute["seed"], quiet=self.quiet,
            refine=options_from_config(self.config.sampling,
                                       refine=self.config.free_energy["refine"]))
        if cv.has_ramachandran(self.msys.mdtraj_topology):
            populations = free_energy.populations_vs_temperature(
                list(self._weighted_trajectories().values()), cv.RAMACHANDRAN_STATES,
                seed=self.config.compute["seed"])
            populations.to_csv(self.run.populations)
        return {"ess": [float(e) for e in table.ess]}

    def _stage_figures(self) -> dict:
        if not self.config.output["figures"]:
            return {"skipped": True}
        from .report import write_figures

        written = write_figures(self.out, self.msys, self._weighted_trajectories())
        return {"files": [str(Path(p).relative_to(self.out)) for p in written]}

    def _stage_report(self) -> dict:
        from .report import write_report

        write_report(self.out)
        return {}


# ---------------------------------------------------------------------------- the stages
# Each stage is a function of explicit inputs that writes into a RunDirectory: RunWorkflow
# calls them with a configuration's values, the single-stage commands (``openmm-trade md``,
# ``train``, ``sample``, ``free-energy``) with their options, and :func:`run_stage` records
# either in ``stages.json``.

def run_stage(run: RunDirectory, stage: str, work: Callable[[], dict | None],
              evaluations: Callable[[], int] = lambda: 0) -> dict:
    """Run ``work`` as ``stage`` of ``run``: time it, count the energy evaluations it made
    (``evaluations()`` before and after, unless it reports its own) and record it in
    ``stages.json``; returns the record.

    >>> import tempfile
    >>> run = RunDirectory(tempfile.mkdtemp())
    >>> sorted(run_stage(run, "report", lambda: {"pages": 1}))
    ['energy_evaluations', 'pages', 'seconds']
    >>> list(run.finished_stages())
    ['report']
    """
    log.info("stage %s: started", stage)
    start, before = time.perf_counter(), evaluations()
    record = work() or {}
    record["seconds"] = round(time.perf_counter() - start, 2)
    record.setdefault("energy_evaluations", evaluations() - before)
    run.mark_finished(stage, record)
    log.info("stage %s: finished in %.1f s", stage, record["seconds"])
    return record


def simulate_boundary(msys, run: RunDirectory, *, temperature: float, n_frames: int,
                      interval_ps: float, equilibration_ps: float, n_chains: int | None,
                      seed: int, platform: str = "CPU", resume: bool = False,
                      quiet: bool = False):
    """Boundary MD at ``temperature`` into ``run.boundary`` (:func:`openmm_trade.md.simulate`);
    returns the trajectory and the stage record (frames, MD steps as energy evaluations)."""
    from . import md

    traj = md.simulate(msys, temperature=temperature, n_frames=n_frames,
                       interval_ps=interval_ps, equilibration_ps=equilibration_ps, seed=seed,
                       platform=platform, output=run.boundary, resume=resume, quiet=quiet,
                       n_chains=n_chains)
    steps = round(n_frames * interval_ps / md.default_timestep_ps(msys))
    return traj, {"frames": traj.n_frames, "energy_evaluations": steps}


def import_boundary(msys, run: RunDirectory, files, stride: int = 1):
    """The user's MD ``files`` (:func:`openmm_trade.md.load_boundary`) copied into
    ``run.boundary``; returns the trajectory and the stage record."""
    from . import md

    traj = md.load_boundary(files, msys, stride=stride)
    md.save_trajectory(traj, run.boundary)
    return traj, {"frames": traj.n_frames, "energy_evaluations": 0}


def check_coverage(run: RunDirectory, traj, n_dof: int | None = None):
    """Write ``coverage.json`` (see :mod:`openmm_trade.coverage`), log its summary (and one
    warning line naming the flagged torsions, so that a run warns right after its MD without
    printing the summary that the commands print themselves) and return the
    :class:`~openmm_trade.coverage.Coverage` measured (``n_dof``: the molecule's, to check
    the frames per degree of freedom)."""
    from .coverage import measure

    result = measure(traj, n_dof=n_dof)
    write_text_atomic(run.coverage, json.dumps(
        {**result.to_dict(), "summary": result.summary()}, indent=2))
    log.info("%s", result.summary())
    if not result.ok:
        log.warning("boundary coverage flagged (%s); details in %s", ", ".join(result.flagged),
                    run.coverage)
    return result


def train_model(msys, energy, run: RunDirectory, boundary, *, temperature: float,
                temperature_range: tuple[float, float], seed: int,
                model_options: dict | None = None, training_options: dict | None = None,
                device: str = "cpu", resume: bool = False, quiet: bool = False):
    """A TemperatureFlow for ``msys`` trained on ``boundary`` at ``temperature`` (T0) and
    carried over ``temperature_range``: ``run.model``, ``run.checkpoints`` and
    ``run.training_history`` are written; returns the training history.

    ``model_options`` go to :meth:`TemperatureFlow.for_system`, ``training_options`` to
    :func:`openmm_trade.train` (``seed`` unless they set one)."""
    from .flow import TemperatureFlow
    from .training import TrainingConfig, train

    model = TemperatureFlow.for_system(
        msys, boundary, temperature_range=temperature_range,
        reference_temperature=temperature, device=device, **(model_options or {}))
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    history = train(
        model, energy, boundary=boundary, boundary_temperature=temperature,
        config=TrainingConfig(seed=seed), temperature_range=temperature_range,
        checkpoint=run.checkpoints, resume=resume, history_csv=run.training_history,
        quiet=quiet, **(training_options or {}))
    model.save(run.model)
    return history


def draw_samples(model, energy, run: RunDirectory, temperatures, *, n: int, seed: int,
                 refine=None, resume: bool = False, quiet: bool = False) -> dict:
    """Weighted trajectories of ``n`` samples at each temperature, saved as
    ``run.sample_path(T)`` (those already there are kept with ``resume``); returns
    ``{label: {"ess": ..., ...}}`` of the ones drawn (with ``overlap_sigma``, the
    refinement's force evaluations where known and, for a molecule with rings, what broken
    rings cost, :func:`openmm_trade.metrics.ring_closure_cost`)."""
    from .metrics import ring_closure_cost
    from .sampling import sample

    summary = {}
    rings = _ring_yardstick(model, run)
    for temperature in temperatures:
        path = run.sample_path(temperature)
        if resume and path.exists():
            continue
        wt = sample(model, energy, temperature=temperature, n=n, seed=seed, quiet=quiet,
                    refine=refine)
        path.parent.mkdir(parents=True, exist_ok=True)
        wt.save(path)
        row = summary[temperature_label(temperature)] = {"ess": float(wt.ess)}
        if wt.refinement is not None:
            row["force_evaluations"] = wt.refinement["force_evaluations"]
            row["levels"] = wt.refinement["levels"]
            row["force_evaluations_per_sample"] = wt.refinement[
                "force_evaluations_per_sample"]
        if wt.overlap_sigma is not None:
            row["overlap_sigma"] = float(wt.overlap_sigma)
        if rings is not None:
            try:
                row["ring_closure"] = ring_closure_cost(
                    wt.samples, wt.log_weights, model.system, rings,
                    zmatrix=model.coordinates.zmatrix)
            except InputError as error:  # e.g. a ring-closing bond held fixed in the MD
                log.warning("ring closure not measured: %s", error)
    return summary


def _ring_yardstick(model, run: RunDirectory):
    """The boundary frames, whose ring-closing bond lengths say whether a sample's ring is
    broken (:func:`openmm_trade.metrics.ring_closure_cost`); ``None`` when the molecule has
    no ring or the run has no boundary file."""
    from . import md
    from .metrics import ring_closing_bonds

    if not run.boundary.exists() or not len(
            ring_closing_bonds(model.system, model.coordinates.zmatrix)):
        return None
    return md.load_trajectory(run.boundary)


def temperature_profile(model, energy, run: RunDirectory, temperatures, *, n: int, seed: int,
                        n_bootstrap: int | None = None, refine=None, quiet: bool = False):
    """Δf(T), ⟨U⟩, C_v and ESS (:func:`openmm_trade.free_energy.temperature_profile`)
    written to ``run.free_energy``; returns the table."""
    from . import free_energy

    options = {} if n_bootstrap is None else {"n_bootstrap": n_bootstrap}
    table = free_energy.temperature_profile(model, energy, temperatures=list(temperatures),
                                            n=n, seed=seed, quiet=quiet, refine=refine,
                                            **options)
    run.root.mkdir(parents=True, exist_ok=True)
    table.to_csv(run.free_energy)
    return table


def summary_table(out) -> str:
    """The per-temperature table (T, ESS, Δf, ⟨U⟩) of a finished run, as plain text, and
    the trained model's overlap σ at T0 (:func:`openmm_trade.report.overlap_line`).

    Temperatures with fewer than ``report.LOW_EFFECTIVE_SAMPLES`` effective samples are
    marked ``(!)``: their estimates are unreliable.
    """
    import csv

    from .report import LOW_EFFECTIVE_SAMPLES, overlap_line

    run = RunDirectory(out)
    with open(run.free_energy) as handle:
        rows = list(csv.DictReader(handle))
    n_drawn = 0
    if run.config.exists():
        n_drawn = int(run.read_config().get("free_energy", {}).get("n", 0))
    header = f"{'T (K)':>10} {'ESS':>7} {'Δf (kT)':>18} {'<U> (kJ/mol)':>20}"
    lines = [header, "-" * len(header)]
    flagged = False
    for row in rows:
        low = n_drawn and float(row["ess"]) * n_drawn < LOW_EFFECTIVE_SAMPLES
        flagged = flagged or bool(low)
        lines.append(
            f"{float(row['temperature']):6.1f}{' (!)' if low else '    '} "
            f"{float(row['ess']):7.1%} "
            f"{float(row['delta_f_kT']):8.3f} ± {float(row['delta_f_kT_err']):7.3f} "
            f"{float(row['mean_energy']):10.2f} ± {float(row['mean_energy_err']):7.2f}")
    if flagged:
        lines.append(f"(!) fewer than {LOW_EFFECTIVE_SAMPLES} effective samples: unreliable")
    overlap = overlap_line(out)
    if overlap:
        lines.append(overlap)
    return "\n".join(lines)


__all__ = ["RunWorkflow", "check_coverage", "draw_samples", "import_boundary", "run_stage",
           "simulate_boundary", "summary_table", "system_from_spec", "temperature_label",
           "temperature_profile", "train_model"]
