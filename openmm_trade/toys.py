"""Analytic toy energies with exact thermodynamics, for tests of training and free energies.

Every toy is an :class:`~openmm_trade.energy.Energy` on a flat vector of one or two
coordinates, declares the ``domains`` of its coordinates for
:class:`openmm_trade.flow.ConditionalFlow` and knows its Boltzmann family
``q(x | T) = exp(-U(x) / (k_B T)) / Z(T)`` exactly: the log partition function and the
mean energy by quadrature on a fine midpoint grid (closed form for the harmonic
oscillator), the density, the β-derivative of the log density
``∂_β log q = -U + ⟨U⟩_β``, exact samples (inverse CDF on the grid), and the KL divergence
of a model from the exact density by quadrature.

Toys
----
* :class:`HarmonicOscillator` — ``U = k/2 |x - c|²`` in ``d`` dimensions on the real line.
* :class:`DoubleWell1D` — ``U = a (x² - 1)² + b x`` on a bounded interval (default
  ``[-2.5, 2.5]``); a barrier of ``a`` and a tilt ``b`` (kJ/mol).
* :class:`TorsionBond2D` — a torsion-like angle ``φ ∈ [-π, π)`` with two unequal wells at
  ``±π/2`` and a bond-like coordinate ``r`` on an interval whose rest length and stiffness
  depend on ``φ``, so that the well populations change with temperature through both
  energy and entropy.

Domains are :class:`openmm_trade.flow.Domain` entries (``"interval"`` with bounds,
``"circular"`` on ``[-π, π)``, ``"real"`` with a window that holds the mass), ready for
``ConditionalFlow(toy.domains, ...)``.

Example
-------
>>> import torch
>>> from openmm_trade.toys import DoubleWell1D
>>> toy = DoubleWell1D()
>>> toy.domains[0].kind, toy.domains[0].low, toy.domains[0].high
('interval', -2.5, 2.5)
>>> x = toy.sample(1000, 300.0, seed=0)
>>> x.shape, bool(((x > -2.5) & (x < 2.5)).all())
(torch.Size([1000, 1]), True)
>>> abs(float(toy(x).mean()) - toy.mean_energy(300.0)) < 0.5
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from . import checks
from .energy import Energy
from .errors import InputError
from .flow.domain import Domain
from .model import LogDensityModel
from .units import KB, beta_from_temperature, check_temperature

__all__ = ["ToyEnergy", "HarmonicOscillator", "DoubleWell1D", "TorsionBond2D"]

def _temperatures(temperature) -> tuple[np.ndarray, bool]:
    """Validated temperatures as a 1-D float64 array and whether the input was a scalar."""
    if isinstance(temperature, (list, tuple)):
        temperature = np.asarray(temperature, dtype=np.float64)
    check_temperature(temperature)
    if isinstance(temperature, torch.Tensor):
        values = temperature.detach().cpu().numpy()
    else:
        values = np.asarray(temperature)
    scalar = values.ndim == 0
    return np.atleast_1d(values).astype(np.float64), scalar


def _scalar_temperature(temperature, name: str = "temperature") -> float:
    """A single temperature in K as a float (a 0-d tensor/array is accepted)."""
    if isinstance(temperature, (torch.Tensor, np.ndarray)) and temperature.ndim == 0:
        temperature = float(temperature)
    if not isinstance(temperature, (int, float, np.floating, np.integer)):
        raise InputError(
            f"{name} must be a single temperature in K, got {type(temperature).__name__}"
        )
    return check_temperature(temperature, name=name)


class ToyEnergy(Energy):
    """An analytic energy on a flat vector with exact thermodynamics by quadrature.

    Subclasses implement :meth:`_energy`, set ``event_shape`` ``(d,)`` with ``d ≤ 2`` for
    quadrature, :attr:`domains`, and :meth:`box` (the integration box per coordinate; a
    window wide enough to hold all the mass for ``"real"`` coordinates).

    Quadrature is the midpoint rule on ``resolution`` cells per coordinate, which is
    spectrally accurate on periodic coordinates and for densities that vanish at the ends
    of the box. Grid energies are cached and do not count as energy evaluations.
    """

    #: default number of quadrature cells per coordinate, by dimension
    default_resolution = {1: 4096, 2: 384}

    def __init__(self) -> None:
        super().__init__()
        self._grid_cache: dict[tuple, tuple[np.ndarray, np.ndarray, float, np.ndarray]] = {}

    # -- to be provided by subclasses ---------------------------------------------------
    @property
    def domains(self) -> list[Domain]:
        """The :class:`~openmm_trade.flow.Domain` of each coordinate."""
        raise NotImplementedError

    def box(self, temperature: float) -> list[tuple[float, float]]:
        """Integration bounds ``(low, high)`` per coordinate at ``temperature`` (K)."""
        return [(domain.low, domain.high) for domain in self.domains]

    # -- quadrature -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Number of coordinates ``d``."""
        return int(np.prod(self.event_shape))

    def quadrature_grid(self, temperature: float, resolution: int | None = None):
        """Midpoint grid over :meth:`box`.

        Returns
        -------
        points : torch.Tensor
            ``(G, d)`` float64 cell centres.
        log_cell_volume : float
            Log of the volume of one cell.
        """
        points, _, log_volume, _ = self._grid(temperature, resolution)
        return torch.from_numpy(points), log_volume

    def _grid(self, temperature: float, resolution: int | None):
        if self.dim > 2:
            raise InputError(
                f"quadrature needs at most 2 coordinates, {type(self).__name__} has {self.dim}"
            )
        resolution = resolution or self.default_resolution[self.dim]
        if not isinstance(resolution, (int, np.integer)) or resolution < 8:
            raise InputError(f"resolution must be an integer >= 8, got {resolution!r}")
        bounds = tuple(self.box(temperature))
        key = (bounds, int(resolution))
        if key not in self._grid_cache:
            widths = np.array([(hi - lo) / resolution for lo, hi in bounds])
            axes = [
                lo + (np.arange(resolution) + 0.5) * w
                for (lo, _), w in zip(bounds, widths, strict=True)
            ]
            mesh = np.meshgrid(*axes, indexing="ij")
            points = np.stack([m.ravel() for m in mesh], axis=-1)
            with torch.no_grad():
                energies = self._energy(torch.from_numpy(points)).double().numpy()
            energies = np.where(np.isfinite(energies), energies, np.inf)
            if len(self._grid_cache) > 8:
                self._grid_cache.clear()
            self._grid_cache[key] = (points, energies, float(np.log(widths).sum()), widths)
        return self._grid_cache[key]

    def _log_grid_weights(self, temperature: float, resolution: int | None = None):
        """Unnormalised log Boltzmann weights of the cells (including the cell volume)."""
        points, energies, log_volume, widths = self._grid(temperature, resolution)
        log_w = -beta_from_temperature(temperature) * energies + log_volume
        return points, energies, log_w, widths

    def log_partition_function(self, temperature, resolution: int | None = None):
        """``ln Z(T) = ln ∫ exp(-U(x)/(k_B T)) dx`` over the domain.

        Parameters
        ----------
        temperature : float or array_like
            Temperature(s) in K.
        resolution : int, optional
            Quadrature cells per coordinate.

        Returns
        -------
        float or numpy.ndarray
            A float for a scalar temperature, else an array of the input's shape.

        Examples
        --------
        >>> from openmm_trade.toys import HarmonicOscillator
        >>> toy = HarmonicOscillator(spring_constant=100.0)
        >>> abs(toy.log_partition_function(300.0)
        ...     - ToyEnergy.log_partition_function(toy, 300.0)) < 1e-9
        True
        """
        return self._thermodynamic(temperature, resolution, "log_z")

    def mean_energy(self, temperature, resolution: int | None = None):
        """Mean energy ``⟨U⟩_T`` in kJ/mol, by quadrature.

        Examples
        --------
        >>> toy = DoubleWell1D()
        >>> 0.0 < toy.mean_energy(300.0) < toy.mean_energy(600.0)
        True
        """
        return self._thermodynamic(temperature, resolution, "mean")

    def energy_variance(self, temperature, resolution: int | None = None):
        """Variance of the energy ``⟨U²⟩ - ⟨U⟩²`` in (kJ/mol)² (``k_B T² C_v``).

        Examples
        --------
        >>> toy = HarmonicOscillator(dim=3)
        >>> round(toy.energy_variance(300.0) / (1.5 * (KB * 300.0) ** 2), 6)
        1.0
        """
        return self._thermodynamic(temperature, resolution, "var")

    def _thermodynamic(self, temperature, resolution, what: str):
        temperatures, scalar = _temperatures(temperature)
        unique, inverse = np.unique(temperatures, return_inverse=True)
        out = np.empty_like(unique)
        for i, t in enumerate(unique):
            _, energies, log_w, _ = self._log_grid_weights(float(t), resolution)
            log_z = float(np.logaddexp.reduce(log_w))
            if what == "log_z":
                out[i] = log_z
                continue
            finite = np.isfinite(energies)
            p = np.exp(log_w[finite] - log_z)
            mean = float(np.sum(p * energies[finite]))
            out[i] = mean if what == "mean" else float(np.sum(p * (energies[finite] - mean) ** 2))
        out = out[inverse.reshape(-1)]
        return float(out[0]) if scalar else out

    # -- densities and samples ------------------------------------------------------------
    def log_density(self, x: torch.Tensor, temperature) -> torch.Tensor:
        """Exact ``log q(x | T) = -U(x)/(k_B T) - ln Z(T)`` (float64, ``(B,)``).

        Does not count as energy evaluations. ``temperature`` is a float or a ``(B,)``
        tensor in K.

        Examples
        --------
        >>> toy = HarmonicOscillator(spring_constant=100.0)
        >>> sigma2 = KB * 300.0 / 100.0
        >>> expected = -0.5 * math.log(2 * math.pi * sigma2)
        >>> abs(float(toy.log_density(torch.zeros(1, 1), 300.0)) - expected) < 1e-12
        True
        """
        x = self.check_input(x)
        temperatures, scalar = self._temperature_batch(temperature, x.shape[0])
        log_z = torch.as_tensor(self.log_partition_function(temperatures), dtype=torch.float64)
        energies = self._energy(x.to(torch.float64))
        beta = torch.as_tensor(beta_from_temperature(temperatures), dtype=torch.float64)
        return -beta * energies - log_z

    def dlog_density_dbeta(self, x: torch.Tensor, temperature) -> torch.Tensor:
        """Exact ``∂_β log q(x | β) = -U(x) + ⟨U⟩_β`` in kJ/mol (float64, ``(B,)``).

        Examples
        --------
        >>> toy = HarmonicOscillator(spring_constant=100.0)
        >>> float(toy.dlog_density_dbeta(torch.zeros(1, 1), 300.0)[0]) == 0.5 * KB * 300.0
        True
        """
        x = self.check_input(x)
        temperatures, _ = self._temperature_batch(temperature, x.shape[0])
        mean = torch.as_tensor(self.mean_energy(temperatures), dtype=torch.float64)
        return -self._energy(x.to(torch.float64)).detach() + mean

    def _temperature_batch(self, temperature, batch_size: int):
        check_temperature(temperature, batch_size=batch_size)
        if isinstance(temperature, torch.Tensor):
            temperature = temperature.detach().cpu().numpy()
        values = np.broadcast_to(np.asarray(temperature, dtype=np.float64), (batch_size,))
        return values, np.ndim(temperature) == 0

    def sample(self, n: int, temperature, seed: int | np.random.Generator | None = None):
        """``n`` samples of ``q(· | T)`` as a float64 tensor ``(n, d)``.

        Inverse CDF on the quadrature grid: a cell is drawn with its Boltzmann weight, then
        a point uniformly inside it (exact up to the grid's cell size; samples stay inside
        the domain).

        Examples
        --------
        >>> toy = TorsionBond2D()
        >>> x = toy.sample(5, 300.0, seed=1)
        >>> x.shape
        torch.Size([5, 2])
        """
        n = checks.integer(n, "n")
        temperature = _scalar_temperature(temperature)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        points, _, log_w, widths = self._log_grid_weights(temperature)
        p = np.exp(log_w - np.logaddexp.reduce(log_w))
        index = rng.choice(len(p), size=n, p=p / p.sum())
        x = points[index] + (rng.random((n, self.dim)) - 0.5) * widths
        return torch.from_numpy(x.reshape(n, *self.event_shape))

    def kl_divergence(
        self,
        model,
        temperature: float,
        resolution: int | None = None,
        batch_size: int = 16384,
    ) -> float:
        """``KL(q_T ‖ p_T)`` in nats of a model from the exact density, by quadrature.

        Parameters
        ----------
        model : object with ``log_prob(x, temperature)`` or a callable ``(x, T) -> log p``
            Evaluated on the grid in its own dtype (``model.dtype`` when present), without
            gradients.
        temperature : float
            Temperature in K.
        resolution : int, optional
            Quadrature cells per coordinate.
        batch_size : int
            Grid points per model call.

        Examples
        --------
        >>> toy = DoubleWell1D()
        >>> round(toy.kl_divergence(toy.log_density, 300.0), 12)
        0.0
        """
        temperature = _scalar_temperature(temperature)
        if not (isinstance(model, LogDensityModel) or callable(model)):
            raise InputError("model must have log_prob(x, temperature) or be a callable "
                             f"(x, temperature) -> log p, got {type(model).__name__}")
        log_prob: Callable = model.log_prob if isinstance(model, LogDensityModel) else model
        dtype = getattr(model, "dtype", torch.float64)
        device = getattr(model, "device", "cpu")
        points, energies, log_w, _ = self._log_grid_weights(temperature, resolution)
        log_volume = self._grid(temperature, resolution)[2]
        finite = np.isfinite(log_w)
        log_q = log_w - np.logaddexp.reduce(log_w)  # log of cell probabilities
        log_p = []
        with torch.no_grad():
            grid = torch.from_numpy(points[finite]).reshape(-1, *self.event_shape)
            for chunk in torch.split(grid, batch_size):
                value = log_prob(chunk.to(device=device, dtype=dtype), temperature)
                log_p.append(value.detach().to("cpu", torch.float64).numpy())
        log_p = np.concatenate(log_p) + log_volume  # model probability of the cells
        q = np.exp(log_q[finite])
        return float(np.sum(q * (log_q[finite] - log_p)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"

    def _describe(self) -> str:
        return ""





class HarmonicOscillator(ToyEnergy):
    """``U(x) = k/2 |x - c|²`` on ``R^d`` (kJ/mol), with closed-form thermodynamics.

    ``ln Z = d/2 ln(2π k_B T / k)``, ``⟨U⟩ = d k_B T / 2``; samples are exact Gaussians.
    The ``"real"`` domains carry the window ``c ± window`` for flows (quadrature uses
    ``c ± 12 σ(T)`` instead).

    Parameters
    ----------
    spring_constant : float
        ``k`` in kJ/(mol nm²).
    dim : int
        Number of coordinates ``d``.
    center : float or sequence of float
        Minimum ``c``.
    window : float, optional
        Half-width of the flow window of each coordinate (default ``10 σ`` at 1000 K).

    Examples
    --------
    >>> import torch
    >>> toy = HarmonicOscillator(spring_constant=100.0, dim=2)
    >>> toy(torch.ones(1, 2)).tolist()
    [100.0]
    >>> round(toy.mean_energy(300.0) / (KB * 300.0), 12)
    1.0
    """

    def __init__(self, spring_constant: float = 100.0, dim: int = 1, center=0.0,
                 window: float | None = None) -> None:
        super().__init__()
        self.spring_constant = checks.number(spring_constant, "spring_constant")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise InputError(f"dim must be a positive integer, got {dim!r}")
        self.event_shape = (int(dim),)
        center = torch.as_tensor(center, dtype=torch.float64)
        if center.dim() > 1 or (center.dim() == 1 and center.shape[0] != dim):
            raise InputError(f"center must be a float or a sequence of {dim} floats, "
                             f"got shape {tuple(center.shape)}")
        self.center = center.expand(int(dim)).clone()
        self.window = (10.0 * math.sqrt(KB * 1000.0 / self.spring_constant) if window is None
                       else checks.number(window, "window"))

    @property
    def domains(self) -> list[Domain]:
        return [Domain.real(float(c) - self.window, float(c) + self.window) for c in self.center]

    def box(self, temperature: float) -> list[tuple[float, float]]:
        half = 12.0 * math.sqrt(KB * temperature / self.spring_constant)
        return [(float(c) - half, float(c) + half) for c in self.center]

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        center = self.center.to(device=x.device, dtype=x.dtype)
        return (0.5 * self.spring_constant * ((x - center) ** 2).sum(-1)).to(torch.float64)

    def _variance(self, temperature) -> np.ndarray:
        return KB * np.asarray(temperature, dtype=np.float64) / self.spring_constant

    def log_partition_function(self, temperature, resolution: int | None = None):
        temperatures, scalar = _temperatures(temperature)
        out = 0.5 * self.dim * np.log(2 * math.pi * self._variance(temperatures))
        return float(out[0]) if scalar else out

    def mean_energy(self, temperature, resolution: int | None = None):
        temperatures, scalar = _temperatures(temperature)
        out = 0.5 * self.dim * KB * temperatures
        return float(out[0]) if scalar else out

    def energy_variance(self, temperature, resolution: int | None = None):
        temperatures, scalar = _temperatures(temperature)
        out = 0.5 * self.dim * (KB * temperatures) ** 2
        return float(out[0]) if scalar else out

    def sample(self, n: int, temperature, seed: int | np.random.Generator | None = None):
        n = checks.integer(n, "n")
        temperature = _scalar_temperature(temperature)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        z = rng.standard_normal((n, self.dim)) * math.sqrt(self._variance(temperature))
        return torch.from_numpy(z) + self.center

    def _describe(self) -> str:
        return f"spring_constant={self.spring_constant}, dim={self.dim}"


class DoubleWell1D(ToyEnergy):
    """``U(x) = a (x² - 1)² + b x`` on a bounded interval (kJ/mol).

    Wells near ``x = ±1`` separated by a barrier of about ``a``; ``b > 0`` lowers the left
    well. Outside the interval the density is zero (the domain is ``("interval", lo, hi)``).

    Parameters
    ----------
    barrier : float
        ``a`` in kJ/mol.
    tilt : float
        ``b`` in kJ/mol.
    interval : (float, float)
        The domain ``[lo, hi]``. The default ``[-2.5, 2.5]`` holds all the mass up to
        ~1000 K while keeping the walls moderate (``U(±2.5) ≈ 280`` kJ/mol): on wider
        intervals the exact density at the ends is ~e^-250, which a spline flow cannot
        follow in temperature, and its tail residuals slow TRADE down.

    Examples
    --------
    >>> import torch
    >>> toy = DoubleWell1D(barrier=10.0, tilt=2.0)
    >>> toy(torch.tensor([[0.0], [1.0]])).tolist()
    [10.0, 2.0]
    """

    def __init__(self, barrier: float = 10.0, tilt: float = 2.0,
                 interval: Sequence[float] = (-2.5, 2.5)) -> None:
        super().__init__()
        self.barrier = checks.number(barrier, "barrier")
        if not isinstance(tilt, (int, float, np.floating, np.integer)) or not math.isfinite(tilt):
            raise InputError(f"tilt must be a finite number, got {tilt!r}")
        self.tilt = float(tilt)
        self.interval = checks.interval(interval, "interval")
        self.event_shape = (1,)

    @property
    def domains(self) -> list[Domain]:
        return [Domain.interval(*self.interval)]

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, 0].to(torch.float64)
        return self.barrier * (x**2 - 1.0) ** 2 + self.tilt * x

    def _describe(self) -> str:
        return f"barrier={self.barrier}, tilt={self.tilt}, interval={self.interval}"


class TorsionBond2D(ToyEnergy):
    """A torsion ``φ ∈ [-π, π)`` coupled to a bond ``r`` on an interval (kJ/mol).

    ``U(φ, r) = a (1 + cos 2φ) - b sin φ + k/2 (1 + c sin φ) (r - r0 - δ sin φ)²``.

    Two wells at ``φ = ±π/2`` (energies ``∓b``, barriers ``≈ 2a`` at ``φ = 0, π``); in
    the lower well the bond is stiffer and longer, so the upper well gains entropy and
    population as the temperature rises. Coordinates are ``x = (φ, r)``.

    Parameters
    ----------
    barrier : float
        ``a`` (kJ/mol).
    asymmetry : float
        ``b`` (kJ/mol).
    bond_constant : float
        ``k`` (kJ/(mol nm²)).
    stiffness_coupling : float
        ``c``, with ``|c| < 1``.
    bond_length : float
        ``r0`` (nm).
    length_coupling : float
        ``δ`` (nm).
    bond_interval : (float, float)
        The domain of ``r``.

    Examples
    --------
    >>> import math, torch
    >>> toy = TorsionBond2D()
    >>> [d.kind for d in toy.domains]
    ['circular', 'interval']
    >>> round(float(toy(torch.tensor([[math.pi / 2, 1.15]]))), 6)
    -1.5
    """

    def __init__(
        self,
        barrier: float = 4.0,
        asymmetry: float = 1.5,
        bond_constant: float = 200.0,
        stiffness_coupling: float = 0.5,
        bond_length: float = 1.0,
        length_coupling: float = 0.15,
        bond_interval: Sequence[float] = (0.5, 1.5),
    ) -> None:
        super().__init__()
        self.barrier = checks.number(barrier, "barrier")
        self.asymmetry = float(asymmetry)
        self.bond_constant = checks.number(bond_constant, "bond_constant")
        if not -1.0 < float(stiffness_coupling) < 1.0:
            raise InputError(f"stiffness_coupling must be in (-1, 1), got {stiffness_coupling!r}")
        self.stiffness_coupling = float(stiffness_coupling)
        self.bond_length = float(bond_length)
        self.length_coupling = float(length_coupling)
        self.bond_interval = checks.interval(bond_interval, "bond_interval")
        self.event_shape = (2,)

    @property
    def domains(self) -> list[Domain]:
        return [Domain.circular(), Domain.interval(*self.bond_interval)]

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        phi, r = x[:, 0], x[:, 1]
        s = torch.sin(phi)
        torsion = self.barrier * (1.0 + torch.cos(2.0 * phi)) - self.asymmetry * s
        stiffness = self.bond_constant * (1.0 + self.stiffness_coupling * s)
        rest = self.bond_length + self.length_coupling * s
        return torsion + 0.5 * stiffness * (r - rest) ** 2

    def _describe(self) -> str:
        return (f"barrier={self.barrier}, asymmetry={self.asymmetry}, "
                f"bond_constant={self.bond_constant}, bond_interval={self.bond_interval}")
