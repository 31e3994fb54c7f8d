"""Training: the TRADE loop with schedules, validation, checkpoints and exact resume.

:func:`train` (and the :class:`Trainer` behind it) fits a conditional density model
``p_θ(x | T)`` to boundary samples at ``T0`` and spreads it over a temperature range with
the TRADE objective of :mod:`openmm_trade.trade`::

    L(t) = L_boundary(T0) + λ(t) · L_TRADE

Schedule (``t`` is the step; the settings named here are the fields of
:class:`TrainingConfig`, where their defaults are documented):

* ``t < warmup_steps``: boundary fit only (NLL of the data at ``T0``, or the reverse KL at
  ``T0`` when ``boundary=None``); no energies are evaluated in this phase.
* Held-out frames: the last ``holdout_fraction`` of the boundary frames of each MD chain
  (in time, the order given; :func:`holdout_split`) are not trained on. During the
  likelihood phase (the warmup; the whole run when ``trade_weight=0``) their NLL at ``T0``
  is evaluated every ``holdout_every`` steps and at the phase's end; the parameters with
  the lowest held-out NLL are kept and restored at the end of the phase, so TRADE starts
  from the best fit the data allow instead of an over-fitted one (``holdout_nll``,
  ``restored_step`` in the history). The overlap σ, the standard deviation of ``log w = -β0
  U - log p_θ(x|T0)`` on the held-out frames (:func:`openmm_trade.metrics.overlap_sigma`,
  ``ESS ≈ exp(-σ²)``), is recorded with every held-out evaluation, at validations and at
  the end.
* then ``λ(t)`` ramps linearly from 0 to ``trade_weight`` over ``ramp_steps`` while the
  condition range widens from ``initial_width`` (a fraction of the way from ``T0`` to
  each end, in β) to the whole range over ``widen_steps``. Conditions are drawn uniformly
  in β or in log T (``condition_sampling``) between the current bounds, so ``T0`` may sit
  at the bottom, the top or inside the range.
* With data, ``kl_weight > 0`` adds the reverse KL at ``T0``,
  ``E_{x~p(·|T0)}[β0 U(x) + log p_θ(x|T0)]``, to the NLL (Noé et al. 2019): from step
  ``kl_start`` its weight ramps linearly to ``kl_weight`` over ``kl_ramp_steps``.
  Gradients flow through the forces. The force field then corrects the model where a few
  thousand correlated MD frames cannot, which is what limits the ESS of a likelihood-only
  fit (over-fitting).
* Reduced energies more than ``energy_cutoff`` k_B T0 above the boundary data's mean
  (above 0 without data) enter the reverse KL, the TRADE residual and the ⟨U⟩ grid
  logarithmically (:func:`~openmm_trade.trade.soften_energies`): a sterically clashing
  flow sample then cannot dominate a step.
* AdamW (``weight_decay``; 0 is plain Adam) with a cosine (or step) learning-rate
  schedule and gradient-norm clipping.

Robustness: a step whose loss, gradient or energies are non-finite is skipped — the
parameters and the optimiser state are not touched — and counted (``skipped_steps``,
``nonfinite_energies``); after ``max_consecutive_skips`` skips in a row training stops with
:class:`TrainingDivergedError`. Importance samples with infinite energy simply get zero
weight in the ⟨U⟩ estimates.

Reproducibility: every random draw of the loop (conditions, minibatches, flow samples when
the model takes a ``generator``) comes from one ``torch.Generator`` seeded with ``seed``;
validation draws from its own generator (seeded from ``seed`` and the step) inside a forked
global RNG, so validating does not change the training trajectory. Checkpoints hold the
model, optimiser, scheduler, step, every RNG state (the loop's, torch's global, numpy's,
Python's), the ⟨U⟩ grid, the counters and the history; ``resume=`` continues bit-for-bit on
CPU: the parameters after resuming equal those of an uninterrupted run.

Energy evaluations are counted from ``energy.n_evaluations`` and recorded per step
(``energy_evaluations``, cumulative, including validation); ``energy_budget`` stops training
once that many have been spent.

Threads: torch uses ``torch.get_num_threads()`` threads; with OpenMM energies on 2 cores,
``torch.set_num_threads(1)`` and ``OpenMMEnergy(..., n_workers=1)`` share them sensibly.

Example
-------
>>> import torch
>>> from openmm_trade.flow import ConditionalFlow
>>> from openmm_trade.toys import DoubleWell1D
>>> toy = DoubleWell1D()
>>> model = ConditionalFlow(toy.domains, 300.0, (300.0, 600.0), hidden=8, n_blocks=1)
>>> history = train(model, toy, boundary=toy.sample(2000, 300.0, seed=0),
...                 boundary_temperature=300.0, steps=20, batch_size=64,
...                 trade_batch_size=32, warmup_steps=10, ramp_steps=5, quiet=True)
>>> len(history), history.skipped_steps
(20, 0)
"""

from __future__ import annotations

import copy
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .energy import Energy
from .errors import CheckpointError, InputError, OpenMMTradeError, one_line
from .files import PathLike, atomic_write_path, unreadable_torch_file, write_text_atomic
from .md.trajectory import CHAIN_ATTRIBUTE
from .metrics import overlap_log_weights
from .model import check_model
from .progress import shown
from .trade import EVALUATION_POINTS, TradeObjective
from .units import (
    beta_from_temperature,
    check_temperature,
    temperature_from_beta,
    temperature_label,
)

__all__ = ["DEFAULT_HOLDOUT_FRACTION", "DEFAULT_KL_WEIGHT", "DEFAULT_STEPS",
           "DEFAULT_TRADE_WEIGHT", "Trainer",
           "TrainingConfig", "TrainingDivergedError", "TrainingHistory", "train"]

#: default final weight λ of the TRADE term (see ``train``'s ``trade_weight``)
DEFAULT_TRADE_WEIGHT = 0.3

#: default number of optimisation steps: two thirds boundary fit (an NLL step takes ~0.1 s
#: for alanine dipeptide on one CPU core), then TRADE (~0.5 s a step): about 6 minutes
DEFAULT_STEPS = 1500
#: default weight of the reverse KL at T0 added to the NLL when boundary data are given
DEFAULT_KL_WEIGHT = 0.0
#: default fraction of the boundary frames (the last ones, in time) held out of the fit to
#: pick the best parameters of the likelihood phase and to measure the overlap σ
DEFAULT_HOLDOUT_FRACTION = 0.1
#: number of held-out evaluations over the likelihood phase by default (``holdout_every``)
_HOLDOUT_EVALUATIONS = 40
#: flow samples per monitor temperature at each validation (``train``'s ``validation_samples``)
DEFAULT_VALIDATION_SAMPLES = 512
#: name of the checkpoint file when ``checkpoint`` is a folder
CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = "openmm_trade.training/1"


