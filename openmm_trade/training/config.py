"""The training settings: :class:`TrainingConfig` (one field, default and doc line each)
and the module-wide defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .. import checks
from ..errors import InputError

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
            checks.integer(getattr(self, name), name)
        for name in ("warmup_steps", "ramp_steps", "widen_steps", "n_conditions",
                     "reverse_kl_samples", "kl_start", "kl_ramp_steps", "holdout_every"):
            value = getattr(self, name)
            if value is not None:
                minimum = 0 if name in ("warmup_steps", "kl_start") else 1
                checks.integer(value, name, minimum=minimum)
        for name in ("learning_rate", "grad_clip", "huber_delta"):
            checks.number(getattr(self, name), name)
        for name in ("trade_weight", "kl_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 0
                                               and math.isfinite(value)):
                raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
        if isinstance(self.weight_decay, bool) or not (
                isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < 1):
            raise InputError(f"weight_decay must be a number in [0, 1), got {self.weight_decay!r}")
        if self.energy_cutoff is not None:
            checks.number(self.energy_cutoff, "energy_cutoff")
        if isinstance(self.holdout_fraction, bool) or not (
                isinstance(self.holdout_fraction, (int, float)) and 0 <= self.holdout_fraction < 1):
            raise InputError("holdout_fraction must be a number in [0, 1), got "
                             f"{self.holdout_fraction!r}")
        if not 0.0 < float(self.final_learning_rate_factor) <= 1.0:
            raise InputError("final_learning_rate_factor must be in (0, 1], got "
                             f"{self.final_learning_rate_factor!r}")
        if not 0.0 <= float(self.initial_width) <= 1.0:
            raise InputError(f"initial_width must be in [0, 1], got {self.initial_width!r}")
        checks.one_of(self.schedule, "schedule", ("cosine", "step", "constant"))
        checks.one_of(self.condition_sampling, "condition_sampling", ("beta", "log_temperature"))
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
