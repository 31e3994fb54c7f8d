r"""Refinement of flow samples with the force field: sequential Monte Carlo (SMC).

:func:`smc` anneals from the model's density ``p_θ(·|T)`` to the Boltzmann density
``q_T ∝ exp(-βU)`` through

    π_b ∝ p_θ^{1-b} q_T^b,        0 = b_0 < b_1 < ... < b_K = 1,

with each next ``b`` chosen so that the conditional ESS of the incremental weights is
``SMC.cess_target`` (adaptive tempering, bisection; at most ``SMC.max_levels`` levels).
At each level the particles are reweighted by ``(b_k - b_{k-1}) (log q - log p_θ)``,
resampled systematically when their ESS falls below ``SMC.resample_threshold`` and moved
by a Metropolis-adjusted kernel (MALA, or HMC with a few leapfrog steps) that leaves
``π_{b_k}`` invariant. :func:`rejuvenate` applies the same moves at the target alone to
weighted samples from anywhere.

Space of the moves. Particles live where the flow lives: for a ``TemperatureFlow`` in its
coordinates ``z`` (free bonds, angles, torsions, the non-circular ones whitened; constrained
bonds are not coordinates, so they stay at their lengths), for a ``ConditionalFlow`` on its
own vector. Densities are taken consistently in ``z``: ``log p_θ(z)`` is the flow's density
and ``log q(z) = -βU(x(z)) + log|det ∂x/∂z|`` (``TemperatureFlow.flow_coordinates``), so
``log q - log p_θ`` is the ordinary importance log-weight ``-βU(x) - log p_θ(x)``.
Every π_b is restricted to the flow's support (``log p_θ`` finite): a proposal outside
an interval or arc domain is rejected, so chirality torsions keep their sign half and
stiff torsions their isomer; circular torsions are wrapped to ``[-π, π)``. ``ln Z`` is
therefore the same quantity that importance sampling estimates: ``∫ exp(-βU)`` over the
model's support.

Kernel. Preconditioned per coordinate by the weighted spread of the particles (circular
standard deviation for periodic coordinates); steps on periodic coordinates are capped
at :data:`MAX_PERIODIC_STEP` rad, so the wrapped Gaussian proposal density is its
nearest image to within ``exp(-40)``. The step size follows the acceptance rate towards
``SMC.target_acceptance`` between MCMC steps (a population-level adaptation; each step's
kernel is fixed while it runs). Gradients come from autograd (the flow) and from OpenMM
forces (``OpenMMEnergy``); energies and forces are evaluated in batches of
``SMC.chunk_size``, one force evaluation per particle per log-density evaluation
(MALA: one per step; HMC: ``n_leapfrog`` per step). Failed evaluations are ``+inf`` and
are rejected.

Normalising constant. The particles are split into ``SMC.n_islands`` groups that are
weighted and resampled independently (they share the temperature schedule and the step
size, chosen from all particles). Each island ``r`` gives the unbiased estimate
``Z_r = Π_k Σ_i W_i^{k-1} w_i^{k}`` (the product over resampling epochs of mean
weights); ``ln Z = ln mean_r Z_r`` and its standard error by the delta method from the
spread of the ``Z_r``.

Example
-------
>>> from openmm_trade.flow import ConditionalFlow, Domain
>>> from openmm_trade.toys import DoubleWell1D
>>> toy = DoubleWell1D()
>>> model = ConditionalFlow([Domain.interval(-2.5, 2.5)], 300.0, (300.0, 600.0),
...                         hidden=8, n_blocks=1, seed=0)
>>> wt = smc(model, toy, 300.0, n=400, seed=0, quiet=True)
>>> abs(wt.log_partition_estimate - toy.log_partition_function(300.0)) < 0.2
True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from . import checks
from .errors import InputError
from .importance import effective_sample_size, log_mean_exp, log_sum_exp, normalized_weights
from .model import check_model
from .progress import shown
from .sampling import WeightedTrajectory, systematic_resample
from .units import KB, check_temperature

#: Largest step (rad) of a proposal on a periodic coordinate (see the module docstring).
MAX_PERIODIC_STEP = 0.5
#: Smallest per-coordinate preconditioning scale.
MIN_SCALE = 1e-8
KERNELS = ("mala", "hmc")


@dataclass(frozen=True)
class SMC:
    """Options of the SMC sampler (:func:`smc`) and of :func:`rejuvenate`.

    Parameters
    ----------
    resample_threshold : float
        Resample an island when its ESS fraction falls below this (in (0, 1]).
    cess_target : float
        Conditional ESS fraction each new level keeps (in (0, 1)); larger: more levels.
    max_levels : int
        Cap on the number of levels; the schedule takes at least ``(1 - b) / levels_left``
        per level, so it ends at ``b = 1`` within the cap.
    kernel : str
        ``"mala"`` or ``"hmc"``.
    n_leapfrog : int
        Leapfrog steps per HMC move.
    n_mcmc_steps : int
        MCMC moves per level (and per :func:`rejuvenate` call).
    torsion_flips : int
        Torsion-flip moves after the MCMC moves of each level (of each :func:`rejuvenate`
        step): each particle turns one of its free torsions (circular, not an arc or a
        chirality sign), chosen at random, by +120°, -120° or 180°, accepted by Metropolis
        (the proposal is symmetric). In a Z-matrix the later atoms of a branch are placed
        from its first atom, so the turn rotates the whole branch: a side chain changes
        rotamer, which small gradient steps do not do across a barrier. Default 1: on
        capped leucine at 300 K the χ1 trans population went from 0.280 ± 0.074 to
        0.177 ± 0.023 (replica exchange 0.186 ± 0.028; 3 flips: 0.238 ± 0.029) and the ESS
        over lineages from 0.7 to 3.6 %, for 1.5× the force evaluations (README, "Leucine
        against a replica-exchange reference of its own").
    target_acceptance : float, optional
        Acceptance rate the step size follows; default 0.6 (MALA) or 0.75 (HMC).
    initial_step_size : float
        Step size in units of the per-coordinate scales at the first level.
    n_islands : int
        Independent groups of particles, for the error of ``ln Z``; fewer when ``n`` is
        small (at least 16 particles per island; one island gives no error). With 8
        islands of ~125 particles the error came out too small on a poor flow (|z| up to
        4.5 over 5 seeds), with 16 it matched the spread over 8 seeds (0.052 vs 0.059).
    chunk_size : int
        Particles per batch of the flow and the energy.

    Examples
    --------
    >>> SMC(kernel="hmc").acceptance_target
    0.75
    >>> SMC(cess_target=1.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    openmm_trade.errors.InputError: SMC cess_target must be in (0, 1), got 1.5
    """

    resample_threshold: float = 0.5
    cess_target: float = 0.9
    max_levels: int = 50
    kernel: str = "mala"
    n_leapfrog: int = 5
    n_mcmc_steps: int = 2
    torsion_flips: int = 1
    target_acceptance: float | None = None
    initial_step_size: float = 0.5
    n_islands: int = 16
    chunk_size: int = 1000

    def __post_init__(self) -> None:
        def fraction(name, low_open=True, high_closed=True):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
                0 < value) and (value <= 1 if high_closed else value < 1)
            if not ok:
                interval = "(0, 1]" if high_closed else "(0, 1)"
                raise InputError(f"SMC {name} must be in {interval}, got {value!r}")

        fraction("resample_threshold")
        fraction("cess_target", high_closed=False)
        if self.target_acceptance is not None:
            fraction("target_acceptance", high_closed=False)
        if self.kernel not in KERNELS:
            raise InputError(f"SMC kernel must be one of {KERNELS}, got {self.kernel!r}")
        for name in ("max_levels", "n_leapfrog", "n_islands", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"SMC {name} must be a positive integer, got {value!r}")
        for name in ("n_mcmc_steps", "torsion_flips"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"SMC {name} must be an integer >= 0, got {value!r}")
        step = self.initial_step_size
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not (
                math.isfinite(step) and step > 0):
            raise InputError(f"SMC initial_step_size must be a positive number, got {step!r}")

    @property
    def acceptance_target(self) -> float:
        """The target acceptance rate (explicit or the kernel's default)."""
        if self.target_acceptance is not None:
            return float(self.target_acceptance)
        return 0.6 if self.kernel == "mala" else 0.75


def check_options(refine) -> SMC | None:
    """``None``/``False`` → ``None``; ``True`` → ``SMC()``; an ``SMC`` → itself.

    >>> check_options(True).kernel, check_options(False)
    ('mala', None)
    """
    if refine is None or refine is False:
        return None
    if refine is True:
        return SMC()
    if isinstance(refine, SMC):
        return refine
    raise InputError(f"refine must be a bool or an openmm_trade.SMC, got {type(refine).__name__}")


def options_from_config(sampling: dict, refine: bool | None = None) -> SMC | None:
    """SMC options from a run configuration's ``[sampling]`` section (``None``: off).

    ``refine`` overrides the section's ``refine`` switch (``[free_energy] refine``).

    >>> options_from_config({"refine": True, "refine_kernel": "hmc", "refine_steps": 3})
    ... # doctest: +ELLIPSIS
    SMC(resample_threshold=0.5, ..., kernel='hmc', n_leapfrog=5, n_mcmc_steps=3, ...)
    >>> options_from_config({"refine": False}) is None
    True
    """
    if not (sampling.get("refine", False) if refine is None else refine):
        return None
    return SMC(kernel=sampling.get("refine_kernel", "mala"),
               n_mcmc_steps=int(sampling.get("refine_steps", SMC.n_mcmc_steps)),
               torsion_flips=int(sampling.get("refine_flips", SMC.torsion_flips)))


# ---------------------------------------------------------------------------- the space
class _Space:
    """Coordinates of the moves, the base density ``log p`` and the target ``log q``.

    ``base`` maps ``z`` (float64) to ``log p_θ(z)`` (or to the support indicator, 0 or
    ``-inf``, without a model); ``coordinates`` (or ``None``) maps ``z`` to Cartesians.
    """

    def __init__(self, energy, temperature: float, dim: int, periodic, base, coordinates=None,
                 chunk_size: int = 1000, free_torsions=None):
        self.energy = energy
        self.temperature = temperature
        self.beta = 1.0 / (KB * temperature)
        self.dim = dim
        self.periodic = torch.as_tensor(periodic, dtype=torch.bool)
        #: circular coordinates that torsion flips may turn (default: every periodic one)
        self.free_torsions = torch.nonzero(torch.as_tensor(
            periodic if free_torsions is None else free_torsions, dtype=torch.bool)).flatten()
        self.base = base
        self.coordinates = coordinates
        self.chunk_size = chunk_size

    # -- construction -----------------------------------------------------------------
    @classmethod
    def for_model(cls, model, energy, temperature: float, chunk_size: int) -> _Space:
        check_model(model)
        flow = getattr(model, "flow", None)
        coordinates = getattr(model, "flow_coordinates", None)
        if flow is None or coordinates is None:
            flow, coordinates = model, None
        domains = getattr(flow, "domains", None)
        if domains is None:
            raise InputError("model must be an openmm_trade TemperatureFlow or "
                             f"flow.ConditionalFlow (with domains), got {type(model).__name__}")

        if tuple(energy.event_shape) != tuple(getattr(model, "event_shape", ())):
            raise InputError(f"energy.event_shape {tuple(energy.event_shape)} does not match "
                             f"model.event_shape {tuple(getattr(model, 'event_shape', ()))}")
        device = flow.device

        def base(z: torch.Tensor) -> torch.Tensor:  # float64 on the CPU, like the particles
            return flow.log_prob(z.to(device), temperature).to("cpu", torch.float64)

        periodic = [d.kind in ("circular", "arc") for d in domains]
        return cls(energy, temperature, len(domains), periodic, base, coordinates, chunk_size,
                   free_torsions=[d.kind == "circular" for d in domains])

    @classmethod
    def for_energy(cls, energy, temperature: float, samples: np.ndarray,
                   chunk_size: int) -> _Space:
        """Without a model: internal coordinates of a molecule (bonds > 0, angles in (0, π),
        each chirality torsion on the sign half the samples hold) or a toy's domains."""
        system = getattr(energy, "system", None)
        if system is not None:
            from .coordinates import ANGLE_EPS, InternalCoordinates
            from .flow.temperature_flow import MIN_BOND, FlowCoordinates

            coordinates = InternalCoordinates.from_system(system)
            with torch.no_grad():
                z = coordinates.forward(torch.as_tensor(samples, dtype=torch.float64))[0]
            n = coordinates.n_dof
            low = torch.full((n,), -math.inf, dtype=torch.float64)
            high = torch.full((n,), math.inf, dtype=torch.float64)
            low[coordinates.bond_mask] = MIN_BOND
            low[coordinates.angle_mask] = ANGLE_EPS
            high[coordinates.angle_mask] = math.pi - ANGLE_EPS
            periodic = coordinates.torsion_mask.clone()
            for k in coordinates.chirality_torsions.tolist():
                positive = z[:, k] > 0
                if not (positive.all() or (~positive).all()):
                    raise InputError(
                        f"samples change the handedness of chirality torsion "
                        f"{coordinates.dof_names[k]!r} ({int(positive.sum())} of {len(z)} > 0)")
                low[k], high[k] = (0.0, math.pi) if positive.all() else (-math.pi, 0.0)
                periodic[k] = False
            box = (low, high)
            free_torsions = periodic
            coordinates = FlowCoordinates(coordinates)
        else:
            domains = getattr(energy, "domains", None)
            if domains is None:
                raise InputError("without a model, energy must be an OpenMMEnergy or a toy "
                                 f"with domains, got {type(energy).__name__}")
            coordinates = None
            n = len(domains)
            periodic = torch.tensor([d.kind in ("circular", "arc") for d in domains])
            low = torch.tensor([d.low if d.kind in ("interval", "arc") else -math.inf
                                for d in domains], dtype=torch.float64)
            high = torch.tensor([d.high if d.kind in ("interval", "arc") else math.inf
                                 for d in domains], dtype=torch.float64)
            arc = torch.tensor([d.kind == "arc" for d in domains])
            box = (low, high, arc)
            free_torsions = periodic & ~arc

        def base(z: torch.Tensor) -> torch.Tensor:
            inside = _inside(z, *box)
            return torch.where(inside, torch.zeros_like(z[:, 0]),
                               torch.full_like(z[:, 0], -math.inf))

        return cls(energy, temperature, n, periodic, base, coordinates, chunk_size,
                   free_torsions)

    # -- maps ---------------------------------------------------------------------------
    def to_z(self, x) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        if self.coordinates is None:
            return x.reshape(len(x), -1)
        with torch.no_grad():
            return self.coordinates.forward(x.to(self.coordinates.device))[0].to(
                "cpu", torch.float64)

    def to_x(self, z: torch.Tensor) -> torch.Tensor:
        if self.coordinates is None:
            return z.reshape(len(z), *self.energy.event_shape)
        return self.coordinates.inverse(z)[0]

    def wrap(self, z: torch.Tensor) -> torch.Tensor:
        return torch.where(self.periodic, torch.remainder(z + math.pi, 2 * math.pi) - math.pi, z)

    def difference(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a - b`` with periodic coordinates taken to the nearest image."""
        return self.wrap(a - b) if self.periodic.any() else a - b

    # -- densities ----------------------------------------------------------------------
    def evaluate(self, z: torch.Tensor) -> _Point:
        """``log p``, ``log q``, their gradients and the energies at ``z`` ``(n, d)``."""
        parts = [self._evaluate_chunk(chunk) for chunk in torch.split(z, self.chunk_size)]
        return _Point(*(torch.cat(values) for values in zip(*parts, strict=True)))

    def _evaluate_chunk(self, z: torch.Tensor):
        z = z.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            log_p = self.base(z)
            finite_p = torch.isfinite(log_p.detach())
            grad_p = torch.zeros_like(z)
            if log_p.requires_grad and finite_p.any():
                (grad_p,) = torch.autograd.grad(log_p[finite_p].sum(), z)
            log_q = torch.full_like(log_p.detach(), -math.inf)
            energies = torch.full_like(log_p.detach(), math.inf)
            grad_q = torch.zeros_like(z)
            if finite_p.any():
                inside = z[finite_p]
                if self.coordinates is None:
                    x, log_det = self.to_x(inside), torch.zeros_like(inside[:, 0])
                else:
                    x, log_det = self.coordinates.inverse(inside.to(self.coordinates.device))
                u = self.energy(x).to("cpu", torch.float64)
                value = -self.beta * u + log_det.to("cpu", torch.float64)
                ok = torch.isfinite(value.detach())
                if ok.any():
                    (g,) = torch.autograd.grad(value[ok].sum(), z)
                    grad_q = g
                log_q[finite_p] = torch.where(ok, value.detach(), -math.inf)
                energies[finite_p] = torch.where(ok, u.detach(), math.inf)
        clean = torch.nan_to_num
        return (log_p.detach(), log_q, clean(grad_p.detach(), 0.0, 0.0, 0.0),
                clean(grad_q.detach(), 0.0, 0.0, 0.0), energies)


def _inside(z, low, high, arc=None) -> torch.Tensor:
    """Whether each row of ``z`` lies in the box (arcs measured counter-clockwise)."""
    value = z
    if arc is not None and arc.any():
        value = torch.where(arc, low + torch.remainder(z - low, 2 * math.pi), z)
    return ((value >= low) & (value <= high)).all(dim=-1)


@dataclass
class _Point:
    """Particles' densities: ``log_p``, ``log_q`` ``(n,)``, gradients ``(n, d)``, energies."""

    log_p: torch.Tensor
    log_q: torch.Tensor
    grad_p: torch.Tensor
    grad_q: torch.Tensor
    energies: torch.Tensor

    def log_target(self, b: float) -> torch.Tensor:
        value = self.log_q if b >= 1.0 else (1.0 - b) * self.log_p + b * self.log_q
        ok = torch.isfinite(self.log_p) & torch.isfinite(self.log_q)
        return torch.where(ok, value, torch.full_like(value, -math.inf))

    def grad(self, b: float) -> torch.Tensor:
        return self.grad_q if b >= 1.0 else (1.0 - b) * self.grad_p + b * self.grad_q

    def take(self, index) -> _Point:
        return _Point(*(getattr(self, f)[index] for f in _POINT_FIELDS))

    def put(self, mask: torch.Tensor, other: _Point) -> None:
        for f in _POINT_FIELDS:
            getattr(self, f)[mask] = getattr(other, f)


_POINT_FIELDS = ("log_p", "log_q", "grad_p", "grad_q", "energies")


# ---------------------------------------------------------------------------- the kernel
def _scales(space: _Space, z: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
    """Weighted spread of each coordinate (circular standard deviation if periodic)."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    mean = (w[:, None] * z).sum(0)
    linear = torch.sqrt((w[:, None] * (z - mean) ** 2).sum(0))
    c = (w[:, None] * torch.cos(z)).sum(0)
    s = (w[:, None] * torch.sin(z)).sum(0)
    resultant = torch.sqrt(c * c + s * s).clamp(1e-12, 1.0)
    circular = torch.sqrt(-2.0 * torch.log(resultant)).clamp(max=math.pi / math.sqrt(3.0))
    return torch.where(space.periodic, circular, linear).clamp_min(MIN_SCALE)


def _step_sizes(space: _Space, h: float, scale: torch.Tensor) -> torch.Tensor:
    eps = h * scale
    return torch.where(space.periodic, eps.clamp(max=MAX_PERIODIC_STEP), eps)


def _metropolis(log_alpha: torch.Tensor, valid: torch.Tensor,
                gen: torch.Generator) -> torch.Tensor:
    """Accept each valid proposal with probability min(1, exp(log_alpha)).

    >>> g = torch.Generator().manual_seed(0)
    >>> _metropolis(torch.tensor([0.0, -math.inf]), torch.tensor([True, True]), g).tolist()
    [True, False]
    """
    uniform = torch.rand(len(log_alpha), generator=gen, dtype=torch.float64)
    return valid & (torch.log(uniform) < log_alpha)


def _mala(space, z, point, b, eps, gen):
    """One MALA move; returns the new state and the acceptance mask."""
    log_pi = point.log_target(b)
    mean = z + 0.5 * eps**2 * point.grad(b)
    noise = torch.randn(z.shape, generator=gen, dtype=torch.float64)
    proposal = space.wrap(mean + eps * noise)
    new = space.evaluate(proposal)
    new_log_pi = new.log_target(b)
    back = proposal + 0.5 * eps**2 * new.grad(b)
    forward = -0.5 * (space.difference(proposal, mean) / eps).pow(2).sum(-1)
    backward = -0.5 * (space.difference(z, back) / eps).pow(2).sum(-1)
    log_alpha = new_log_pi - log_pi + backward - forward
    return proposal, new, _metropolis(log_alpha, torch.isfinite(new_log_pi), gen)


def _hmc(space, z, point, b, eps, gen, n_leapfrog):
    """One HMC move (leapfrog with mass diag(1/eps²)); trajectories that leave the
    support are rejected and not evaluated further."""
    velocity = torch.randn(z.shape, generator=gen, dtype=torch.float64)
    h0 = -point.log_target(b) + 0.5 * velocity.pow(2).sum(-1)
    position = z.clone()
    current = _Point(*(getattr(point, f).clone() for f in _POINT_FIELDS))
    alive = torch.isfinite(h0)
    for _ in range(n_leapfrog):
        velocity = velocity + 0.5 * eps * current.grad(b)
        position = space.wrap(position + eps * velocity)
        if alive.any():
            current.put(alive, space.evaluate(position[alive]))
        alive = alive & torch.isfinite(current.log_target(b))
        velocity = velocity + 0.5 * eps * current.grad(b)
    h1 = -current.log_target(b) + 0.5 * velocity.pow(2).sum(-1)
    return position, current, _metropolis(h0 - h1, alive, gen)


#: Turns (rad) a torsion flip proposes, each with probability 1/3: the set is closed under
#: negation modulo 2π, so the proposal is symmetric.
FLIP_TURNS = (2 * math.pi / 3, -2 * math.pi / 3, math.pi)


def _flip(space, z, point, b, gen):
    """One torsion flip per particle (see ``SMC.torsion_flips``); returns the new state
    and the acceptance mask."""
    n = len(z)
    which = space.free_torsions[torch.randint(len(space.free_torsions), (n,), generator=gen)]
    turn = torch.tensor(FLIP_TURNS, dtype=torch.float64)[
        torch.randint(len(FLIP_TURNS), (n,), generator=gen)]
    proposal = z.clone()
    proposal[torch.arange(n), which] += turn
    proposal = space.wrap(proposal)
    new = space.evaluate(proposal)
    new_log_pi = new.log_target(b)
    log_alpha = new_log_pi - point.log_target(b)
    return proposal, new, _metropolis(log_alpha, torch.isfinite(new_log_pi), gen)


def _keep(accept: torch.Tensor, z, point: _Point, proposal, new: _Point):
    """The proposal where ``accept``, else the current state: ``(z, point)``."""
    z = torch.where(accept[:, None], proposal, z)
    point = _Point(*(torch.where(accept.view(-1, *[1] * (getattr(point, f).dim() - 1)),
                                 getattr(new, f), getattr(point, f)) for f in _POINT_FIELDS))
    return z, point


class _Mover:
    """Metropolis-adjusted moves at a level, with step-size adaptation across moves."""

    def __init__(self, space: _Space, options: SMC, gen: torch.Generator):
        self.space, self.options, self.gen = space, options, gen
        self.h = float(options.initial_step_size)

    def move(self, z, point, b: float, weights: np.ndarray, n_steps: int):
        """``n_steps`` moves invariant for π_b, then ``options.torsion_flips`` flips;
        returns z, point and the mean acceptance of the moves and of the flips (``None``
        without flips)."""
        scale = _scales(self.space, z, weights)
        rates = []
        for _ in range(n_steps):
            eps = _step_sizes(self.space, self.h, scale)
            if self.options.kernel == "mala":
                proposal, new, accept = _mala(self.space, z, point, b, eps, self.gen)
            else:
                proposal, new, accept = _hmc(self.space, z, point, b, eps, self.gen,
                                             self.options.n_leapfrog)
            z, point = _keep(accept, z, point, proposal, new)
            rate = float(accept.double().mean())
            rates.append(rate)
            self.h *= math.exp(2.0 * (rate - self.options.acceptance_target))
        flips = []
        for _ in range(self.options.torsion_flips if len(self.space.free_torsions) else 0):
            proposal, new, accept = _flip(self.space, z, point, b, self.gen)
            z, point = _keep(accept, z, point, proposal, new)
            flips.append(float(accept.double().mean()))
        return z, point, _mean(rates), (_mean(flips) if flips else None)


def _mean(rates: list[float]) -> float:
    return float(np.mean(rates)) if rates else math.nan


# ---------------------------------------------------------------------------- SMC
def _next_level(b: float, log_w: np.ndarray, delta: np.ndarray, target: float,
                levels_left: int) -> float:
    """Next b: conditional ESS of the increment ``db·delta`` equal to ``target``."""
    remaining = 1.0 - b
    delta = np.where(np.isfinite(delta), delta, -np.inf)

    def cess(db: float) -> float:
        a = log_w + db * delta
        return math.exp(2 * log_sum_exp(a) - log_sum_exp(log_w + 2 * db * delta)
                        - log_sum_exp(log_w))

    if cess(remaining) >= target:
        return 1.0
    low, high = 0.0, remaining
    for _ in range(60):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if cess(mid) >= target else (low, mid)
    step = max(low, remaining / levels_left, 1e-12)
    return 1.0 if b + step >= 1.0 - 1e-12 else b + step


class _Islands:
    """Independent groups of particles: normalised log-weights and ``ln Z_r`` per island."""

    def __init__(self, n: int, n_islands: int):
        self.groups = np.array_split(np.arange(n), n_islands)
        self.log_w = np.concatenate([np.full(len(g), -math.log(len(g))) for g in self.groups])
        self.log_z = np.zeros(n_islands)
        self.ancestors = np.arange(n)

    def reweight(self, increments: np.ndarray) -> None:
        for r, g in enumerate(self.groups):
            new = self.log_w[g] + increments[g]
            total = log_sum_exp(new)
            self.log_z[r] += total
            self.log_w[g] = new - total if math.isfinite(total) else -math.inf

    def pooled_log_weights(self) -> np.ndarray:
        """Log-weights of all particles for schedules and scales (islands weighed equally)."""
        return self.log_w - math.log(len(self.groups))

    def combined_log_weights(self) -> np.ndarray:
        """Normalised log-weights of the union, island ``r`` weighed by ``Z_r``."""
        share = self.log_z - log_sum_exp(self.log_z)
        return self.log_w + np.concatenate([np.full(len(g), s)
                                            for g, s in zip(self.groups, share, strict=True)])

    def resample(self, threshold: float, rng: np.random.Generator) -> np.ndarray | None:
        """Indices of the particles after resampling low-ESS islands (``None``: none)."""
        index = np.arange(len(self.log_w))
        changed = False
        for g in self.groups:
            if effective_sample_size(self.log_w[g]) < threshold:
                w = np.exp(self.log_w[g])
                index[g] = g[systematic_resample(w, len(g), rng)]
                self.log_w[g] = -math.log(len(g))
                changed = True
        if not changed:
            return None
        self.ancestors = self.ancestors[index]
        return index

    def log_partition(self) -> tuple[float, float]:
        """``ln mean_r Z_r`` and its standard error (delta method; NaN for one island)."""
        estimate = log_mean_exp(self.log_z)
        if len(self.log_z) < 2 or not math.isfinite(estimate):
            return estimate, math.nan
        ratio = np.exp(self.log_z - estimate)
        return estimate, float(np.std(ratio, ddof=1) / math.sqrt(len(ratio)))


def _progress(quiet: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=100, desc=desc, unit="%", disable=not shown(quiet),
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")


def _seeded(seed: int | None) -> tuple[torch.Generator, np.random.Generator, int]:
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    states = np.random.SeedSequence(int(seed)).generate_state(2)
    gen = torch.Generator().manual_seed(int(states[0]))
    return gen, np.random.default_rng(int(states[1])), int(seed)


def smc(model, energy, temperature: float, n: int, options: SMC | None = None,
        seed: int | None = None, quiet: bool = False) -> WeightedTrajectory:
    """Refined samples at ``temperature``: SMC from ``model`` to ``exp(-U / k_B T)``.

    Parameters
    ----------
    model : TemperatureFlow or flow.ConditionalFlow
        The proposal ``p_θ(·|T)``; the moves run in its coordinates (see module docstring).
    energy : openmm_trade.energy.Energy
        Batched, differentiable potential energy (kJ/mol); ``OpenMMEnergy`` for molecules.
    temperature : float
        Target temperature in K.
    n : int
        Number of particles (at least 2 per island).
    options : SMC, optional
        Sampler options (default ``SMC()``).
    seed : int, optional
        Seeds the draw from the model, the moves and the resampling.
    quiet : bool
        No progress bar (it also hides when stderr is not a TTY).

    Returns
    -------
    WeightedTrajectory
        The final particles and weights. ``log_prob`` holds the effective proposal
        log-density ``-βU - log w`` (so the usual weights are the SMC weights, scaled so
        that ``log_partition_estimate`` is the SMC estimate of ``ln Z``); ``refinement``
        holds the history, the error of ``ln Z``, the distinct ancestors and the force
        evaluations.

    Examples
    --------
    >>> from openmm_trade.flow import ConditionalFlow, Domain
    >>> from openmm_trade.toys import HarmonicOscillator
    >>> toy = HarmonicOscillator(spring_constant=100.0)
    >>> model = ConditionalFlow(toy.domains, 300.0, (300.0, 600.0), hidden=8, n_blocks=1)
    >>> wt = smc(model, toy, 300.0, n=200, seed=1, quiet=True)
    >>> wt.refinement["levels"] >= 1, wt.refinement["force_evaluations"] > 200
    (True, True)
    """
    options = check_options(True if options is None else options)
    temperature = check_temperature(temperature)
    n = checks.integer(n, "n")
    space = _Space.for_model(model, energy, temperature, options.chunk_size)
    gen, rng, seed = _seeded(seed)
    islands = _Islands(n, max(1, min(options.n_islands, n // 16)))
    start = energy.n_evaluations
    flow = getattr(model, "flow", model)
    draw = gen if flow.device.type == "cpu" else torch.Generator(device=flow.device).manual_seed(
        int(torch.randint(2**62, (1,), generator=gen)))
    with torch.no_grad():
        sizes = [min(options.chunk_size, n - i) for i in range(0, n, options.chunk_size)]
        z = torch.cat([flow.sample(m, temperature, generator=draw)[0] for m in sizes])
        z = z.to("cpu", torch.float64)
    z = space.wrap(z)
    point = space.evaluate(z)
    mover = _Mover(space, options, gen)
    # The flow's own importance weights at the target, before any move: plain importance
    # sampling from the same draws, recorded beside the refined result.
    flow_log_w = (point.log_q - point.log_p).numpy()
    history = []
    b = 0.0
    bar = _progress(quiet, f"SMC {temperature:g} K")
    try:
        while b < 1.0:
            delta = (point.log_q - point.log_p).numpy()
            levels_left = options.max_levels - len(history)
            b_new = 1.0 if levels_left <= 1 else _next_level(
                b, islands.pooled_log_weights(), delta, options.cess_target, levels_left)
            with np.errstate(invalid="ignore"):
                increments = np.where(np.isfinite(delta), (b_new - b) * delta, -np.inf)
            islands.reweight(increments)
            ess = effective_sample_size(islands.combined_log_weights())
            index = islands.resample(options.resample_threshold, rng)
            if index is not None:
                index_t = torch.as_tensor(index)
                z, point = z[index_t], point.take(index_t)
            step = mover.h
            z, point, acceptance, flips = mover.move(z, point, b_new,
                                                     np.exp(islands.pooled_log_weights()),
                                                     options.n_mcmc_steps)
            b = b_new
            history.append({"b": b, "ess": ess, "acceptance": acceptance, "step_size": step,
                            "flip_acceptance": flips, "resampled": index is not None,
                            "force_evaluations": int(energy.n_evaluations - start)})
            bar.n = int(100 * b)
            bar.set_postfix_str(f"level {len(history)}, b = {b:.3f}, ESS = {ess:.1%}, "
                                f"acc = {acceptance:.2f}")
    finally:
        bar.close()
    log_z, log_z_err = islands.log_partition()
    refinement = {
        "method": "smc", "options": asdict(options), "seed": seed, "levels": len(history),
        "n_islands": len(islands.groups),
        "history": history, "island_log_z": islands.log_z.tolist(),
        "log_partition_estimate": log_z, "log_partition_error": log_z_err,
        "distinct_ancestors": int(len(np.unique(islands.ancestors))),
        "force_evaluations": int(energy.n_evaluations - start),
        "flow_ess": float(effective_sample_size(flow_log_w)),
        "flow_log_partition_estimate": float(log_mean_exp(flow_log_w)),
    }
    refinement["force_evaluations_per_sample"] = refinement["force_evaluations"] / n
    return _trajectory(model, space, z, point, islands.combined_log_weights(), log_z,
                       refinement, {"n": n, "seed": seed, "model": type(model).__name__,
                                    "energy": type(energy).__name__}, islands.ancestors)


def _trajectory(model, space: _Space, z, point: _Point, log_w: np.ndarray, log_z: float,
                refinement: dict, metadata: dict, lineages: np.ndarray) -> WeightedTrajectory:
    """A WeightedTrajectory whose weights are ``log_w`` shifted to ``ln mean w = ln Z``;
    ``lineages``: the independent draw each particle descends from."""
    n = len(z)
    with torch.no_grad():
        if space.coordinates is not None:
            z = z.to(space.coordinates.device)
        x = space.to_x(z).detach().cpu().numpy()
    energies = point.energies.numpy().astype(np.float64)
    stored = log_w + log_z + math.log(n)
    with np.errstate(invalid="ignore", over="ignore"):
        log_prob = -space.beta * energies - stored
    system = getattr(model, "system", None) if model is not None else None
    system = system or getattr(space.energy, "system", None)
    topology = getattr(system, "mdtraj_topology", None)
    return WeightedTrajectory(x, energies, log_prob, space.temperature, topology=topology,
                              metadata=dict(metadata, refinement=refinement), lineages=lineages)


def rejuvenate(samples, energy, temperature: float | None = None, log_weights=None,
               model=None, n: int | None = None, options: SMC | None = None,
               seed: int | None = None) -> WeightedTrajectory:
    """Resample weighted samples from anywhere and move them at the Boltzmann density.

    Systematic resampling by ``log_weights`` (none: equal weights), then
    ``options.n_mcmc_steps`` Metropolis-adjusted moves (MALA or HMC, with step-size
    adaptation) that leave ``exp(-U / k_B T)`` invariant. Moves run in ``model``'s
    coordinates and support when given; otherwise, for an ``OpenMMEnergy``, in internal
    coordinates with bonds > 0, angles in (0, π) and each chirality torsion on the sign
    half the samples hold (constrained bonds are set to their lengths), and for a toy on
    its domains.

    Parameters
    ----------
    samples : WeightedTrajectory or array-like (m, *event_shape)
        The proposals (a WeightedTrajectory brings its weights and temperature).
    energy : openmm_trade.energy.Energy
        The potential energy.
    temperature : float, optional
        Target temperature in K (default: that of a WeightedTrajectory).
    log_weights : array-like (m,), optional
        Log importance weights of array samples.
    model : optional
        A ``TemperatureFlow`` or ``ConditionalFlow`` whose coordinates and support to use.
    n : int, optional
        Number of output samples (default ``m``).
    options : SMC, optional
        ``kernel``, ``n_mcmc_steps``, step size and ``chunk_size`` are used.
    seed : int, optional
        Seeds resampling and moves.

    Returns
    -------
    WeightedTrajectory
        Equal weights, scaled so that ``log_partition_estimate`` is the input's
        importance-sampling estimate (0 without weights); ``refinement`` holds the
        acceptance and step size of each move and the force evaluations.

    Examples
    --------
    >>> from openmm_trade.toys import DoubleWell1D
    >>> toy = DoubleWell1D()
    >>> x = toy.sample(300, 300.0, seed=0).numpy()
    >>> wt = rejuvenate(x, toy, 300.0, options=SMC(n_mcmc_steps=3), seed=0)
    >>> len(wt), wt.ess
    (300, 1.0)
    """
    options = check_options(True if options is None else options)
    if isinstance(samples, WeightedTrajectory):
        if log_weights is not None:
            raise InputError("log_weights must be None when samples is a WeightedTrajectory "
                             "(it brings its own)")
        temperature = samples.temperature if temperature is None else temperature
        log_weights, log_z, x = samples.log_weights, samples.log_partition_estimate, samples.samples
        lineages = samples.lineages
    else:
        x = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else (
            np.asarray(samples))
        if log_weights is None:
            log_weights, log_z = np.zeros(len(x)), 0.0
        else:
            log_weights = np.asarray(log_weights, dtype=np.float64).reshape(-1)
            log_z = log_mean_exp(log_weights)
        lineages = np.arange(len(log_weights))  # each input sample its own draw
    if temperature is None:
        raise InputError("temperature must be given (in K) for array samples")
    temperature = check_temperature(temperature)
    if x.ndim < 1 or len(x) != len(log_weights) or len(x) < 1:
        raise InputError(f"samples must have shape (m, ...) with m = len(log_weights) = "
                         f"{len(log_weights)}, got {x.shape}")
    if tuple(x.shape[1:]) != tuple(energy.event_shape):
        raise InputError(f"samples must have shape (m, {tuple(energy.event_shape)}), "
                         f"got {x.shape}")
    n = len(x) if n is None else int(n)
    if n < 1:
        raise InputError(f"n must be a positive number of samples, got {n}")
    gen, rng, seed = _seeded(seed)
    weights = normalized_weights(log_weights)
    index = systematic_resample(weights, n, rng)
    x = x[index]
    space = (_Space.for_model(model, energy, temperature, options.chunk_size) if model is not None
             else _Space.for_energy(energy, temperature, x, options.chunk_size))
    start = energy.n_evaluations
    z = space.wrap(space.to_z(x))
    point = space.evaluate(z)
    mover = _Mover(space, options, gen)
    history = []
    for _ in range(options.n_mcmc_steps):
        step = mover.h
        z, point, acceptance, flips = mover.move(z, point, 1.0, np.ones(n), 1)
        history.append({"b": 1.0, "ess": 1.0, "acceptance": acceptance, "step_size": step,
                        "flip_acceptance": flips, "resampled": False,
                        "force_evaluations": int(energy.n_evaluations - start)})
    refinement = {
        "method": "rejuvenate", "options": asdict(options), "seed": seed,
        "levels": 0, "history": history, "log_partition_estimate": log_z,
        "log_partition_error": math.nan,
        "distinct_ancestors": int(len(np.unique(index))),
        "force_evaluations": int(energy.n_evaluations - start),
        "force_evaluations_per_sample": (energy.n_evaluations - start) / n,
    }
    return _trajectory(model, space, z, point, np.full(n, -math.log(n)), log_z, refinement,
                       {"n": n, "seed": seed, "energy": type(energy).__name__},
                       lineages[index])


__all__ = ["SMC", "check_options", "options_from_config", "rejuvenate", "smc"]
