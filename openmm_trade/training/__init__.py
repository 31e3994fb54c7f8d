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

from .boundary import holdout_split
from .config import (
    CHECKPOINT_NAME,
    DEFAULT_HOLDOUT_FRACTION,
    DEFAULT_KL_WEIGHT,
    DEFAULT_STEPS,
    DEFAULT_TRADE_WEIGHT,
    DEFAULT_VALIDATION_SAMPLES,
    TrainingConfig,
)
from .history import TrainingHistory
from .trainer import LearningRateFactor, Trainer, TrainingDivergedError, train

__all__ = ["CHECKPOINT_NAME", "DEFAULT_HOLDOUT_FRACTION", "DEFAULT_KL_WEIGHT", "DEFAULT_STEPS",
           "DEFAULT_TRADE_WEIGHT", "DEFAULT_VALIDATION_SAMPLES", "LearningRateFactor", "Trainer",
           "TrainingConfig", "TrainingDivergedError", "TrainingHistory", "holdout_split", "train"]
