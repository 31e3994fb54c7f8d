"""The TRADE training loop: :class:`Trainer` and :func:`train`, with schedules,
validation, checkpoints and exact resume."""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import checks
from ..energy import Energy
from ..errors import CheckpointError, InputError, OpenMMTradeError, one_line
from ..files import PathLike, atomic_write_path, unreadable_torch_file
from ..md.trajectory import CHAIN_ATTRIBUTE
from ..metrics import overlap_log_weights
from ..model import check_model
from ..progress import shown
from ..trade import EVALUATION_POINTS, TradeObjective
from ..units import (
    beta_from_temperature,
    check_temperature,
    temperature_from_beta,
    temperature_label,
)
from .boundary import _boundary_tensor, holdout_split
from .config import (
    _FORMAT,
    CHECKPOINT_NAME,
    DEFAULT_VALIDATION_SAMPLES,
    TrainingConfig,
    _differences,
    _training_config,
)
from .history import TrainingHistory


class TrainingDivergedError(OpenMMTradeError, RuntimeError):
    """Too many consecutive steps had a non-finite loss, gradient or energy."""


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
                               else checks.integer(validate_every, "validate_every"))
        self.validation_samples = checks.integer(validation_samples, "validation_samples")
        if monitor_temperatures is None:
            monitor_temperatures = sorted({t_min, t0, t_max} if t_min < t0 < t_max
                                          else {t_min, 0.5 * (t_min + t_max), t_max})
        self.monitor_temperatures = [float(check_temperature(t, "monitor_temperatures"))
                                     for t in np.atleast_1d(np.asarray(monitor_temperatures))]
        self.checkpoint_path = _checkpoint_file(checkpoint)
        self.checkpoint_every = (None if checkpoint_every is None
                                 else checks.integer(checkpoint_every, "checkpoint_every"))
        if self.checkpoint_every is not None and self.checkpoint_path is None:
            raise InputError("checkpoint_every needs a checkpoint path or folder, got none")
        self.history_csv = None if history_csv is None else Path(history_csv)
        self.quiet = bool(quiet)
        self.energy_budget = (None if energy_budget is None
                              else checks.integer(energy_budget, "energy_budget"))

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
        until = cfg.steps if until is None else min(checks.integer(until, "until"), cfg.steps)
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