class TrainingDivergedError(OpenMMTradeError, RuntimeError):
    """Too many consecutive steps had a non-finite loss, gradient or energy."""


# ---------------------------------------------------------------------------- config
@dataclass
class TrainingConfig:
    """The settings of a training run, each with its default (stored in checkpoints).

    :func:`train` takes a ``TrainingConfig`` and/or its field names as keywords
    (``train(..., steps=300, trade_weight=1.0)``). Fields left ``None`` are derived from the
    others when training starts (:meth:`resolved`).

    Notes
    -----
    Why some defaults are what they are:

    * ``trade_weight`` 0.3 was the best of 0.1/0.3/1.0 on vacuum alanine dipeptide (with the
      earlier schedule of 1000 steps, one fifth of them boundary fit, and flow samples as
      the only evaluation points: ESS at 300/450/600 K 0.4/1.0/0.8 %, 3.7/2.4/0.6 %, and a
      collapse to 0.01 % at λ = 1; not re-tuned since); the analytic toys train well with
      λ = 1. Residuals are in units of ``k_B T0``; 0 gives an NLL-only run.
    * ``loss`` "huber" (``huber_delta`` 1 k_B T0): flow samples in the far tails, e.g. at the
      edge of a bounded coordinate where the exact density is ~e^-100, have residuals of
      hundreds of k_B T0 that no model can remove, and under the MSE they dominate the
      gradient.
    * ``evaluation_points`` "auto": the boundary data alone when ``T0`` is the top of the
      range (they cover every lower temperature), boundary data and flow samples otherwise
      (flow samples alone without data). Measured on vacuum alanine dipeptide: flow samples
      alone let the transfer run away (the residual grew from ~10 to ~10³ k_B T0 and the NLL
      at T0 fell apart once the conditions reached the far end); with boundary points in the
      mix it stayed stable.
    * ``warmup_steps`` ``2 * steps // 3``: TRADE starts from a converged fit at T0, since
      transferring a half-fitted model spreads its errors over the whole range.
    * ``seed`` 0: the library default since the first release (the tests' fixed-seed
      margins were checked with it); ``openmm-trade`` runs use
      :data:`openmm_trade.config.DEFAULT_SEED` instead, which is 1.

    Examples
    --------
    >>> config = TrainingConfig(steps=300)
    >>> config.warmup_steps is None, config.resolved().warmup_steps
    (True, 200)
    >>> TrainingConfig(stepz=3)
    Traceback (most recent call last):
    ...
    TypeError: TrainingConfig.__init__() got an unexpected keyword argument 'stepz'
    """

    #: optimisation steps (default 1500: ~6 min for alanine dipeptide on one core)
    steps: int = DEFAULT_STEPS
    #: boundary samples per step (NLL)
    batch_size: int = 256
    #: TRADE evaluation points per step
    trade_batch_size: int = 256
    #: initial learning rate of AdamW
    learning_rate: float = 1e-3
    #: AdamW's weight decay (0: plain Adam)
    weight_decay: float = 0.0
    #: learning-rate schedule: "cosine", "step" or "constant" (:class:`LearningRateFactor`)
    schedule: str = "cosine"
    #: learning rate at the end of the schedule, as a fraction of ``learning_rate``
    final_learning_rate_factor: float = 0.05
    #: gradient-norm clipping threshold
    grad_clip: float = 10.0
    #: final weight λ of the TRADE term (residuals in k_B T0; 0: an NLL-only run)
    trade_weight: float = DEFAULT_TRADE_WEIGHT
    #: residual penalty: "huber" or "mse"
    loss: str = "huber"
    #: Huber threshold in k_B T0
    huber_delta: float = 1.0
    #: ⟨U⟩_β from a cached EMA "grid" or from fresh importance samples ("continuous")
    mean_energy: str = "grid"
    #: where residuals are evaluated: "auto", "flow", "boundary" or "both"
    evaluation_points: str = "auto"
    #: boundary-only steps before TRADE starts (None: ``2 * steps // 3``)
    warmup_steps: int | None = None
    #: steps over which λ ramps up after the warmup (None: ``steps // 6``)
    ramp_steps: int | None = None
    #: steps over which the condition range widens to the whole range (None: ``ramp_steps``)
    widen_steps: int | None = None
    #: starting width of the condition range, a fraction of the way from T0 to each end in β
    initial_width: float = 0.1
    #: conditions drawn uniformly in "log_temperature" or in "beta"
    condition_sampling: str = "log_temperature"
    #: temperatures per TRADE step (None: ``trade_batch_size`` on the grid, else up to 4)
    n_conditions: int | None = None
    #: nodes of the ⟨U⟩ grid
    grid_size: int = 16
    #: flow samples per grid node refresh
    grid_samples: int = 256
    #: grid nodes refreshed per step
    grid_nodes_per_step: int = 2
    #: weight of a refresh in the grid's exponential moving average
    grid_ema: float = 0.2
    #: flow samples of the reverse KL at T0 (None: ``batch_size``)
    reverse_kl_samples: int | None = None
    #: weight of the reverse KL at T0 added to the NLL when boundary data are given
    kl_weight: float = DEFAULT_KL_WEIGHT
    #: step from which the reverse-KL weight ramps up (None: ``steps // 10``)
    kl_start: int | None = None
    #: steps of the reverse-KL weight's ramp (None: ``steps // 10``)
    kl_ramp_steps: int | None = None
    #: k_B T0 above the data's mean reduced energy where energies are softened (None: never)
    energy_cutoff: float | None = 100.0
    #: fraction of each chain's last boundary frames held out of the fit (0: train on all)
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    #: steps between held-out evaluations in the likelihood phase (None: 40 over the phase)
    holdout_every: int | None = None
    #: seed of every random draw of the loop (same seed, same result on CPU); see Notes
    seed: int = 0
    #: consecutive skipped (non-finite) steps after which training stops
    max_consecutive_skips: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "trade_batch_size", "grid_size", "grid_samples",
                     "grid_nodes_per_step", "max_consecutive_skips"):
            _positive_int(getattr(self, name), name)
        for name in ("warmup_steps", "ramp_steps", "widen_steps", "n_conditions",
                     "reverse_kl_samples", "kl_start", "kl_ramp_steps", "holdout_every"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(value, name, allow_zero=name in ("warmup_steps", "kl_start"))
        for name in ("learning_rate", "grad_clip", "huber_delta"):
            _positive_float(getattr(self, name), name)
        for name in ("trade_weight", "kl_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 0
                                               and math.isfinite(value)):
                raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
        if isinstance(self.weight_decay, bool) or not (
                isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < 1):
            raise InputError(f"weight_decay must be a number in [0, 1), got {self.weight_decay!r}")
        if self.energy_cutoff is not None:
            _positive_float(self.energy_cutoff, "energy_cutoff")
        if isinstance(self.holdout_fraction, bool) or not (
                isinstance(self.holdout_fraction, (int, float)) and 0 <= self.holdout_fraction < 1):
            raise InputError("holdout_fraction must be a number in [0, 1), got "
                             f"{self.holdout_fraction!r}")
        if not 0.0 < float(self.final_learning_rate_factor) <= 1.0:
            raise InputError("final_learning_rate_factor must be in (0, 1], got "
                             f"{self.final_learning_rate_factor!r}")
        if not 0.0 <= float(self.initial_width) <= 1.0:
            raise InputError(f"initial_width must be in [0, 1], got {self.initial_width!r}")
        _one_of(self.schedule, "schedule", ("cosine", "step", "constant"))
        _one_of(self.condition_sampling, "condition_sampling", ("beta", "log_temperature"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be an int, got {self.seed!r}")
        n_conditions = self._derived()["n_conditions"]
        if self.trade_batch_size % n_conditions:
            raise InputError(f"trade_batch_size ({self.trade_batch_size}) must be a multiple of "
                             f"n_conditions ({n_conditions})")

    def _derived(self) -> dict:
        """Every field that may be ``None``, with the value it has or is derived to."""
        steps = self.steps
        warmup = 2 * steps // 3 if self.warmup_steps is None else self.warmup_steps
        ramp = max(steps // 6, 1) if self.ramp_steps is None else self.ramp_steps
        likelihood_steps = min(warmup if self.trade_weight > 0 else steps, steps)
        derived = {
            "warmup_steps": warmup,
            "ramp_steps": ramp,
            "widen_steps": ramp,
            "n_conditions": (self.trade_batch_size if self.mean_energy == "grid"
                             else min(4, self.trade_batch_size)),
            "reverse_kl_samples": self.batch_size,
            "kl_start": steps // 10,
            "kl_ramp_steps": max(steps // 10, 1),
            "holdout_every": max(likelihood_steps // _HOLDOUT_EVALUATIONS, 1),
        }
        return {name: value if getattr(self, name) is None else getattr(self, name)
                for name, value in derived.items()}

    def resolved(self) -> TrainingConfig:
        """A copy with every derived setting (a field left ``None``) filled in."""
        return replace(self, **self._derived())

    @property
    def likelihood_steps(self) -> int:
        """Steps of the likelihood phase: the warmup, or the whole run without TRADE."""
        warmup = self._derived()["warmup_steps"]
        return min(warmup if self.trade_weight > 0 else self.steps, self.steps)

    #: fields that may change between an interrupted run and its resumption
    RESUMABLE_CHANGES = ("steps", "max_consecutive_skips")


def _differences(mine: dict, other: dict) -> list[str]:
    """Settings (other than :attr:`TrainingConfig.RESUMABLE_CHANGES`) that differ."""
    # options added after a checkpoint was written (absent from it) are not compared
    return [
        f"{key}: checkpoint {other.get(key)!r}, now {value!r}"
        for key, value in mine.items()
        if key not in TrainingConfig.RESUMABLE_CHANGES and key in other
        and _normalise(other.get(key)) != _normalise(value)
    ]


def _training_config(config: TrainingConfig | None, overrides: dict) -> TrainingConfig:
    """``config`` (default: :class:`TrainingConfig`'s defaults) with ``overrides`` applied."""
    if config is None:
        config = TrainingConfig()
    elif not isinstance(config, TrainingConfig):
        raise InputError(f"config must be a TrainingConfig, got {type(config).__name__} "
                         f"{config!r} (give temperature_range= by name)")
    fields = TrainingConfig.__dataclass_fields__
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise InputError(f"unknown training option(s) {unknown}: expected fields of "
                         f"TrainingConfig: {', '.join(fields)}")
    return replace(config, **overrides)


def _normalise(value):
    return list(value) if isinstance(value, tuple) else value


def _positive_int(value, name: str, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _one_of(value, name: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise InputError(f"{name} must be one of {options}, got {value!r}")
    return value


class LearningRateFactor:
    """Multiplier of the base learning rate at a step (picklable, for ``LambdaLR``).

    ``"cosine"`` decays from 1 to ``final`` over ``steps``; ``"step"`` halves at 50 %,
    75 % and 90 % of the run (ending at ``final`` or above); ``"constant"`` is 1.

    >>> f = LearningRateFactor("cosine", 100, 0.1)
    >>> f(0), round(f(50), 3), round(f(100), 3)
    (1.0, 0.55, 0.1)
    """

    def __init__(self, kind: str, steps: int, final: float) -> None:
        self.kind, self.steps, self.final = kind, steps, final

    def __call__(self, step: int) -> float:
        progress = min(step / max(self.steps, 1), 1.0)
        if self.kind == "cosine":
            return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "step":
            return max(0.5 ** sum(progress >= m for m in (0.5, 0.75, 0.9)), self.final)
        return 1.0


# ---------------------------------------------------------------------------- history
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


# ---------------------------------------------------------------------------- helpers
def holdout_split(n_frames: int, fraction: float,
                  chains=None) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and held-out frames: the last ``fraction`` of each chain.

    Frames of one MD chain are consecutive in time (``chains`` gives the chain of each
    frame, as :func:`openmm_trade.md.simulate` records it; ``None``: one chain), so the
    held-out frames are the end of every chain, later in time than what is trained on and
    drawn from all chains. No frame is held out when that would leave fewer than 2 held
    out or none to train on.

    >>> holdout_split(10, 0.4, chains=[0] * 5 + [1] * 5)[1]
    array([3, 4, 8, 9])
    >>> holdout_split(10, 0.0)[1].size
    0
    """
    chains = np.zeros(n_frames, dtype=np.int64) if chains is None else np.asarray(chains)
    if chains.shape != (n_frames,):
        raise InputError(f"chains must give one chain per frame ({n_frames}), got shape "
                         f"{chains.shape}")
    held = []
    for chain in np.unique(chains):
        frames = np.flatnonzero(chains == chain)
        held.append(frames[frames.size - round(fraction * frames.size):])
    held = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    if held.size < 2 or held.size >= n_frames:
        held = np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(n_frames), held), held


def _boundary_tensor(boundary, event_shape: tuple[int, ...], name: str = "boundary"):
    """``(M, *event_shape)`` tensor from an mdtraj trajectory (nm), an array or a tensor."""
    if boundary is None:
        return None
    if hasattr(boundary, "xyz") and hasattr(boundary, "topology"):
        values = torch.from_numpy(np.asarray(boundary.xyz))
    elif isinstance(boundary, np.ndarray):
        values = torch.from_numpy(boundary)
    elif isinstance(boundary, torch.Tensor):
        values = boundary.detach()
    else:
        raise InputError(f"{name} must be an mdtraj.Trajectory, a numpy array or a torch "
                         f"tensor of shape (M, {', '.join(map(str, event_shape))}), got "
                         f"{type(boundary).__name__}")
    if values.dim() != 1 + len(event_shape) or tuple(values.shape[1:]) != tuple(event_shape):
        raise InputError(f"{name} must have shape (M, {', '.join(map(str, event_shape))}), "
                         f"got {tuple(values.shape)}")
    if values.shape[0] < 1:
        raise InputError(f"{name} must hold at least one sample, got 0")
    if not bool(torch.isfinite(values).all()):
        raise InputError(f"{name} holds non-finite coordinates")
    return values


def _evaluation_points(requested: str, have_boundary: bool, t0: float, t_max: float) -> str:
    """Resolve ``evaluation_points="auto"``: boundary data alone when ``T0`` is the top of
    the range (samples at the highest temperature cover every lower one), flow samples and
    boundary data otherwise, flow samples alone without data.

    >>> [_evaluation_points("auto", True, t0, 600.0) for t0 in (600.0, 300.0)]
    ['boundary', 'both']
    """
    options = ("auto", *EVALUATION_POINTS)
    if requested not in options:
        raise InputError(f"evaluation_points must be one of {options}, got {requested!r}")
    if requested != "auto":
        return requested
    if not have_boundary:
        return "flow"
    return "boundary" if t0 >= t_max else "both"


def _temperatures(model, boundary_temperature, temperature_range):
    """``T0`` and ``(T_min, T_max)`` in K, checked against each other and the model's range
    (the default range)."""
    t0 = check_temperature(boundary_temperature, "boundary_temperature")
    if not isinstance(t0, float):
        raise InputError(f"boundary_temperature must be one temperature in K, got {t0!r}")
    model_range = tuple(float(t) for t in model.temperature_range)
    if temperature_range is None:
        temperature_range = model_range
    try:
        t_min, t_max = (check_temperature(t, "temperature_range") for t in temperature_range)
    except TypeError:
        raise InputError("temperature_range must be (T_min, T_max) in K, got "
                         f"{temperature_range!r}") from None
    if not t_min <= t0 <= t_max:
        raise InputError(f"boundary_temperature must lie in temperature_range "
                         f"[{t_min:g}, {t_max:g}] K, got {t0:g} K")
    tolerance = 1e-9 * t_max
    if t_min < model_range[0] - tolerance or t_max > model_range[1] + tolerance:
        raise InputError(f"temperature_range [{t_min:g}, {t_max:g}] K must lie inside the "
                         f"model's range [{model_range[0]:g}, {model_range[1]:g}] K")
    return t0, (t_min, t_max)


def _checkpoint_file(checkpoint: PathLike | None) -> Path | None:
    """A checkpoint file from a file path or a folder (``<folder>/checkpoint.pt``)."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    if path.is_dir() or (not path.exists() and path.suffix == ""):
        return path / CHECKPOINT_NAME
    return path


def _finite(value) -> bool:
    return bool(torch.isfinite(torch.as_tensor(value)).all())


# ---------------------------------------------------------------------------- trainer
class Trainer:
    """The TRADE training loop; :func:`train` is ``Trainer(...).run()``.

    Parameters are those of :func:`train`. A trainer can be advanced in pieces
    (``run(until=k)`` then ``run()``), checkpointed with :meth:`save_checkpoint` and
    restored with :meth:`load_checkpoint`.

    Attributes
    ----------
    config : TrainingConfig
        The settings of the run, with every derived one filled in
        (:meth:`TrainingConfig.resolved`).
    boundary_temperature : float
        T0 in K.
    temperature_range : (float, float)
        The range trained over, in K.
    step : int
        Steps done.
    history : TrainingHistory
    counters : dict
        ``skipped_steps``, ``nonfinite_losses``, ``nonfinite_energies``,
        ``energy_evaluations``, ``consecutive_skips``.

    Examples
    --------
    >>> from openmm_trade.flow import ConditionalFlow
    >>> from openmm_trade.toys import DoubleWell1D
    >>> toy = DoubleWell1D()
    >>> model = ConditionalFlow(toy.domains, 300.0, (300.0, 600.0), hidden=8, n_blocks=1)
    >>> trainer = Trainer(model, toy, toy.sample(500, 300.0, seed=0), 300.0, steps=10,
    ...                   batch_size=32, trade_batch_size=16, warmup_steps=5, quiet=True)
    >>> _ = trainer.run(until=4); trainer.step
    4
    >>> len(trainer.run())
    10
    """

    def __init__(
        self,
        model,
        energy: Energy,
        boundary,
        boundary_temperature: float,
        config: TrainingConfig | None = None,
        *,
        temperature_range: tuple[float, float] | None = None,
        validate_every: int | None = None,
        validation_samples: int = DEFAULT_VALIDATION_SAMPLES,
        monitor_temperatures=None,
        checkpoint: PathLike | None = None,
        checkpoint_every: int | None = None,
        resume: bool | PathLike = False,
        history_csv: PathLike | None = None,
        quiet: bool = False,
        energy_budget: int | None = None,
        device: str | torch.device | None = None,
        **overrides,
    ) -> None:
        if not isinstance(energy, Energy):
            raise InputError(f"energy must be an openmm_trade Energy, got {type(energy).__name__}")
        check_model(model, "sample", "log_prob", "temperature_range")
        if not isinstance(model, torch.nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model, self.energy = model, energy
        if device is not None:
            model.to(torch.device(device))
        self.device = torch.device(getattr(model, "device", "cpu"))
        event_shape = tuple(getattr(model, "event_shape", energy.event_shape))
        if tuple(energy.event_shape) != event_shape:
            raise InputError(f"energy event_shape {tuple(energy.event_shape)} does not match the "
                             f"model's {event_shape}")

        t0, (t_min, t_max) = _temperatures(model, boundary_temperature, temperature_range)
        self.boundary_temperature, self.temperature_range = t0, (float(t_min), float(t_max))
        self.config = _training_config(config, overrides).resolved()
        cfg = self.config
        self._set_run_control(validate_every, validation_samples, monitor_temperatures,
                              checkpoint, checkpoint_every, history_csv, quiet, energy_budget)
        self._set_boundary(boundary, event_shape)
        self._energy_seen = energy.n_evaluations
        self.counters = {"skipped_steps": 0, "nonfinite_losses": 0, "nonfinite_energies": 0,
                         "energy_evaluations": 0, "consecutive_skips": 0}
        self._beta0 = beta_from_temperature(t0)
        self._boundary_energies, self._holdout_energies = self._evaluate_boundary()
        self._best = None  # best state of the likelihood phase (held-out NLL)
        self.objective = TradeObjective(
            energy, t0, (t_min, t_max), loss=cfg.loss, huber_delta=cfg.huber_delta,
            mean_energy=cfg.mean_energy, evaluation_points=self.evaluation_points,
            grid_size=cfg.grid_size, grid_samples=cfg.grid_samples, grid_ema=cfg.grid_ema,
            energy_cutoff=self._energy_cutoff())

        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=cfg.learning_rate,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            LearningRateFactor(cfg.schedule, cfg.steps, cfg.final_learning_rate_factor))
        self.generator = torch.Generator(device=self.device)
        self.step = 0
        self.history = TrainingHistory()
        self._wall_offset = 0.0
        self._seed_everything(cfg.seed)

        resume_from = self._resume_source(resume)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        self._beta_ends = (beta_from_temperature(t_max), beta_from_temperature(t_min))

    # ------------------------------------------------------------------ setup
    def _set_run_control(self, validate_every, validation_samples, monitor_temperatures,
                         checkpoint, checkpoint_every, history_csv, quiet,
                         energy_budget) -> None:
        """Check and keep the run-control keywords of :func:`train`."""
        t0, (t_min, t_max) = self.boundary_temperature, self.temperature_range
        self.validate_every = (None if validate_every is None
                               else _positive_int(validate_every, "validate_every"))
        self.validation_samples = _positive_int(validation_samples, "validation_samples")
        if monitor_temperatures is None:
            monitor_temperatures = sorted({t_min, t0, t_max} if t_min < t0 < t_max
                                          else {t_min, 0.5 * (t_min + t_max), t_max})
        self.monitor_temperatures = [float(check_temperature(t, "monitor_temperatures"))
                                     for t in np.atleast_1d(np.asarray(monitor_temperatures))]
        self.checkpoint_path = _checkpoint_file(checkpoint)
        self.checkpoint_every = (None if checkpoint_every is None
                                 else _positive_int(checkpoint_every, "checkpoint_every"))
        if self.checkpoint_every is not None and self.checkpoint_path is None:
            raise InputError("checkpoint_every needs a checkpoint path or folder, got none")
        self.history_csv = None if history_csv is None else Path(history_csv)
        self.quiet = bool(quiet)
        self.energy_budget = (None if energy_budget is None
                              else _positive_int(energy_budget, "energy_budget"))

    def _set_boundary(self, boundary, event_shape: tuple[int, ...]) -> None:
        """The boundary samples as a tensor on the model's device, split into training and
        held-out frames, and the resolved ``evaluation_points``."""
        cfg = self.config
        dtype = getattr(self.model, "dtype", torch.float32)
        self.boundary = _boundary_tensor(boundary, event_shape)
        self.holdout = None
        if self.boundary is not None:
            self.boundary = self.boundary.to(device=self.device, dtype=dtype)
            chains = getattr(boundary, CHAIN_ATTRIBUTE, None)
            kept, held = holdout_split(self.boundary.shape[0], cfg.holdout_fraction, chains)
            if held.size:
                self.boundary, self.holdout = self.boundary[kept], self.boundary[held]
        self.evaluation_points = _evaluation_points(
            cfg.evaluation_points, self.boundary is not None, self.boundary_temperature,
            self.temperature_range[1])
        if self.evaluation_points != "flow" and self.boundary is None:
            raise InputError(f"evaluation_points={cfg.evaluation_points!r} needs boundary "
                             "samples, got boundary=None")

    def _resume_source(self, resume: bool | PathLike) -> Path | None:
        """The checkpoint to continue from (``None``: start afresh)."""
        if resume is True:
            if self.checkpoint_path is None:
                raise InputError("resume=True needs checkpoint= (a file or folder), got none")
            return self.checkpoint_path if self.checkpoint_path.exists() else None
        if resume in (False, None):
            return None
        resume_from = Path(resume)
        if resume_from.is_dir():
            resume_from = resume_from / CHECKPOINT_NAME
        if not resume_from.exists():
            raise InputError(f"resume checkpoint {str(resume_from)!r} does not exist")
        return resume_from

    def _seed_everything(self, seed: int) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self.generator.manual_seed(seed)

    def _evaluate_boundary(self):
        """Energies of the training and the held-out boundary samples, once (for boundary
        evaluation points, the energy cutoff and the overlap σ); ``None`` for the training
        part when nothing needs it."""
        cfg = self.config
        cutoff_needs_them = cfg.energy_cutoff is not None and (cfg.kl_weight > 0
                                                               or cfg.trade_weight > 0)
        if self.boundary is None:
            return None, None
        parts = [self.boundary, self.holdout]
        if self.evaluation_points == "flow" and not cutoff_needs_them:
            parts[0] = None
        energies = []
        for part in parts:
            if part is None:
                energies.append(None)
                continue
            with torch.no_grad():
                values = torch.cat([self.energy(chunk.to(torch.float64))
                                    for chunk in torch.split(part, 4096)])
            self._count_energies()
            bad = ~torch.isfinite(values)
            if bool(bad.any()):
                raise InputError(f"boundary holds {int(bad.sum())} samples with a non-finite "
                                 "energy; remove them before training")
            energies.append(values.to(torch.float64))
        return tuple(energies)

    def _energy_cutoff(self) -> float | None:
        """Absolute reduced-energy cutoff of :func:`~openmm_trade.trade.soften_energies`:
        ``energy_cutoff`` above the boundary data's mean reduced energy (above 0 without
        data)."""
        cfg = self.config
        if cfg.energy_cutoff is None:
            return None
        if self._boundary_energies is None:
            return cfg.energy_cutoff
        return float(self._beta0 * self._boundary_energies.mean()) + cfg.energy_cutoff

    def _count_energies(self) -> None:
        now = self.energy.n_evaluations
        self.counters["energy_evaluations"] += now - self._energy_seen
        self._energy_seen = now

    # ------------------------------------------------------------------ schedules
    def trade_weight(self, step: int) -> float:
        """``λ`` at 0-based ``step``: 0 during warmup, then a linear ramp to ``trade_weight``."""
        cfg = self.config
        if step < cfg.warmup_steps or cfg.trade_weight == 0:
            return 0.0
        return cfg.trade_weight * min((step - cfg.warmup_steps + 1) / cfg.ramp_steps, 1.0)

    def kl_weight(self, step: int) -> float:
        """Weight of the reverse KL added to the NLL at 0-based ``step`` (0 without data:
        then the reverse KL *is* the boundary term): 0 before ``kl_start``, then a linear
        ramp to ``kl_weight`` over ``kl_ramp_steps``."""
        cfg = self.config
        if self.boundary is None or cfg.kl_weight == 0 or step < cfg.kl_start:
            return 0.0
        return cfg.kl_weight * min((step - cfg.kl_start + 1) / cfg.kl_ramp_steps, 1.0)

    def condition_bounds(self, step: int) -> tuple[float, float]:
        """Current ``(β_low, β_high)`` of the condition range at 0-based ``step``."""
        cfg = self.config
        progress = min(max(step - cfg.warmup_steps, 0) / cfg.widen_steps, 1.0)
        width = cfg.initial_width + (1.0 - cfg.initial_width) * progress
        low, high = self._beta_ends
        return (self._beta0 + width * (low - self._beta0),
                self._beta0 + width * (high - self._beta0))

    def draw_betas(self, n: int, bounds: tuple[float, float]) -> torch.Tensor:
        """``n`` inverse temperatures uniform in β or in log T between ``bounds``."""
        u = torch.rand(n, generator=self.generator, dtype=torch.float64,
                       device=self.device)
        low, high = bounds
        if self.config.condition_sampling == "beta":
            return low + (high - low) * u
        log_t_high, log_t_low = (math.log(temperature_from_beta(b)) for b in (low, high))
        return beta_from_temperature(torch.exp(log_t_low + (log_t_high - log_t_low) * u))

    def _boundary_batch(self, n: int):
        index = torch.randint(self.boundary.shape[0], (n,), generator=self.generator,
                              device=self.device)
        energies = None if self._boundary_energies is None else self._boundary_energies[index]
        return self.boundary[index], energies

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        """Do one optimisation step (or skip it); returns its history record."""
        cfg, step = self.config, self.step
        started = time.perf_counter()
        self.model.train()
        weight = self.trade_weight(step)
        bounds = self.condition_bounds(step)
        nonfinite = 0
        kl_weight = self.kl_weight(step)
        kl_loss = None
        if self.boundary is not None:
            batch, _ = self._boundary_batch(cfg.batch_size)
            boundary_loss = self.objective.nll(self.model, batch)
            if kl_weight > 0:
                kl_loss, nonfinite = self.objective.reverse_kl(
                    self.model, cfg.reverse_kl_samples, self.generator)
                boundary_loss = boundary_loss + kl_weight * kl_loss
        else:
            boundary_loss, nonfinite = self.objective.reverse_kl(
                self.model, cfg.reverse_kl_samples, self.generator)
        loss = boundary_loss
        term = None
        if weight > 0:
            nonfinite_grid = self.objective.refresh_grid(
                self.model, *bounds, cfg.grid_nodes_per_step, self.generator)
            self.counters["nonfinite_energies"] += nonfinite_grid
            m = cfg.trade_batch_size // cfg.n_conditions
            betas = self.draw_betas(cfg.n_conditions, bounds)
            points, energies = (self._boundary_batch(cfg.trade_batch_size)
                                if self.evaluation_points != "flow" else (None, None))
            term = self.objective.trade_loss(self.model, betas, m, points, energies,
                                             self.generator)
            nonfinite += term.n_nonfinite
            loss = loss + weight * term.loss
        self.counters["nonfinite_energies"] += nonfinite

        grad_norm = math.nan
        skipped = nonfinite > 0 or not _finite(loss.detach())
        if not skipped:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, cfg.grad_clip))
            skipped = not math.isfinite(grad_norm)
            if not skipped:
                self.optimizer.step()
        else:
            self.counters["nonfinite_losses"] += int(not _finite(loss.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        learning_rate = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        self.counters["skipped_steps"] += int(skipped)
        self.counters["consecutive_skips"] = self.counters["consecutive_skips"] + 1 if skipped \
            else 0
        self._count_energies()
        self._wall_offset += time.perf_counter() - started
        return {
            "step": self.step,
            "loss": float(loss.detach()),
            "boundary": float(boundary_loss.detach()),
            "trade": float(term.loss.detach()) if term is not None else math.nan,
            "kl": float(kl_loss.detach()) if kl_loss is not None else math.nan,
            "kl_weight": kl_weight,
            "trade_weight": weight,
            "residual": term.rms if term is not None else math.nan,
            "learning_rate": learning_rate,
            "grad_norm": grad_norm,
            "t_low": float(temperature_from_beta(bounds[1])),
            "t_high": float(temperature_from_beta(bounds[0])),
            "skipped": int(skipped),
            "energy_evaluations": self.counters["energy_evaluations"],
            "nonfinite_energies": self.counters["nonfinite_energies"],
            "wall_time": self._wall_offset,
        }

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict:
        """ESS, mean energy and RMS TRADE residual at each monitor temperature.

        Draws from a generator seeded by ``(seed, step)`` inside a forked global RNG, so it
        does not change the training trajectory. Returns ``{"ess_<T>K": ..., ...}``.
        """
        started = time.perf_counter()
        self.model.eval()
        generator = torch.Generator(device=self.device).manual_seed(
            (self.config.seed * 1_000_003 + self.step) % 2**63)
        devices = [self.device] if self.device.type == "cuda" else []
        record = {}
        with torch.random.fork_rng(devices=devices):
            for temperature in self.monitor_temperatures:
                result = self.objective.diagnostics(self.model, temperature,
                                                    self.validation_samples, generator)
                label = temperature_label(temperature)
                record[f"ess_{label}"] = result["ess"]
                record[f"residual_{label}"] = result["residual"]
                record[f"mean_energy_{label}"] = result["mean_energy"]
                self.counters["nonfinite_energies"] += result["n_nonfinite"]
        self.model.train()
        self._count_energies()
        self._wall_offset += time.perf_counter() - started
        if self.holdout is not None:
            record.update(self.holdout_metrics())
        record["energy_evaluations"] = self.counters["energy_evaluations"]
        record["nonfinite_energies"] = self.counters["nonfinite_energies"]
        record["wall_time"] = self._wall_offset
        return record

    # ------------------------------------------------------------------ held-out frames
    def holdout_metrics(self) -> dict:
        """Mean NLL at T0 (nats per frame) of the held-out frames and the overlap σ on them.

        Deterministic (no random draw) and free of energy evaluations (their energies
        were computed once). Returns ``{}`` without held-out frames.
        """
        if self.holdout is None:
            return {}
        started = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        log_w = overlap_log_weights(self.model, self.energy, self.holdout,
                                    self.boundary_temperature,
                                    energies=self._holdout_energies)
        self.model.train(was_training)
        self._wall_offset += time.perf_counter() - started
        finite = bool(np.all(np.isfinite(log_w)))
        reduced = self._beta0 * self._holdout_energies.cpu().numpy()
        return {"holdout_nll": float(np.mean(log_w + reduced)) if finite else math.inf,
                "overlap_sigma": float(np.std(log_w, ddof=1)) if finite else math.inf,
                "holdout_frames": int(self.holdout.shape[0])}

    def _track_holdout(self) -> dict:
        """During the likelihood phase: held-out metrics when due, the best parameters
        kept, and restored at the phase's end. Returns the record entries."""
        cfg, step = self.config, self.step
        end = cfg.likelihood_steps
        if self.holdout is None or step > end or (step % cfg.holdout_every and step != end):
            return {}
        record = self.holdout_metrics()
        if self._best is None or record["holdout_nll"] < self._best["holdout_nll"]:
            self._best = {"step": step, **record,
                          "model": {k: v.detach().clone()
                                    for k, v in self.model.state_dict().items()}}
        if step == end:
            best = self._best
            if best["step"] != step:
                self.model.load_state_dict(best["model"])
                record = {"restored_from_nll": record["holdout_nll"],
                          **{k: best[k] for k in record}}
            record["restored_step"] = best["step"]
        return record

    # ------------------------------------------------------------------ loop
    def run(self, until: int | None = None) -> TrainingHistory:
        """Train until step ``until`` (default: ``steps``); returns the history.

        Validates every ``validate_every`` steps and at the last step, checkpoints every
        ``checkpoint_every`` steps and at the end, and rewrites ``history_csv`` whenever it
        validates or checkpoints.
        """
        cfg = self.config
        until = cfg.steps if until is None else min(_positive_int(until, "until"), cfg.steps)
        progress = tqdm(total=cfg.steps, initial=self.step, disable=not shown(self.quiet),
                        desc="TRADE", unit="step", dynamic_ncols=True)
        ess_label = f"ess_{temperature_label(self.monitor_temperatures[-1])}"
        last_ess = math.nan
        try:
            while self.step < until:
                record = self.train_step()
                record.update(self._track_holdout())
                last = self.step == cfg.steps
                if (self.validate_every and self.step % self.validate_every == 0) or \
                        (last and self.validate_every):
                    record.update(self.validate())
                budget_spent = (self.energy_budget is not None
                                and self.counters["energy_evaluations"] >= self.energy_budget)
                if (last or budget_spent) and "overlap_sigma" not in record:
                    record.update(self.holdout_metrics())
                self.history.append(record)
                if self.counters["consecutive_skips"] >= cfg.max_consecutive_skips:
                    self.history.stop_reason = "diverged"
                    self._save_outputs()
                    raise TrainingDivergedError(
                        f"{self.counters['consecutive_skips']} consecutive steps had a "
                        f"non-finite loss, gradient or energy (step {self.step}; "
                        f"{self.counters['nonfinite_energies']} non-finite energies so far)")
                if budget_spent:
                    self.history.stop_reason = "energy_budget"
                if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint()
                    self._write_csv()
                elif ess_label in record:
                    self._write_csv()
                last_ess = record.get(ess_label, last_ess)
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.3g}", ess=f"{last_ess:.2f}")
                if budget_spent:
                    break
        finally:
            progress.close()
        if self.step >= cfg.steps and not self.history.stop_reason:
            self.history.stop_reason = "completed"
        if self.step >= cfg.steps or self.history.stop_reason == "energy_budget":
            metadata = getattr(self.model, "metadata", None)
            if isinstance(metadata, dict) and self.holdout is not None:
                metadata.update(self.history.summary)
            self._save_outputs()
        return self.history

    def _save_outputs(self) -> None:
        if self.checkpoint_path is not None:
            self.save_checkpoint()
        self._write_csv()

    def _write_csv(self) -> None:
        if self.history_csv is not None and len(self.history):
            self.history.to_csv(self.history_csv)

    # ------------------------------------------------------------------ checkpoints
    def _settings(self) -> dict:
        """T0, the range and the training settings: what a checkpoint must match."""
        return {"boundary_temperature": self.boundary_temperature,
                "temperature_range": self.temperature_range, **asdict(self.config)}

    def state_dict(self) -> dict:
        """Everything needed to continue this run exactly."""
        return {
            "format": _FORMAT,
            "step": self.step,
            "config": self._settings(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "objective": self.objective.state_dict(),
            "rng": {
                "generator": self.generator.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            "counters": dict(self.counters),
            "wall_time": self._wall_offset,
            "history": self.history.state_dict(),
            "best": self._best,
        }

    def save_checkpoint(self, path: PathLike | None = None) -> Path:
        """Write :meth:`state_dict` atomically to ``path`` (default: ``checkpoint``)."""
        path = _checkpoint_file(path) if path is not None else self.checkpoint_path
        if path is None:
            raise InputError("save_checkpoint needs a path (no checkpoint= was given)")
        with atomic_write_path(path) as tmp:
            torch.save(self.state_dict(), tmp)
        return path

    def load_checkpoint(self, path: PathLike) -> None:
        """Restore a run from a checkpoint written by :meth:`save_checkpoint`."""
        path = Path(path)
        expected = f"checkpoint {path}: expected a training checkpoint of openmm_trade"
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as error:  # noqa: BLE001 - any unreadable file is a CheckpointError
            raise CheckpointError(f"{expected}, found {unreadable_torch_file(path, error)}"
                                  ) from None
        found = state.get("format") if isinstance(state, dict) else None
        if isinstance(found, str) and found.startswith(_FORMAT.split("/")[0] + "/") \
                and found != _FORMAT:
            raise CheckpointError(f"checkpoint {path}: expected format {_FORMAT!r}, found "
                                  f"{found!r} (written by another openmm_trade version)")
        if found != _FORMAT:
            raise CheckpointError(f"{expected}, found " + (f"a file of format {found!r}" if found
                                                          else f"a saved {type(state).__name__}"))
        differences = _differences(self._settings(), state["config"])
        if differences:
            raise CheckpointError(f"checkpoint {path}: expected the settings of this run, "
                                  "found other ones: "
                                  + "; ".join(differences))
        if state["config"]["steps"] != self.config.steps:
            warnings.warn(f"resuming with steps={self.config.steps} instead of "
                          f"{state['config']['steps']}: the learning-rate schedule changes",
                          UserWarning, stacklevel=2)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise CheckpointError(f"checkpoint {path}: expected weights that fit this model, "
                                  "found weights of another model (another molecule or "
                                  f"architecture): {one_line(error)}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.lr_lambdas[0] = LearningRateFactor(
            self.config.schedule, self.config.steps, self.config.final_learning_rate_factor)
        self.objective.load_state_dict(state["objective"])
        rng = state["rng"]
        self.generator.set_state(rng["generator"].cpu() if self.device.type == "cpu"
                                 else rng["generator"])
        torch.set_rng_state(rng["torch"].cpu())
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.counters = dict(state["counters"])
        self.step = int(state["step"])
        self._wall_offset = float(state.get("wall_time", 0.0))
        self.history = TrainingHistory.from_state_dict(state["history"])
        self.history.stop_reason = ""
        self._best = state.get("best")


# ---------------------------------------------------------------------------- train
def train(
    model,
    energy: Energy,
    boundary,
    boundary_temperature: float,
    config: TrainingConfig | None = None,
    *,
    temperature_range: tuple[float, float] | None = None,
    validate_every: int | None = None,
    validation_samples: int = DEFAULT_VALIDATION_SAMPLES,
    monitor_temperatures=None,
    checkpoint: PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool | PathLike = False,
    history_csv: PathLike | None = None,
    quiet: bool = False,
    energy_budget: int | None = None,
    device: str | torch.device | None = None,
    **overrides,
) -> TrainingHistory:
    """Train a conditional flow over a temperature range with TRADE.

    The training settings (steps, batch sizes, learning rate, ``trade_weight``, schedules,
    seed, ...) are the fields of :class:`TrainingConfig`, where each is documented with its
    default: pass a ``config``, or field names as keywords (``overrides``), or both. The
    keywords named below control the run (validation, checkpoints, output) and do not
    change the trained parameters.

    Parameters
    ----------
    model : ConditionalFlow, TemperatureFlow or any model of the flow protocol
        A ``torch.nn.Module`` with ``sample``, ``log_prob``, ``temperature_range``.
    energy : Energy
        ``U(x)`` in kJ/mol (``OpenMMEnergy`` or a toy).
    boundary : mdtraj.Trajectory, array, tensor or None
        Samples at ``boundary_temperature``: a trajectory (xyz in nm, ``(M, N, 3)``) or
        ``(M, *event_shape)`` values. ``None``: the boundary term is the reverse KL at T0.
        With MD frames, keep them in time order: the held-out part
        (``holdout_fraction``) is then the latest stretch of each chain, which correlated
        neighbours of training frames do not flatter.
    boundary_temperature : float
        ``T0`` in K; must lie in ``temperature_range`` (bottom, top or inside).
    config : TrainingConfig, optional
        The training settings (default: ``TrainingConfig()``).
    temperature_range : (float, float), optional
        Range in K to train over; defaults to ``model.temperature_range``.
    validate_every : int, optional
        Validate (ESS, ⟨U⟩, residual per monitor temperature) every this many steps and
        at the end.
    validation_samples : int
        Flow samples per monitor temperature at a validation.
    monitor_temperatures : sequence of float, optional
        Default: the two ends of the range and T0 (or the middle when T0 is an end).
    checkpoint : path, optional
        Checkpoint file, or a folder (``<folder>/checkpoint.pt``); written atomically at
        the end and every ``checkpoint_every`` steps.
    checkpoint_every : int, optional
        Steps between checkpoints (needs ``checkpoint``).
    resume : bool or path
        ``True``: continue from ``checkpoint`` if it exists; a path: continue from it.
    history_csv : path, optional
        Write the history as CSV (atomically) at validations, checkpoints and the end.
    quiet : bool
        No progress bar (also off when stderr is not a terminal).
    energy_budget : int, optional
        Stop once this many energy evaluations have been spent.
    device : str or torch.device, optional
        Move the model there (default: where it is).
    **overrides
        :class:`TrainingConfig` fields, replacing those of ``config``.

    Returns
    -------
    TrainingHistory
        One record per step done (``len(history)``), with validation columns.

    Raises
    ------
    InputError
        An unknown setting (naming it and the fields of :class:`TrainingConfig`), a value
        out of range, or inputs that do not fit each other.

    Notes
    -----
    The held-out frames pick the parameters of the likelihood phase (lowest held-out NLL,
    restored before TRADE starts) and give the overlap σ (``history.overlap_sigma``). A
    model with a ``metadata`` dict (``TemperatureFlow``, whose ``save`` keeps it) receives
    ``history.summary`` at the end.

    Examples
    --------
    >>> from openmm_trade.flow import ConditionalFlow
    >>> from openmm_trade.toys import TorsionBond2D
    >>> toy = TorsionBond2D()
    >>> model = ConditionalFlow(toy.domains, 600.0, (300.0, 600.0), hidden=8, n_blocks=1)
    >>> settings = TrainingConfig(steps=6, batch_size=32, trade_batch_size=16)
    >>> history = train(model, toy, toy.sample(1000, 600.0, seed=0), 600.0, settings,
    ...                 warmup_steps=2, ramp_steps=2, validate_every=3, quiet=True)
    >>> [round(t) for t in (history.last["t_low"], history.last["t_high"])]
    [300, 600]
    >>> sorted(k for k in history.last if k.startswith("ess_"))
    ['ess_300K', 'ess_450K', 'ess_600K']
    """
    trainer = Trainer(
        model, energy, boundary, boundary_temperature, config,
        temperature_range=temperature_range, validate_every=validate_every,
        validation_samples=validation_samples, monitor_temperatures=monitor_temperatures,
        checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume,
        history_csv=history_csv, quiet=quiet, energy_budget=energy_budget, device=device,
        **overrides)
    return trainer.run()
