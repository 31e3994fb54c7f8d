"""BoxPrior: the base distribution of a :class:`~.ConditionalFlow` in normalised space.

Inside the flow every bounded coordinate lives on ``[0, 1]`` (its interval rescaled) and
every circular one on ``[-π, π)``. The prior is a product of

* uniform densities on ``[-π, π)`` for circular coordinates (the torus), and
* for bounded coordinates either uniform on ``[0, 1]`` (``kind="uniform"``) or a normal
  truncated to ``[0, 1]`` (``kind="truncated_normal"``) centred on ``loc`` with width
  ``scale`` (normalised units, e.g. from the data's mean and standard deviation).

With ``widen=True`` (the temperature-steerable-flow trick, off by default) the truncated
normal's width grows as ``scale * sqrt(T / T0) = scale * exp(c / 2)`` where
``c = log(T / T0)``; a uniform prior cannot widen.

With ``floor=α > 0`` every bounded coordinate's truncated normal is mixed with the uniform
density: ``(1 - α) N_[0,1](u) + α``, a defensive mixture (Hesterberg 1995) whose tails
never fall below ``α``. A flow whose normal tails are too light at a temperature it was
not trained on (a stiff torsion narrower than the Boltzmann distribution at 600 K)
otherwise gives a few samples enormous importance weights.

Sampling is reparametrised (inverse CDF; the mixture component is drawn first), so samples
and log-densities are differentiable with respect to the condition. Truncated-normal
arithmetic runs in float64.

Example
-------
>>> import torch
>>> prior = BoxPrior(torch.tensor([True, False]))
>>> z, log_p = prior.sample(3, torch.zeros(3), torch.Generator().manual_seed(0))
>>> z.shape, torch.allclose(log_p, prior.log_prob(z, torch.zeros(3)))
(torch.Size([3, 2]), True)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError

PRIOR_KINDS = ("uniform", "truncated_normal")


def check_prior(kind: str, widen: bool, floor: float) -> None:
    """Raise :class:`InputError` unless ``kind``, ``widen`` and ``floor`` make a prior.

    >>> check_prior("uniform", True, 0.0)
    Traceback (most recent call last):
    ...
    openmm_trade.errors.InputError: widen_prior=True needs prior='truncated_normal', got 'uniform'
    """
    if kind not in PRIOR_KINDS:
        raise InputError(f"prior must be one of {PRIOR_KINDS}, got {kind!r}")
    if widen and kind == "uniform":
        raise InputError("widen_prior=True needs prior='truncated_normal', got 'uniform'")
    if isinstance(floor, bool) or not (isinstance(floor, (int, float)) and 0 <= floor < 1):
        raise InputError(f"prior floor must be a number in [0, 1), got {floor!r}")


_LOG_2PI = math.log(2 * math.pi)


class BoxPrior(nn.Module):
    """Product prior on ``[-π, π)`` (circular) × ``[0, 1]`` (bounded) coordinates.

    Parameters
    ----------
    circular : torch.Tensor
        ``(D,)`` bool mask of the circular coordinates.
    kind : str
        ``"uniform"`` or ``"truncated_normal"`` for the bounded coordinates.
    loc, scale : torch.Tensor, optional
        ``(D,)`` centre and width in normalised units (entries of circular coordinates are
        ignored); default ``0.5`` and ``0.25``.
    widen : bool
        Widen the truncated normal with temperature as ``sqrt(T / T0)``.
    floor : float
        Weight ``α ∈ [0, 1)`` of the uniform density mixed into each truncated normal.

    Examples
    --------
    >>> import torch
    >>> prior = BoxPrior(torch.tensor([False]), kind="truncated_normal", widen=True)
    >>> lp_cold = prior.log_prob(torch.tensor([[0.5]]), torch.tensor([0.0]))
    >>> lp_hot = prior.log_prob(torch.tensor([[0.5]]), torch.tensor([1.0]))
    >>> bool(lp_hot < lp_cold)
    True
    """

    def __init__(self, circular: torch.Tensor, kind: str = "uniform", loc=None, scale=None,
                 widen: bool = False, floor: float = 0.0):
        super().__init__()
        check_prior(kind, widen, floor)
        circular = torch.as_tensor(circular, dtype=torch.bool)
        n = circular.numel()
        loc = torch.full((n,), 0.5) if loc is None else torch.as_tensor(loc).reshape(n)
        scale = torch.full((n,), 0.25) if scale is None else torch.as_tensor(scale).reshape(n)
        if not torch.all(scale[~circular] > 0):
            raise InputError("prior scale must be > 0 for every bounded coordinate")
        self.kind, self.widen, self.floor = kind, widen, float(floor)
        self.register_buffer("circular", circular)
        # float64 by design: plain attributes that follow the device (see _apply)
        self.loc, self.scale = loc.to(torch.float64), scale.to(torch.float64)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.loc, self.scale = (t.to(self.circular.device) for t in (self.loc, self.scale))
        return self

    def _bounded(self) -> torch.Tensor:
        return ~self.circular

    def _normal_parameters(self, condition: torch.Tensor):
        """Per-sample loc, scale ``(B, Db)`` and the standardised bounds ``alpha``, ``beta``."""
        bounded = self._bounded()
        loc, scale = self.loc[bounded], self.scale[bounded]
        scale = scale.expand(condition.shape[0], -1)
        if self.widen:
            scale = scale * torch.exp(0.5 * condition.to(torch.float64))[:, None]
        alpha, beta = (0.0 - loc) / scale, (1.0 - loc) / scale
        return loc, scale, alpha, beta

    @staticmethod
    def _log_mass(alpha, beta):
        """``log(Φ(beta) - Φ(alpha))``, accurate in both tails."""
        upper = torch.special.log_ndtr(beta) + torch.log1p(
            -torch.exp(torch.special.log_ndtr(alpha) - torch.special.log_ndtr(beta))
        )
        lower = torch.special.log_ndtr(-alpha) + torch.log1p(
            -torch.exp(torch.special.log_ndtr(-beta) - torch.special.log_ndtr(-alpha))
        )
        return torch.where(alpha > 0, lower, upper)

    def log_prob(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Log-density ``(B,)`` of normalised points ``z`` ``(B, D)`` at conditions ``(B,)``."""
        n_circular = int(self.circular.sum())
        log_p = torch.full(z.shape[:1], -n_circular * _LOG_2PI, dtype=torch.float64,
                           device=z.device)
        if self.kind == "truncated_normal" and bool(self._bounded().any()):
            loc, scale, alpha, beta = self._normal_parameters(condition)
            u = z[:, self._bounded()].to(torch.float64)
            standard = (u - loc) / scale
            terms = -0.5 * standard.pow(2) - torch.log(scale) - 0.5 * _LOG_2PI
            terms = terms - self._log_mass(alpha, beta)
            if self.floor > 0:
                terms = torch.logaddexp(terms + math.log1p(-self.floor),
                                        torch.full_like(terms, math.log(self.floor)))
            log_p = log_p + terms.sum(-1)
        return log_p.to(z.dtype)

    def sample(self, n: int, condition: torch.Tensor, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32):
        """Draw ``n`` points ``(n, D)`` and their log-densities ``(n,)``."""
        device = self.circular.device
        uniform = torch.rand(n, self.circular.numel(), generator=generator, device=device,
                             dtype=torch.float64)
        z = torch.where(self.circular, (2 * uniform - 1) * math.pi, uniform)
        if self.kind == "truncated_normal" and bool(self._bounded().any()):
            loc, scale, alpha, beta = self._normal_parameters(condition)
            cdf_a, cdf_b = torch.special.ndtr(alpha), torch.special.ndtr(beta)
            p = cdf_a + uniform[:, self._bounded()] * (cdf_b - cdf_a)
            p = p.clamp(torch.finfo(torch.float64).tiny, 1 - torch.finfo(torch.float64).eps)
            u = (loc + scale * torch.special.ndtri(p)).clamp(0.0, 1.0)
            if self.floor > 0:  # the uniform component keeps its uniform draw
                pick = torch.rand(u.shape, generator=generator, device=device,
                                  dtype=torch.float64) < self.floor
                u = torch.where(pick, uniform[:, self._bounded()], u)
            z = z.clone()
            z[:, self._bounded()] = u
        z = z.to(dtype)
        return z, self.log_prob(z, condition)
