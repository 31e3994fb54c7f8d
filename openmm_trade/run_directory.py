"""The layout of a run's output directory, written down once.

``openmm-trade run`` / ``demo`` (:class:`~openmm_trade.workflow.RunWorkflow`), the single-stage
commands and the report all read and write through :class:`RunDirectory`::

    config.toml              the validated configuration of the run
    run.log                  the run's log
    stages.json              stages done, with their wall time and cost
    boundary.h5              boundary MD at T0, with energies
    coverage.json            basin transitions of the slow torsions
    model.pt, checkpoints/   the trained TemperatureFlow and its training checkpoints
    training_history.csv     per-step training record
    samples/<T>K.h5          weighted trajectories, one per temperature
    free_energy.csv          Δf(T), ⟨U⟩, C_v, ESS
    populations.csv          state populations against temperature (peptides)
    figures/                 PNG figures
    report.md                the run report

Example
-------
>>> import tempfile
>>> run = RunDirectory(tempfile.mkdtemp())
>>> run.sample_path(450.0).name, run.free_energy.name
('450K.h5', 'free_energy.csv')
>>> run.sample_paths(), run.finished_stages()
({}, {})
>>> run.mark_finished("boundary", {"seconds": 1.5})
>>> run.finished_stages()
{'boundary': {'seconds': 1.5}}
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .files import write_text_atomic
from .units import temperature_label


@dataclass(frozen=True)
class RunDirectory:
    """A run's output folder: where each file of a run lives, and reading them back.

    Parameters
    ----------
    root : path
        The folder (need not exist yet).
    """

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root).expanduser())

    # -- files of the stages ---------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def log(self) -> Path:
        return self.root / "run.log"

    @property
    def stages(self) -> Path:
        return self.root / "stages.json"

    @property
    def boundary(self) -> Path:
        return self.root / "boundary.h5"

    @property
    def coverage(self) -> Path:
        return self.root / "coverage.json"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def training_history(self) -> Path:
        return self.root / "training_history.csv"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def free_energy(self) -> Path:
        return self.root / "free_energy.csv"

    @property
    def populations(self) -> Path:
        return self.root / "populations.csv"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def sample_path(self, temperature: float) -> Path:
        """``samples/<T>K.h5`` for ``temperature`` (K)."""
        return self.samples / f"{temperature_label(temperature)}.h5"

    # -- reading back ----------------------------------------------------------------------
    def require(self) -> RunDirectory:
        """This directory, or :class:`InputError` when it holds no run (no ``config.toml``)."""
        if not self.config.exists():
            raise InputError(f"{self.root} is not a run directory (no config.toml)")
        return self

    def read_config(self) -> dict:
        """The run's ``config.toml`` as a dict."""
        with open(self.require().config, "rb") as handle:
            return tomllib.load(handle)

    def finished_stages(self) -> dict:
        """Stage name -> record (seconds, energy evaluations, ...) of the finished stages
        (``stages.json``; empty when none has finished)."""
        if self.stages.exists():
            return json.loads(self.stages.read_text())
        return {}

    def mark_finished(self, stage: str, record: dict) -> None:
        """Record ``stage`` as finished in ``stages.json`` (written atomically)."""
        done = self.finished_stages()
        done[stage] = record
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.stages, json.dumps(done, indent=2))

    def sample_paths(self) -> dict[float, Path]:
        """``{temperature: file}`` of the weighted trajectories, sorted by temperature; each
        temperature read from its file, not from its name."""
        from .sampling import WeightedTrajectory

        files = sorted(self.samples.glob("*.h5")) if self.samples.is_dir() else []
        found = {WeightedTrajectory.load(p, lazy=True).temperature: p for p in files}
        return dict(sorted(found.items()))


__all__ = ["RunDirectory", "temperature_label"]
