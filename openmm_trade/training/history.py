"""The record of a training run: :class:`TrainingHistory` (per-step values, CSV)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..files import PathLike, write_text_atomic


@dataclass
class TrainingHistory:
    """Per-step records of a training run (also written as CSV).

    Each record is a dict with ``step`` (1-based), ``loss``, ``boundary`` (NLL + weighted
    reverse KL), ``trade``, ``kl`` (the reverse KL at T0, NaN when off), ``kl_weight``,
    ``trade_weight``, ``learning_rate``, ``grad_norm``, ``t_low``/``t_high`` (current
    condition bounds, K), ``residual`` (RMS TRADE residual of the step, ``k_B T0``),
    ``skipped``, ``energy_evaluations`` (cumulative), ``nonfinite_energies`` (cumulative),
    ``wall_time`` (s), and at validation steps ``ess_<T>K``, ``residual_<T>K`` and
    ``mean_energy_<T>K`` per monitor temperature. With held-out frames, ``holdout_nll``
    (their mean NLL at T0, nats), ``overlap_sigma`` (σ of their log-weights, see
    :func:`~openmm_trade.metrics.overlap_sigma`) and ``holdout_frames`` at held-out
    evaluations, validations and the last step (always describing the parameters kept
    after the step); at the end of the likelihood phase ``restored_step``, the step whose
    parameters were kept (``restored_from_nll``: the held-out NLL of those dropped).

    Examples
    --------
    >>> h = TrainingHistory()
    >>> h.append({"step": 1, "loss": 2.0}); h.append({"step": 2, "loss": 1.0, "ess_300K": 0.5})
    >>> h["loss"].tolist(), h["ess_300K"].tolist()
    ([2.0, 1.0], [nan, 0.5])
    >>> len(h), h.columns
    (2, ['step', 'loss', 'ess_300K'])
    """

    records: list[dict] = field(default_factory=list)
    stop_reason: str = ""

    def append(self, record: dict) -> None:
        """Add the record of one step."""
        self.records.append(dict(record))

    def __len__(self) -> int:
        return len(self.records)

    @property
    def columns(self) -> list[str]:
        """All column names, in order of first appearance."""
        return list(dict.fromkeys(key for record in self.records for key in record))

    def __getitem__(self, column: str) -> np.ndarray:
        """One column as a float array (NaN where a record lacks it)."""
        if column not in self.columns:
            raise KeyError(f"no column {column!r}; columns are {self.columns}")
        return np.array([float(r.get(column, math.nan)) for r in self.records])

    @property
    def last(self) -> dict:
        """The latest record (empty before the first step)."""
        return dict(self.records[-1]) if self.records else {}

    @property
    def validation(self) -> list[dict]:
        """The records of the steps where validation ran."""
        return [r for r in self.records if any(k.startswith("ess_") for k in r)]

    def _latest(self, column: str) -> float:
        values = [r[column] for r in self.records if column in r]
        return float(values[-1]) if values else math.nan

    @property
    def overlap_sigma(self) -> float:
        """The latest overlap σ on the held-out frames (NaN without them)."""
        return self._latest("overlap_sigma")

    @property
    def restored_step(self) -> int | None:
        """Step whose parameters the likelihood phase kept (None before its end or without
        held-out frames)."""
        value = self._latest("restored_step")
        return None if math.isnan(value) else int(value)

    @property
    def summary(self) -> dict:
        """Overlap σ, held-out NLL (latest) and restored step, e.g. for model metadata."""
        return {"overlap_sigma": self.overlap_sigma, "holdout_nll": self._latest("holdout_nll"),
                "holdout_frames": int(np.nan_to_num(self._latest("holdout_frames"))),
                "restored_step": self.restored_step}

    @property
    def skipped_steps(self) -> int:
        """Number of skipped steps."""
        return int(sum(r.get("skipped", 0) for r in self.records))

    @property
    def energy_evaluations(self) -> int:
        """Energy evaluations spent (cumulative at the last step)."""
        return int(self.last.get("energy_evaluations", 0))

    def to_csv(self, path: PathLike) -> Path:
        """Write all records as CSV (atomically); returns the path."""
        columns = self.columns
        lines = [",".join(columns)]
        for record in self.records:
            lines.append(",".join(_csv_value(record.get(c, "")) for c in columns))
        write_text_atomic(path, "\n".join(lines) + "\n")
        return Path(path)

    def state_dict(self) -> dict:
        """Records and stop reason (for checkpoints)."""
        return {"records": copy.deepcopy(self.records), "stop_reason": self.stop_reason}

    @classmethod
    def from_state_dict(cls, state: dict) -> TrainingHistory:
        """Rebuild from :meth:`state_dict`."""
        return cls(copy.deepcopy(list(state["records"])), state.get("stop_reason", ""))


def _csv_value(value) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)
