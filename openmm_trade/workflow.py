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

    @property
    def stages_file(self) -> Path:
        return self.run.stages

    def finished_stages(self) -> dict:
        """Stage name -> record (seconds, energy evaluations, ...) of finished stages."""
        if self.stages_file.exists():
            return json.loads(self.stages_file.read_text())
        return {}

    def _mark_finished(self, stage: str, record: dict) -> None:
        done = self.finished_stages()
        done[stage] = record
        write_text_atomic(self.stages_file, json.dumps(done, indent=2))

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
                log.info("stage %s: started", stage)
                start = time.perf_counter()
                evaluations = self._energy.n_evaluations if self._energy else 0
                record = getattr(self, f"_stage_{stage}")() or {}
                record["seconds"] = round(time.perf_counter() - start, 2)
                record.setdefault(
                    "energy_evaluations",
                    (self._energy.n_evaluations if self._energy else 0) - evaluations)
                self._mark_finished(stage, record)
                log.info("stage %s: finished in %.1f s", stage, record["seconds"])
        finally:
            root.removeHandler(handler)
            handler.close()
            if self._energy is not None:
                self._energy.close()
                self._energy = None
        return self.finished_stages()

    # ------------------------------------------------------------------ stages
    def _stage_boundary(self) -> dict:
        from . import md

        spec = self.config.boundary
        path = self.run.boundary
        if self.config.simulate_boundary:
            traj = md.simulate(
                self.msys, temperature=spec["temperature"], n_frames=spec["n_frames"],
                interval_ps=spec["interval_ps"], equilibration_ps=spec["equilibration_ps"],
                seed=self.config.compute["seed"], platform=self.config.compute["platform"],
                output=path, resume=self.resume, quiet=self.quiet,
                n_chains=spec.get("n_chains"))
            steps = round(spec["n_frames"] * spec["interval_ps"] / md.default_timestep_ps(
                self.msys))
            record = {"frames": traj.n_frames, "energy_evaluations": steps}
        else:
            traj = md.load_boundary(spec["files"], self.msys, stride=spec["stride"])
            md.save_trajectory(traj, path)
            record = {"frames": traj.n_frames, "energy_evaluations": 0}
        return {**record, "coverage_ok": self._check_coverage(traj)}

    def _check_coverage(self, traj) -> bool:
        """Write ``coverage.json`` (see :mod:`openmm_trade.coverage`) and log its summary."""
        from .coverage import measure

        result = measure(traj)
        write_text_atomic(self.run.coverage, json.dumps(
            {**result.to_dict(), "summary": result.summary()}, indent=2))
        (log.info if result.ok else log.warning)("%s", result.summary())
        return result.ok

    def _boundary(self):
        from . import md

        return md.load_trajectory(self.run.boundary)

    def _stage_training(self) -> dict:
        from .flow import TemperatureFlow
        from .training import TrainingConfig, train

        t0 = float(self.config.boundary["temperature"])
        t_range = tuple(float(t) for t in self.config.temperatures["range"])
        boundary = self._boundary()
        model = TemperatureFlow.for_system(
            self.msys, boundary, temperature_range=t_range, reference_temperature=t0,
            device=self.config.compute["device"], **self.config.model)
        checkpoints = self.run.checkpoints
        checkpoints.mkdir(exist_ok=True)
        # the run's seed unless [training] sets one
        history = train(
            model, self.energy, boundary=boundary, boundary_temperature=t0,
            config=TrainingConfig(seed=self.config.compute["seed"]), temperature_range=t_range,
            checkpoint=checkpoints, resume=self.resume,
            history_csv=self.run.training_history, quiet=self.quiet,
            **self.config.training)
        model.save(self.run.model)
        return {"steps": len(history)}

    def _model(self):
        from .flow import TemperatureFlow

        return TemperatureFlow.load(self.run.model, self.msys)

    def _stage_sampling(self) -> dict:
        from .refine import options_from_config
        from .sampling import sample

        model = self._model()
        summary = {}
        for temperature in self.targets:
            path = self.run.sample_path(temperature)
            if self.resume and path.exists():
                continue
            wt = sample(model, self.energy, temperature=temperature,
                        n=self.config.sampling["n"], seed=self.config.compute["seed"],
                        quiet=self.quiet, refine=options_from_config(self.config.sampling))
            path.parent.mkdir(exist_ok=True)
            wt.save(path)
            summary[temperature_label(temperature)] = {"ess": float(wt.ess)}
            if wt.refinement is not None:
                summary[temperature_label(temperature)]["force_evaluations"] = (
                    wt.refinement["force_evaluations"])
        return summary

    def _weighted_trajectories(self) -> dict:
        from .sampling import WeightedTrajectory

        return {
            t: WeightedTrajectory.load(self.run.sample_path(t))
            for t in self.targets
        }

    def _stage_free_energy(self) -> dict:
        from . import cv, free_energy
        from .refine import options_from_config

        table = free_energy.temperature_profile(
            self._model(), self.energy, temperatures=self.targets,
            n=self.config.free_energy["n"], n_bootstrap=self.config.free_energy["n_bootstrap"],
            seed=self.config.compute["seed"], quiet=self.quiet,
            refine=options_from_config(self.config.sampling,
                                       refine=self.config.free_energy["refine"]))
        table.to_csv(self.run.free_energy)
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


__all__ = ["RunWorkflow", "summary_table", "system_from_spec", "temperature_label"]
