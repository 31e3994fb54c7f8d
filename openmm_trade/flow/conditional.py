"""ConditionalFlow: a temperature-conditioned spline flow on a flat vector.

The density ``p_θ(x | T)`` over ``x ∈ R^D`` whose coordinates are described by
:class:`~.Domain` entries. Bounded coordinates (``"interval"``, ``"real"``) are rescaled
to ``[0, 1]``, circular ones stay on ``[-π, π)``; a stack of :class:`~.SplineCoupling`
layers maps them to a :class:`~.BoxPrior` sample. Everything is conditioned on
``c = log(T / T0)`` through smooth networks, so ``∂ log p / ∂T`` (and its gradient with
respect to the parameters, as TRADE needs) comes from autograd.

It implements the model protocol :class:`openmm_trade.model.BoltzmannModel`:
``sample(n, temperature, generator=None) -> (x, log_p)``, ``log_prob(x, temperature)``,
and the optional ``temperature_range``,
``reference_temperature``, ``event_shape``, ``device`` and ``dtype``. Samples and log
densities are returned in the model dtype (float32 by default).

Example
-------
>>> import torch
>>> from openmm_trade.flow import ConditionalFlow, Domain
>>> flow = ConditionalFlow([Domain.circular(), Domain.interval(0.0, 2.0)],
...                        reference_temperature=300.0, temperature_range=(300.0, 600.0),
...                        hidden=16, n_blocks=1, seed=0)
>>> x, log_p = flow.sample(5, 450.0)
>>> x.shape, torch.allclose(log_p, flow.log_prob(x, 450.0), atol=1e-5)
(torch.Size([5, 2]), True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InputError
from ..units import check_temperature
from .architecture import FlowArchitecture
from .conditioner import condition_features
from .couplings import SplineCoupling
from .domain import Domain
from .priors import BoxPrior

#: golden-angle rotation between successive layers' circular seams
_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))

Layer = tuple[Sequence[int], Sequence[int]]
Block = Sequence[Layer]


def alternating_layers(n_coordinates: int) -> list[list[Layer]]:
    """Default coupling pattern for ``n_coordinates``: per block, two layers of halves.

    Each block is ``[(A, B), (B, A)]``; blocks alternate between even/odd and
    first/second-half splits so that every coordinate conditions every other one. One
    coordinate: a single layer conditioned on the temperature only.

    >>> alternating_layers(3)[0]
    [([0, 2], [1]), ([1], [0, 2])]
    >>> alternating_layers(3)[1]
    [([0], [1, 2]), ([1, 2], [0])]
    >>> alternating_layers(1)
    [[([0], [])]]
    """
    if n_coordinates == 1:
        return [[([0], [])]]
    indices = list(range(n_coordinates))
    even_odd = (indices[0::2], indices[1::2])
    halves = (indices[: n_coordinates // 2], indices[n_coordinates // 2:])
    return [[(a, b), (b, a)] for a, b in (even_odd, halves)]


class ConditionalFlow(nn.Module):
    """Temperature-conditioned spline flow on vectors with per-coordinate domains.

    Parameters
    ----------
    domains : sequence of Domain
        One entry per coordinate.
    reference_temperature : float
        ``T0`` in K; the networks see ``log(T / T0)``.
    temperature_range : tuple of float
        ``(T_min, T_max)`` in K the model is trained for; outside it the model warns.
    architecture : FlowArchitecture or dict, optional
        Width, depth, spline bins and latent prior (default :class:`~.FlowArchitecture`'s
        defaults). The truncated-normal prior of a bounded coordinate is centred on its
        domain's ``loc`` with its ``scale`` (default mid-interval, width / 4).
    layers : list of blocks, optional
        Coupling pattern: each block is a list of layers ``(transformed, conditioning)``
        (coordinate index lists); block ``b`` of ``n_blocks`` is ``layers[b % len(layers)]``.
        Default: :func:`alternating_layers`.
    seed : int
        Seed of the initial weights and of the model's own sampling generator.
    device, dtype
        Where and in what precision the flow runs (default CPU, float32).
    **overrides
        Fields of :class:`~.FlowArchitecture` (``hidden=``, ``n_blocks=``, ``prior=``, ...)
        that replace those of ``architecture``.

    Notes
    -----
    Outside the support of a bounded coordinate ``log_prob`` is ``-inf``; circular inputs
    are wrapped to ``[-π, π)``. ``sample`` without a ``generator`` draws from the model's
    generator, seeded with ``seed``: two models built with the same seed give the same
    sample sequence. The generator state is not saved in checkpoints.

    Examples
    --------
    >>> import torch
    >>> flow = ConditionalFlow([Domain.interval(-2.0, 2.0)], 300.0, (300.0, 600.0),
    ...                        hidden=16, n_blocks=2)
    >>> t = torch.tensor([350.0, 500.0], requires_grad=True)
    >>> log_p = flow.log_prob(torch.tensor([[0.1], [0.2]]), t)
    >>> d_dt, = torch.autograd.grad(log_p.sum(), t)
    >>> d_dt.shape
    torch.Size([2])
    """

    def __init__(
        self,
        domains: Sequence[Domain],
        reference_temperature: float,
        temperature_range: tuple[float, float],
        architecture: FlowArchitecture | dict | None = None,
        *,
        layers: Sequence[Block] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **overrides,
    ):
        super().__init__()
        arch = FlowArchitecture.resolve(architecture, overrides)
        domains = [Domain.from_dict(d) if isinstance(d, dict) else d for d in domains]
        if not domains or not all(isinstance(d, Domain) for d in domains):
            raise InputError("domains must be a non-empty sequence of flow.Domain entries")
        t0 = check_temperature(reference_temperature, "reference_temperature")
        if not isinstance(t0, float):
            raise InputError(f"reference_temperature must be a float in K, got {t0!r}")
        try:
            t_min, t_max = (check_temperature(t, "temperature_range") for t in temperature_range)
        except TypeError:
            raise InputError(
                f"temperature_range must be (T_min, T_max) in K, got {temperature_range!r}"
            ) from None
        if not t_min <= t_max:
            raise InputError(f"temperature_range must have T_min <= T_max, got {temperature_range}")
        n = len(domains)
        blocks = alternating_layers(n) if layers is None else [
            [(list(map(int, t)), list(map(int, c))) for t, c in block] for block in layers]
        for block in blocks:
            for transformed, conditioning in block:
                bad = [i for i in (*transformed, *conditioning) if not 0 <= i < n]
                if bad:
                    raise InputError(f"layers index coordinates 0..{n - 1}, got {bad[:3]}")
                if not transformed or set(transformed) & set(conditioning):
                    raise InputError("each layer needs transformed coordinates disjoint from "
                                     f"its conditioning ones, got {transformed}, {conditioning}")

        self.domains = tuple(domains)
        self.reference_temperature = t0
        self.temperature_range = (t_min, t_max)
        self.event_shape = (n,)
        self.seed = int(seed)
        self.architecture = arch
        self._config = dict(arch.to_dict(), layers=None if layers is None else [
            [[t, c] for t, c in block] for block in blocks], seed=self.seed)
        self.condition_scale = max(abs(math.log(t_min / t0)), abs(math.log(t_max / t0)), 0.1)
        self._warned = False

        circular = torch.tensor([d.is_circular for d in domains])
        low = torch.tensor([0.0 if d.is_circular else d.low for d in domains], dtype=torch.float64)
        width = torch.tensor([1.0 if d.is_circular else d.width for d in domains],
                             dtype=torch.float64)
        loc = torch.tensor([0.5 if d.loc is None or d.is_circular else d.loc for d in domains],
                           dtype=torch.float64)
        scale = torch.tensor([0.25 if d.scale is None or d.is_circular else d.scale / d.width
                              for d in domains], dtype=torch.float64)
        loc = torch.where(circular | torch.tensor([d.loc is None for d in domains]), loc,
                          (loc - low) / width)
        self.register_buffer("circular", circular)
        # derived from the domains (not saved: models written before arcs existed still load)
        self.register_buffer("arc", torch.tensor([d.kind == "arc" for d in domains]),
                             persistent=False)
        # float64 geometry, derived from the domains: plain attributes, not buffers
        self.low, self.width = low, width
        self._log_width = torch.log(width[~circular]).sum()
        self.prior = BoxPrior(circular, arch.prior, loc, scale, arch.widen_prior, arch.prior_floor)

        generator = torch.Generator().manual_seed(self.seed)
        couplings = []
        for b in range(arch.n_blocks):
            for transformed, conditioning in blocks[b % len(blocks)]:
                couplings.append(SplineCoupling(
                    transformed, conditioning, circular, n_bins=arch.n_bins, hidden=arch.hidden,
                    depth=arch.depth, offset=_GOLDEN_ANGLE * (len(couplings) + 1),
                    generator=generator,
                ))
        self.couplings = nn.ModuleList(couplings)
        self._generator: torch.Generator | None = None
        self.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ protocol facts
    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.circular.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters (and of samples and log-densities)."""
        return next(self.parameters()).dtype

    @property
    def config(self) -> dict:
        """Constructor arguments (JSON-friendly) that rebuild this architecture."""
        return dict(domains=[d.to_dict() for d in self.domains],
                    reference_temperature=self.reference_temperature,
                    temperature_range=list(self.temperature_range), **self._config)

    def _apply(self, fn, recurse=True):
        """Follow ``.to()``/``.cuda()`` moves; float64 geometry stays float64."""
        super()._apply(fn, recurse)
        device = self.circular.device
        self.low, self.width, self._log_width = (
            t.to(device) for t in (self.low, self.width, self._log_width))
        self._generator = None
        return self

    # ------------------------------------------------------------------ helpers
    def _condition(self, temperature, batch: int) -> torch.Tensor:
        """``c = log(T / T0)`` as a ``(batch,)`` tensor, validated; warns outside range."""
        temperature = check_temperature(temperature, batch_size=batch)
        if isinstance(temperature, float):
            t = torch.full((batch,), temperature, dtype=self.dtype, device=self.device)
        else:
            t = torch.as_tensor(temperature).to(device=self.device, dtype=self.dtype)
            t = t.expand(batch) if t.dim() == 0 else t
        t_min, t_max = self.temperature_range
        if not self._warned:
            values = t.detach()
            tolerance = 1e-6 * t_max
            if bool(((values < t_min - tolerance) | (values > t_max + tolerance)).any()):
                self._warned = True
                warnings.warn(
                    f"temperature outside the training range [{t_min:g}, {t_max:g}] K of "
                    f"this model (got {values.min().item():g}..{values.max().item():g} K); "
                    "its densities there are extrapolated",
                    UserWarning, stacklevel=3,
                )
        return torch.log(t / self.reference_temperature)

    def _features(self, condition: torch.Tensor) -> torch.Tensor:
        return condition_features(condition, self.condition_scale)

    def _check_x(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch.Tensor of shape (B, {self.event_shape[0]}), "
                             f"got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.event_shape[0]:
            raise InputError(f"x must have shape (B, {self.event_shape[0]}), got {tuple(x.shape)}")
        return x

    def generator(self) -> torch.Generator:
        """The model's own random generator (seeded with ``seed`` on first use)."""
        if self._generator is None:
            self._generator = torch.Generator(device=self.device).manual_seed(self.seed)
        return self._generator

    # ------------------------------------------------------------------ normalisation
    def _normalize(self, x: torch.Tensor):
        """Physical → normalised coordinates, support mask ``(B,)`` and log|J| (scalar)."""
        low, width = self.low.to(x.dtype), self.width.to(x.dtype)
        u = torch.where(self.arc, torch.remainder(x - low, 2 * math.pi), x - low) / width
        inside = ((u >= 0) & (u <= 1)) | self.circular
        u = torch.where(self.circular, torch.remainder(x + math.pi, 2 * math.pi) - math.pi,
                        u.clamp(0.0, 1.0))
        return u, inside.all(dim=-1), -self._log_width.to(x.dtype)

    def _denormalize(self, u: torch.Tensor):
        low, width = self.low.to(u.dtype), self.width.to(u.dtype)
        x = torch.where(self.circular, u, low + width * u)
        x = torch.where(self.arc, torch.remainder(x + math.pi, 2 * math.pi) - math.pi, x)
        return x, self._log_width.to(u.dtype)

    # ------------------------------------------------------------------ the bijection
    def forward(self, x: torch.Tensor, temperature):
        """Normalising direction: latent ``z`` ``(B, D)`` and ``log|det ∂z/∂x|`` ``(B,)``.

        ``z`` lives in the prior's space (bounded coordinates on ``[0, 1]``, circular ones on
        ``[-π, π)``); ``log_prob(x) = prior.log_prob(z) + log_det`` inside the support.

        >>> import torch
        >>> flow = ConditionalFlow([Domain.interval(0.0, 4.0)], 300.0, (300.0, 300.0))
        >>> z, log_det = flow.forward(torch.tensor([[1.0]]), 300.0)
        >>> z.tolist(), round(log_det.item(), 4)
        ([[0.25]], -1.3863)
        """
        x = self._check_x(x)
        features = self._features(self._condition(temperature, x.shape[0]))
        z, _, log_det = self._normalize(x.to(self.dtype))
        return self._couple(z, features, log_det.expand(x.shape[0]))

    def inverse(self, z: torch.Tensor, temperature):
        """Generative direction: ``x`` ``(B, D)`` and ``log|det ∂x/∂z|`` ``(B,)``.

        >>> import torch
        >>> flow = ConditionalFlow([Domain.interval(0.0, 4.0)], 300.0, (300.0, 300.0))
        >>> x, log_det = flow.inverse(torch.tensor([[0.25]]), 300.0)
        >>> x.tolist(), round(log_det.item(), 4)
        ([[1.0]], 1.3863)
        """
        z = self._check_x(z)
        features = self._features(self._condition(temperature, z.shape[0]))
        return self._decouple(z, features)

    def _couple(self, z, features, log_det):
        for layer in self.couplings:
            z, ladj = layer(z, features)
            log_det = log_det + ladj
        return z, log_det

    def _decouple(self, u, features):
        log_det = torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)
        for layer in reversed(self.couplings):
            u, ladj = layer.inverse(u, features)
            log_det = log_det + ladj
        x, ladj = self._denormalize(u)
        return x, log_det + ladj

    # ------------------------------------------------------------------ the protocol
    def log_prob(self, x: torch.Tensor, temperature) -> torch.Tensor:
        """Log-density ``(B,)`` of ``x`` ``(B, D)`` at ``temperature`` (float or ``(B,)`` K).

        ``-inf`` outside the support of bounded coordinates. Differentiable with respect
        to the parameters and to ``temperature`` when it is a tensor.

        >>> import torch
        >>> flow = ConditionalFlow([Domain.interval(0.0, 4.0)], 300.0, (300.0, 300.0),
        ...                        prior="uniform", widen_prior=False, prior_floor=0.0)
        >>> flow.log_prob(torch.tensor([[1.0], [5.0]]), 300.0).tolist()  # uniform at init
        [-1.3862943649291992, -inf]
        """
        x = self._check_x(x)
        condition = self._condition(temperature, x.shape[0])
        u, inside, log_det = self._normalize(x.to(self.dtype))
        z, log_det = self._couple(u, self._features(condition), log_det.expand(x.shape[0]))
        log_p = self.prior.log_prob(z, condition) + log_det
        return torch.where(inside, log_p, torch.full_like(log_p, -math.inf))

    def sample(self, n: int, temperature, generator: torch.Generator | None = None):
        """Draw ``n`` samples ``(n, D)`` at ``temperature`` with their log-densities ``(n,)``.

        Reparametrised: differentiable with respect to the parameters and to
        ``temperature`` when it is a tensor. ``generator`` defaults to the model's own.

        >>> flow = ConditionalFlow([Domain.circular()], 300.0, (300.0, 400.0), seed=3)
        >>> x, log_p = flow.sample(2, 300.0)
        >>> x.shape, log_p.shape
        (torch.Size([2, 1]), torch.Size([2]))
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InputError(f"n must be a positive int, got {n!r}")
        condition = self._condition(temperature, n)
        z, log_p = self.prior.sample(n, condition, generator or self.generator(), self.dtype)
        x, log_det = self._decouple(z, self._features(condition))
        return x, log_p - log_det

    def extra_repr(self) -> str:
        kinds = [d.kind for d in self.domains]
        counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
        return (f"event_shape={self.event_shape}, domains={counts}, T0={self.reference_temperature}"
                f", temperature_range={self.temperature_range}, config={self._config}")
