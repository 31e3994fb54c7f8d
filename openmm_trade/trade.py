"""The TRADE objective: boundary fit at T0 plus the temperature-derivative residual.

TRADE (Wahl, Rousselot, Draxler, Köthe 2024) trains one conditional density ``p_θ(x | β)``
over a range of inverse temperatures from samples at a single ``β0``. The target family
``q(x | β) ∝ exp(-β U(x))`` satisfies ``∂_β log q(x | β) = -U(x) + ⟨U⟩_β``, so the model
is asked to satisfy the same identity everywhere in the range:

    L = L_boundary(β0) + λ · E_β E_x ρ(r),   r = ∂_β log p_θ(x | β) + U(x) - ⟨U⟩_β

* ``∂_β log p_θ`` comes from autograd with respect to a β tensor that is converted to the
  temperature ``T = 1/(k_B β)`` and fed to ``model.log_prob(x, T)`` (``create_graph=True``),
  so the derivative is with respect to β whatever the network is fed (``log T/T0``).
* ``⟨U⟩_β`` is estimated by self-normalised importance sampling from the flow at β
  (``log w = -β U - log p_θ``; infinite energies get zero weight), either per drawn β
  (``"continuous"``) or on a cached grid of β refreshed with an exponential moving average
  and interpolated linearly (``"grid"``, :class:`MeanEnergyGrid`).
* Evaluation points ``x`` are flow samples at the drawn β (detached), boundary data, or
  both.
* High energies are softened (``energy_cutoff``): reduced energies ``β0 U`` above the
  cutoff enter the residual and ⟨U⟩ as ``c + log(1 + β0 U - c)`` (:func:`lin_log_cut`),
  i.e. the target family is ``exp(-β Ũ)`` with ``Ũ = U`` wherever the Boltzmann density
  is not already negligible. Without it one flow sample with a steric clash
  (``U ~ 10^6`` kJ/mol) asks ``∂_β log p_θ`` for a slope no flow can take, and in the
  transfer down in temperature (600 K → 300 K) those points pulled the model apart.
  Importance weights at sampling time always use the true ``U``.
* ``ρ`` is the mean squared error or the Huber loss. Residuals are expressed in units of
  ``k_B T0`` (``r · β0``), the derivative with respect to ``β/β0``: the loss is the one
  above times the constant ``β0²``, so ``trade_weight`` and ``huber_delta`` are
  dimensionless and transfer between systems.
* Boundary: negative log-likelihood of samples at ``T0``; without data, the reverse KL
  ``E_{x~p}[β0 U(x) + log p_θ(x | β0)]`` (which is ``KL(p ‖ q) - ln Z(β0)``). With data
  the reverse KL can be added to the NLL (``kl_weight`` of :func:`~openmm_trade.train`,
  as in the Boltzmann generators of Noé et al. 2019): the force field then shapes the
  model where the finite MD sample cannot, which limits over-fitting. Reduced energies
  above a cutoff enter the KL logarithmically (:func:`lin_log_cut`), so one badly
  placed sample cannot blow the gradient up.

Example
-------
>>> import torch
>>> from openmm_trade.flow import ConditionalFlow
>>> from openmm_trade.toys import DoubleWell1D
>>> from openmm_trade.units import beta_from_temperature
>>> toy = DoubleWell1D()
>>> model = ConditionalFlow(toy.domains, 300.0, (300.0, 600.0), hidden=8, n_blocks=1)
>>> objective = TradeObjective(toy, boundary_temperature=300.0,
...                            temperature_range=(300.0, 600.0), mean_energy="continuous")
>>> betas = torch.tensor([beta_from_temperature(400.0)], dtype=torch.float64)
>>> term = objective.trade_loss(model, betas, points_per_condition=64)
>>> bool(torch.isfinite(term.loss)), term.n_points
(True, 64)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .energy import Energy
from .errors import CheckpointError, InputError
from .importance import effective_sample_size
from .units import beta_from_temperature, check_temperature, temperature_from_beta

__all__ = [
    "LOSSES",
    "MEAN_ENERGY_MODES",
    "EVALUATION_POINTS",
    "MeanEnergyEstimate",
    "MeanEnergyGrid",
    "TradeTerm",
    "TradeObjective",
    "beta_derivative",
    "draw_samples",
    "estimate_mean_energy",
    "importance_mean_energy",
    "lin_log_cut",
    "soften_energies",
    "SoftenedEnergy",
    "residual_loss",
    "trade_residual",
]

#: residual penalties ρ
LOSSES = ("mse", "huber")
#: estimators of ⟨U⟩_β
MEAN_ENERGY_MODES = ("grid", "continuous")
#: where the residual is evaluated
EVALUATION_POINTS = ("flow", "boundary", "both")


def _choice(value, name: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise InputError(f"{name} must be one of {options}, got {value!r}")
    return value


def draw_samples(model, n: int, temperature, generator: torch.Generator | None = None):
    """``model.sample(n, temperature, generator=generator)`` of a model of the protocol.

    ``generator=None`` lets the model draw from its own source of randomness (see
    :class:`openmm_trade.model.BoltzmannModel`).

    Examples
    --------
    >>> from openmm_trade.flow import ConditionalFlow, Domain
    >>> model = ConditionalFlow([Domain.circular()], 300.0, (300.0, 600.0), hidden=8)
    >>> x, log_p = draw_samples(model, 3, 300.0, torch.Generator().manual_seed(0))
    >>> x.shape, log_p.shape
    (torch.Size([3, 1]), torch.Size([3]))
    """
    return model.sample(n, temperature, generator=generator)


def _model_dtype(model) -> torch.dtype:
    return getattr(model, "dtype", torch.float32)


def _model_device(model) -> torch.device:
    return torch.device(getattr(model, "device", "cpu"))


def beta_derivative(model, x: torch.Tensor, beta: torch.Tensor, create_graph: bool = True):
    """Log-density and its derivative with respect to β by autograd.

    β (float64, ``(B,)``) becomes a leaf with ``requires_grad``, is converted to
    ``T = 1/(k_B β)`` in the model's dtype and fed to ``model.log_prob(x, T)``; each
    sample has its own β, so the gradient of the sum is the per-sample derivative.

    Parameters
    ----------
    model : conditional density model
        With ``log_prob(x, temperature)``.
    x : torch.Tensor
        ``(B, *event_shape)`` evaluation points (not differentiated).
    beta : torch.Tensor
        ``(B,)`` inverse temperatures in mol/kJ.
    create_graph : bool
        Keep the graph so the derivative can be differentiated with respect to the
        parameters (training); ``False`` for diagnostics.

    Returns
    -------
    log_p : torch.Tensor
        ``(B,)`` log-densities (model dtype).
    dlogp_dbeta : torch.Tensor
        ``(B,)`` float64 ``∂_β log p_θ(x | β)`` in kJ/mol.

    Examples
    --------
    >>> from openmm_trade.flow import ConditionalFlow, Domain
    >>> model = ConditionalFlow([Domain.interval(-1.0, 1.0)], 300.0, (300.0, 600.0),
    ...                         prior="uniform", widen_prior=False)
    >>> beta = torch.full((2,), 0.3, dtype=torch.float64)
    >>> log_p, d = beta_derivative(model, torch.zeros(2, 1), beta, create_graph=False)
    >>> d.abs().max().item()  # a fresh flow is uniform at every temperature
    0.0
    """
    if not isinstance(beta, torch.Tensor) or beta.dim() != 1 or beta.shape[0] != x.shape[0]:
        shape = tuple(beta.shape) if isinstance(beta, torch.Tensor) else type(beta).__name__
        raise InputError(f"beta must be a ({x.shape[0]},) tensor, got {shape}")
    beta = beta.detach().to(device=x.device, dtype=torch.float64).requires_grad_(True)
    with torch.enable_grad():
        temperature = temperature_from_beta(beta).to(_model_dtype(model))
        log_p = model.log_prob(x.detach(), temperature)
        (grad,) = torch.autograd.grad(log_p.sum(), beta, create_graph=create_graph)
    return log_p, grad


def trade_residual(model, x, beta, energies, mean_energies, scale: float = 1.0,
                   create_graph: bool = True) -> torch.Tensor:
    """TRADE residual ``scale · (∂_β log p_θ(x|β) + U(x) - ⟨U⟩_β)``, float64 ``(B,)``.

    Examples
    --------
    >>> from openmm_trade.flow import ConditionalFlow, Domain
    >>> model = ConditionalFlow([Domain.interval(-1.0, 1.0)], 300.0, (300.0, 600.0),
    ...                         prior="uniform", widen_prior=False)
    >>> beta = torch.full((2,), 0.3, dtype=torch.float64)
    >>> u = torch.tensor([1.0, 3.0], dtype=torch.float64)
    >>> trade_residual(model, torch.zeros(2, 1), beta, u, u.mean(), create_graph=False)
    tensor([-1.,  1.], dtype=torch.float64)
    """
    _, grad = beta_derivative(model, x, beta, create_graph=create_graph)
    energies = energies.detach().to(grad.device, torch.float64)
    mean_energies = torch.as_tensor(mean_energies, dtype=torch.float64, device=grad.device)
    return scale * (grad + energies - mean_energies.detach())


def residual_loss(residual: torch.Tensor, loss: str = "mse", huber_delta: float = 1.0):
    """Mean penalty ``ρ(r)``: ``"mse"`` (``r²``) or ``"huber"`` (quadratic within δ).

    Examples
    --------
    >>> r = torch.tensor([0.5, 3.0])
    >>> residual_loss(r).item(), residual_loss(r, "huber", 1.0).item()
    (4.625, 1.3125)
    """
    _choice(loss, "loss", LOSSES)
    if loss == "mse":
        return residual.pow(2).mean()
    return F.huber_loss(residual, torch.zeros_like(residual), delta=huber_delta)


def lin_log_cut(reduced_energy: torch.Tensor, cutoff: float | None,
                maximum: float = 1e9) -> torch.Tensor:
    """Linear below ``cutoff``, logarithmic above: ``c + log(1 + u - c)`` for ``u > c``.

    Continuous with a continuous first derivative at the cutoff (slope 1 below,
    ``1 / (1 + u - c)`` above), so the reverse-KL gradient of a high-energy sample is
    damped instead of dominating the batch (the idea of bgflow's ``LinLogCutEnergy``).
    Values are first clamped to ``maximum``; ``cutoff=None`` returns ``u`` unchanged.

    Parameters
    ----------
    reduced_energy : torch.Tensor
        Energies in units of ``k_B T`` (any shape, differentiable).
    cutoff : float or None
        Where the logarithmic branch starts (same units).
    maximum : float
        Clamp applied before the cut (keeps ``inf``-free arithmetic finite).

    Examples
    --------
    >>> u = torch.tensor([-3.0, 10.0, 10.0 + math.e - 1.0])
    >>> lin_log_cut(u, 10.0).tolist()
    [-3.0, 10.0, 11.0]
    """
    if cutoff is None:
        return reduced_energy
    u = reduced_energy.clamp(max=maximum)
    above = u > cutoff
    excess = torch.where(above, u - cutoff, torch.zeros_like(u))
    return torch.where(above, cutoff + torch.log1p(excess), u)


def soften_energies(energies: torch.Tensor, beta0: float, cutoff: float | None) -> torch.Tensor:
    """Energies (kJ/mol) with reduced values ``β0 U`` above ``cutoff`` cut lin-log.

    ``Ũ = lin_log_cut(β0 U, cutoff) / β0`` for finite ``U``; non-finite values and
    ``cutoff=None`` pass through unchanged.

    Examples
    --------
    >>> u = torch.tensor([1.0, 1e6, math.inf], dtype=torch.float64)
    >>> soften_energies(u, beta0=1.0, cutoff=10.0).round(decimals=3).tolist()
    [1.0, 23.816, inf]
    """
    if cutoff is None:
        return energies
    finite = torch.isfinite(energies)
    cut = lin_log_cut(beta0 * torch.where(finite, energies, torch.zeros_like(energies)),
                      cutoff) / beta0
    return torch.where(finite, cut, energies)


class SoftenedEnergy:
    """``U`` softened by :func:`soften_energies` (a callable like an :class:`Energy`)."""

    def __init__(self, energy: Energy, beta0: float, cutoff: float | None) -> None:
        self.energy, self.beta0, self.cutoff = energy, float(beta0), cutoff

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return soften_energies(self.energy(x), self.beta0, self.cutoff)


def _ess(log_weights: torch.Tensor) -> float:
    """ESS fraction of log-weights (``-inf`` = zero weight), via :mod:`~openmm_trade.metrics`."""
    return effective_sample_size(log_weights.detach().cpu().numpy())


@dataclass(frozen=True)
class MeanEnergyEstimate:
    """A self-normalised importance-sampling estimate of ``⟨U⟩_β``.

    Attributes
    ----------
    mean : float
        ``Σ w̄_i U_i`` in kJ/mol (NaN when no sample had a finite weight).
    ess : float
        Effective sample size as a fraction of ``n_samples``.
    n_samples : int
        Samples drawn.
    n_nonfinite : int
        Samples with a non-finite energy or log-density (given zero weight).
    """

    mean: float
    ess: float
    n_samples: int
    n_nonfinite: int

    @property
    def ok(self) -> bool:
        """Whether the estimate is finite."""
        return math.isfinite(self.mean)


def _log_weights(energies, log_p, beta):
    energies = energies.detach().to(torch.float64)
    log_p = log_p.detach().to(energies.device, torch.float64)
    beta = torch.as_tensor(beta, dtype=torch.float64, device=energies.device)
    valid = torch.isfinite(energies) & torch.isfinite(log_p)
    log_w = torch.where(valid, -beta * energies - log_p, torch.full_like(energies, -math.inf))
    return log_w, valid


def importance_mean_energy(energies, log_p, beta) -> MeanEnergyEstimate:
    """``⟨U⟩_β`` from samples of the model with energies and model log-densities.

    ``log w_i = -β U_i - log p_i``; samples with infinite energy get zero weight.

    Examples
    --------
    >>> u = torch.tensor([1.0, 2.0, math.inf], dtype=torch.float64)
    >>> est = importance_mean_energy(u, torch.zeros(3), beta=0.0)
    >>> est.mean, est.n_nonfinite
    (1.5, 1)
    """
    log_w, valid = _log_weights(energies, log_p, beta)
    n = int(log_w.numel())
    if not bool(valid.any()):
        return MeanEnergyEstimate(math.nan, 0.0, n, n)
    weights = torch.softmax(log_w, 0)
    mean = float(torch.sum(weights[valid] * energies.detach().to(torch.float64)[valid]))
    return MeanEnergyEstimate(mean, _ess(log_w), n, int((~valid).sum()))


def estimate_mean_energy(model, energy: Energy, temperature: float, n_samples: int,
                         generator: torch.Generator | None = None) -> MeanEnergyEstimate:
    """Draw ``n_samples`` from the model at ``temperature`` and estimate ``⟨U⟩``.

    Examples
    --------
    >>> from openmm_trade.flow import ConditionalFlow
    >>> from openmm_trade.toys import DoubleWell1D
    >>> toy = DoubleWell1D()
    >>> model = ConditionalFlow(toy.domains, 300.0, (300.0, 600.0), hidden=8, n_blocks=1)
    >>> est = estimate_mean_energy(model, toy, 300.0, 4000, torch.Generator().manual_seed(0))
    >>> abs(est.mean - toy.mean_energy(300.0)) < 0.1, est.n_nonfinite
    (True, 0)
    """
    temperature = check_temperature(temperature)
    with torch.no_grad():
        x, log_p = draw_samples(model, n_samples, temperature, generator)
        energies = energy(x.to(torch.float64))
    return importance_mean_energy(energies, log_p, beta_from_temperature(temperature))


class MeanEnergyGrid:
    """A cached table of ``⟨U⟩_β`` on a grid of β, refreshed by EMA and interpolated.

    Each refresh of a node draws flow samples at its β and blends the importance-sampling
    estimate into the table: ``v ← (1 - α) v + α v_new`` (the first estimate is taken as
    is). Lookups interpolate linearly in β between the two bracketing nodes; a lookup whose
    bracket has not been estimated yet is NaN.

    Parameters
    ----------
    temperature_range : (float, float)
        ``(T_min, T_max)`` in K; the grid spans the corresponding β uniformly.
    n_points : int
        Number of grid nodes (≥ 2).
    ema : float
        Weight ``α ∈ (0, 1]`` of a new estimate.

    Examples
    --------
    >>> grid = MeanEnergyGrid((300.0, 600.0), n_points=3)
    >>> grid.update(0, 2.0); grid.update(1, 4.0)
    >>> grid(torch.tensor([0.5 * (grid.betas[0] + grid.betas[1])])).tolist()
    [3.0]
    """

    def __init__(self, temperature_range: tuple[float, float], n_points: int = 16,
                 ema: float = 0.2) -> None:
        t_min, t_max = (check_temperature(t, "temperature_range") for t in temperature_range)
        if not t_min < t_max:
            raise InputError(f"temperature_range must have T_min < T_max, got {temperature_range}")
        if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
            raise InputError(f"grid n_points must be an int >= 2, got {n_points!r}")
        if not 0.0 < float(ema) <= 1.0:
            raise InputError(f"grid ema must be in (0, 1], got {ema!r}")
        self.ema = float(ema)
        self.betas = np.linspace(beta_from_temperature(t_max), beta_from_temperature(t_min),
                                 n_points)
        self.values = np.full(n_points, np.nan)
        self.counts = np.zeros(n_points, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.betas)

    def update(self, index: int, value: float) -> None:
        """Blend a new estimate into node ``index`` (non-finite values are ignored)."""
        if not math.isfinite(value):
            return
        old = self.values[index]
        self.values[index] = value if self.counts[index] == 0 else (
            (1.0 - self.ema) * old + self.ema * value)
        self.counts[index] += 1

    def nodes_between(self, beta_low: float, beta_high: float) -> np.ndarray:
        """Indices of the nodes needed to interpolate on ``[beta_low, beta_high]``."""
        low = max(int(np.searchsorted(self.betas, beta_low, side="right")) - 1, 0)
        high = min(int(np.searchsorted(self.betas, beta_high, side="left")), len(self) - 1)
        return np.arange(low, high + 1)

    def __call__(self, beta: torch.Tensor) -> torch.Tensor:
        """Interpolated ``⟨U⟩`` (float64) at ``beta`` (clamped to the grid's span)."""
        beta = beta.detach().to(torch.float64)
        b = beta.clamp(float(self.betas[0]), float(self.betas[-1])).cpu().numpy()
        index = np.clip(np.searchsorted(self.betas, b, side="right") - 1, 0, len(self) - 2)
        frac = (b - self.betas[index]) / (self.betas[index + 1] - self.betas[index])
        left, right = self.values[index], self.values[index + 1]
        # avoid 0 * NaN at the exact nodes
        value = np.where(frac <= 0, left, np.where(frac >= 1, right,
                                                   (1 - frac) * left + frac * right))
        return torch.from_numpy(value).to(beta.device)

    def refresh(self, model, energy: Energy, indices, n_samples: int,
                generator: torch.Generator | None = None) -> int:
        """Re-estimate the nodes ``indices``; returns the number of non-finite energies."""
        nonfinite = 0
        for index in np.atleast_1d(indices):
            estimate = estimate_mean_energy(
                model, energy, float(temperature_from_beta(self.betas[index])), n_samples,
                generator)
            nonfinite += estimate.n_nonfinite
            self.update(int(index), estimate.mean)
        return nonfinite

    def state_dict(self) -> dict:
        """Everything needed to restore the table exactly."""
        return {"betas": self.betas.copy(), "values": self.values.copy(),
                "counts": self.counts.copy(), "ema": self.ema}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (the grid must have the same nodes)."""
        betas = np.asarray(state["betas"])
        if betas.shape != self.betas.shape or not np.allclose(betas, self.betas, rtol=1e-12):
            raise CheckpointError(
                f"mean-energy grid has {len(self)} nodes over β∈[{self.betas[0]:.6g}, "
                f"{self.betas[-1]:.6g}], the checkpoint's has {len(betas)} nodes over "
                f"[{betas[0]:.6g}, {betas[-1]:.6g}]"
            )
        self.values = np.asarray(state["values"], dtype=np.float64).copy()
        self.counts = np.asarray(state["counts"], dtype=np.int64).copy()
        self.ema = float(state["ema"])


@dataclass
class TradeTerm:
    """The TRADE part of one training step.

    Attributes
    ----------
    loss : torch.Tensor
        ``mean ρ(r)`` (scalar, differentiable); non-finite when an energy was.
    residual : torch.Tensor
        The residuals (detached, in units of ``k_B T0``).
    n_points : int
        Evaluation points.
    n_nonfinite : int
        Non-finite energies among the evaluation points and importance samples.
    mean_energy_ess : float
        Smallest ESS fraction of the per-condition ⟨U⟩ estimates (continuous mode; NaN
        in grid mode).
    """

    loss: torch.Tensor
    residual: torch.Tensor
    n_points: int
    n_nonfinite: int
    mean_energy_ess: float = math.nan

    @property
    def rms(self) -> float:
        """Root mean square of the finite residuals."""
        finite = self.residual[torch.isfinite(self.residual)]
        return float(finite.pow(2).mean().sqrt()) if finite.numel() else math.nan


class TradeObjective:
    """Boundary and TRADE losses of a conditional model for one energy.

    Parameters
    ----------
    energy : Energy
        The potential ``U(x)`` in kJ/mol.
    boundary_temperature : float
        ``T0`` in K, where the boundary data (or the reverse KL) live.
    temperature_range : (float, float)
        Training range in K (for the grid of ⟨U⟩).
    loss : {"huber", "mse"}
        Residual penalty ρ (Huber by default: robust to unfixable tail residuals).
    huber_delta : float
        Huber threshold (in ``k_B T0``).
    mean_energy : {"grid", "continuous"}
        Estimator of ``⟨U⟩_β``.
    evaluation_points : {"flow", "boundary", "both"}
        Where residuals are evaluated: flow samples at the drawn β (detached), boundary
        data (each paired with a drawn β), or both (twice the points).
    grid_size, grid_samples, grid_ema
        Nodes of the ⟨U⟩ grid, flow samples per node refresh, EMA weight.
    energy_cutoff : float, optional
        Absolute reduced energy ``β0 U`` above which energies are softened in the TRADE
        residual, the ⟨U⟩ grid and the reverse KL (:func:`soften_energies`); ``None``:
        no softening.

    Examples
    --------
    See the module example.
    """

    def __init__(
        self,
        energy: Energy,
        boundary_temperature: float,
        temperature_range: tuple[float, float],
        loss: str = "huber",
        huber_delta: float = 1.0,
        mean_energy: str = "grid",
        evaluation_points: str = "flow",
        grid_size: int = 16,
        grid_samples: int = 256,
        grid_ema: float = 0.2,
        energy_cutoff: float | None = None,
    ) -> None:
        if not isinstance(energy, Energy):
            raise InputError(f"energy must be an openmm_trade Energy, got {type(energy).__name__}")
        self.energy = energy
        self.boundary_temperature = check_temperature(boundary_temperature,
                                                      "boundary_temperature")
        self.beta0 = beta_from_temperature(self.boundary_temperature)
        self.loss = _choice(loss, "loss", LOSSES)
        if not float(huber_delta) > 0:
            raise InputError(f"huber_delta must be > 0, got {huber_delta!r}")
        self.huber_delta = float(huber_delta)
        self.mean_energy = _choice(mean_energy, "mean_energy", MEAN_ENERGY_MODES)
        self.evaluation_points = _choice(evaluation_points, "evaluation_points",
                                         EVALUATION_POINTS)
        if isinstance(grid_samples, bool) or not isinstance(grid_samples, int) or grid_samples < 2:
            raise InputError(f"grid_samples must be an int >= 2, got {grid_samples!r}")
        self.grid_samples = grid_samples
        if energy_cutoff is not None and not math.isfinite(float(energy_cutoff)):
            raise InputError(f"energy_cutoff must be a finite number or None, got "
                             f"{energy_cutoff!r}")
        self.energy_cutoff = None if energy_cutoff is None else float(energy_cutoff)
        self.softened = SoftenedEnergy(energy, self.beta0, self.energy_cutoff)
        low, high = temperature_range
        self.grid = (MeanEnergyGrid((low, high), grid_size, grid_ema)
                     if mean_energy == "grid" and low < high else None)
        self._cursor = 0  # round-robin position of grid refreshes

    # ------------------------------------------------------------------ boundary
    def nll(self, model, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of boundary samples ``x`` at ``T0`` (mean)."""
        return -model.log_prob(x, self.boundary_temperature).mean()

    def reverse_kl(self, model, n_samples: int, generator: torch.Generator | None = None,
                   energy_cutoff: float | None = None):
        """``E_{x~p(·|β0)}[β0 U(x) + log p(x|β0)]`` with reparametrised samples.

        ``energy_cutoff`` (absolute, in ``k_B T0``; default: the objective's): reduced
        energies above it enter through :func:`lin_log_cut`. Returns the loss and the
        number of non-finite energies (those samples are left out; the loss is NaN if none
        is finite).
        """
        x, log_p = draw_samples(model, n_samples, self.boundary_temperature, generator)
        energies = self.energy(x.to(torch.float64))
        valid = torch.isfinite(energies)
        n_bad = int((~valid).sum())
        if not bool(valid.any()):
            return torch.full((), math.nan, dtype=torch.float64), n_bad
        if energy_cutoff is None:
            energy_cutoff = self.energy_cutoff
        reduced = lin_log_cut(self.beta0 * energies[valid], energy_cutoff)
        loss = reduced + log_p.to(torch.float64)[valid]
        return loss.mean(), n_bad

    # ------------------------------------------------------------------ ⟨U⟩ grid
    def refresh_grid(self, model, beta_low: float, beta_high: float, n_nodes: int,
                     generator: torch.Generator | None = None) -> int:
        """Refresh the grid nodes covering ``[beta_low, beta_high]``.

        Nodes never estimated are all refreshed at once; otherwise ``n_nodes`` of them in
        round-robin order. Returns the number of non-finite energies met.
        """
        if self.grid is None:
            return 0
        active = self.grid.nodes_between(beta_low, beta_high)
        fresh = active[self.grid.counts[active] == 0]
        if fresh.size:
            chosen = fresh
        else:
            order = [(self._cursor + i) % active.size for i in range(min(n_nodes, active.size))]
            chosen = active[order]
            self._cursor = (self._cursor + len(order)) % max(active.size, 1)
        return self.grid.refresh(model, self.softened, chosen, self.grid_samples, generator)

    # ------------------------------------------------------------------ TRADE
    def trade_loss(
        self,
        model,
        betas: torch.Tensor,
        points_per_condition: int,
        boundary: torch.Tensor | None = None,
        boundary_energies: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> TradeTerm:
        """TRADE loss at the conditions ``betas`` ``(K,)``, ``points_per_condition`` each.

        Parameters
        ----------
        model : conditional density model
        betas : torch.Tensor
            ``(K,)`` float64 inverse temperatures (mol/kJ).
        points_per_condition : int
            ``m``: flow samples per condition (evaluation points and, in continuous mode,
            the importance samples of ⟨U⟩), and boundary points per condition.
        boundary, boundary_energies : torch.Tensor, optional
            ``(K·m, *event_shape)`` boundary points and their energies (needed for
            ``evaluation_points`` ``"boundary"``/``"both"``).
        generator : torch.Generator, optional
            Randomness of the flow samples.
        """
        betas = betas.detach().to(torch.float64).reshape(-1)
        m = int(points_per_condition)
        per_point = betas.repeat_interleave(m)
        device = _model_device(model)
        points, energies, point_betas = [], [], []
        n_bad = 0
        means = None
        ess = math.nan
        if self.mean_energy == "continuous" or self.evaluation_points != "boundary":
            with torch.no_grad():
                x, log_p = draw_samples(model, per_point.numel(),
                                        temperature_from_beta(per_point).to(_model_dtype(model))
                                        .to(device), generator)
                u = self.softened(x.to(torch.float64)).to(torch.float64)
            n_bad += int((~torch.isfinite(u)).sum())
            if self.mean_energy == "continuous":
                estimates = [importance_mean_energy(u[k * m:(k + 1) * m],
                                                    log_p[k * m:(k + 1) * m], float(b))
                             for k, b in enumerate(betas.tolist())]
                means = torch.tensor([e.mean for e in estimates],
                                     dtype=torch.float64).repeat_interleave(m)
                ess = min(e.ess for e in estimates)
            if self.evaluation_points != "boundary":
                points.append(x.detach())
                energies.append(u)
                point_betas.append(per_point)
        if self.evaluation_points != "flow":
            if boundary is None or boundary_energies is None:
                raise InputError(
                    f"evaluation_points={self.evaluation_points!r} needs boundary data, got none"
                )
            points.append(boundary.to(device))
            energies.append(soften_energies(boundary_energies.to(torch.float64), self.beta0,
                                            self.energy_cutoff))
            point_betas.append(per_point)
        x = torch.cat(points)
        u = torch.cat([e.to(x.device) for e in energies])
        b = torch.cat(point_betas).to(x.device)
        if means is None:
            means = self.grid(b) if self.grid is not None else torch.full_like(b, math.nan)
        else:
            means = means.repeat(len(points)).to(x.device)
        residual = trade_residual(model, x, b, u, means, scale=self.beta0)
        loss = residual_loss(residual, self.loss, self.huber_delta)
        return TradeTerm(loss, residual.detach(), int(x.shape[0]), n_bad, ess)

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self, model, temperature: float, n_samples: int,
                    generator: torch.Generator | None = None) -> dict:
        """ESS, ⟨U⟩ and the RMS TRADE residual of flow samples at one temperature.

        Returns
        -------
        dict
            ``ess`` (fraction), ``mean_energy`` (kJ/mol, importance-sampled),
            ``residual`` (RMS of the training objective's residual, with energies
            softened above ``energy_cutoff``, in ``k_B T0``), ``n_nonfinite``.

        Examples
        --------
        >>> from openmm_trade.flow import ConditionalFlow
        >>> from openmm_trade.toys import DoubleWell1D
        >>> toy = DoubleWell1D()
        >>> model = ConditionalFlow(toy.domains, 300.0, (300.0, 600.0), hidden=8)
        >>> objective = TradeObjective(toy, 300.0, (300.0, 600.0))
        >>> d = objective.diagnostics(model, 450.0, 256, torch.Generator().manual_seed(0))
        >>> 0.0 < d["ess"] <= 1.0, d["residual"] > 0
        (True, True)
        """
        beta = beta_from_temperature(check_temperature(temperature))
        with torch.no_grad():
            x, log_p = draw_samples(model, n_samples, temperature, generator)
            u = self.energy(x.to(torch.float64)).to(torch.float64)
        estimate = importance_mean_energy(u, log_p, beta)
        log_w, valid = _log_weights(u, log_p, beta)
        residual = math.nan
        softened = soften_energies(u, self.beta0, self.energy_cutoff)
        target = importance_mean_energy(softened, log_p, beta)
        if target.ok and bool(valid.any()):
            betas = torch.full((int(valid.sum()),), beta, dtype=torch.float64)
            r = trade_residual(model, x.detach()[valid], betas, softened[valid], target.mean,
                               scale=self.beta0, create_graph=False)
            residual = float(r.pow(2).mean().sqrt())
        return {"ess": _ess(log_w), "mean_energy": estimate.mean,
                "residual": residual, "n_nonfinite": estimate.n_nonfinite}

    def state_dict(self) -> dict:
        """The objective's mutable state (the ⟨U⟩ grid and its refresh cursor)."""
        return {"grid": None if self.grid is None else self.grid.state_dict(),
                "cursor": self._cursor}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        if (state.get("grid") is None) != (self.grid is None):
            raise CheckpointError("checkpoint and run disagree on mean_energy='grid'")
        if self.grid is not None:
            self.grid.load_state_dict(state["grid"])
        self._cursor = int(state.get("cursor", 0))
