"""Free energies from weighted samples: Δf(T), ⟨U⟩(T), C_v(T), FES along CVs, populations.

Conventions (DESIGN.md §4): ``f(β) = -ln Z(β)`` in kT; with samples ``x_i ~ p_θ(·|T)``
and ``log w_i = -β U(x_i) - log p_θ(x_i|T)``::

    ln Z(β)  ≈ ln( (1/n) Σ w_i )                  (failed samples count, with w = 0)
    Δf(T)    = f(β) - f(β0)                        (kT; T0 the reference temperature)
    ⟨U⟩      = Σ w̄_i U_i                           (self-normalised, kJ/mol)
    C_v      = k_B β² (⟨U²⟩ - ⟨U⟩²)                (kJ/mol/K)

Every estimate carries a bootstrap standard error (resampling the samples of each
temperature independently with replacement). Δf is cross-checked by thermodynamic
integration, ``f(β) - f(β0) = ∫_{β0}^{β} ⟨U⟩_β' dβ'`` (trapezoid rule over the given
temperatures), and can be compared with MBAR (:func:`mbar_reference`, pymbar on
parallel-tempering data) through :func:`compare_with_mbar`.

Example
-------
>>> import numpy as np
>>> from openmm_trade.sampling import WeightedTrajectory
>>> x = np.random.default_rng(0).uniform(-np.pi, np.pi, size=(1000, 1))
>>> wt = WeightedTrajectory(x, np.zeros(1000), np.zeros(1000), temperature=300.0)
>>> fes = surface(wt, cv=x[:, 0], bins=10, n_bootstrap=10, seed=0)
>>> fes.free_energy.shape, float(fes.free_energy.min())
((10,), 0.0)
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields

import mdtraj
import numpy as np
from scipy.integrate import cumulative_trapezoid

from . import cv as cvs
from .errors import InputError
from .files import atomic_write_path
from .mbar import MBARResult, mbar_reference
from .metrics import DeltaFComparison, delta_f_difference
from .sampling import WeightedTrajectory, sample
from .units import KB, check_temperature

# ---------------------------------------------------------------------------- tables


class _Table:
    """Mixin for result tables: ``columns()`` → ordered name → 1-D array."""

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)}

    def __len__(self) -> int:
        return len(next(iter(self.columns().values())))

    def as_rows(self) -> list[dict]:
        """One ``dict`` per row, plain Python values."""
        columns = {name: np.asarray(values).tolist() for name, values in self.columns().items()}
        return [{name: values[i] for name, values in columns.items()} for i in range(len(self))]

    def to_csv(self, path) -> str:
        """Write the table as CSV (atomically); returns the path as a string."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.columns()), lineterminator="\n")
        writer.writeheader()
        for row in self.as_rows():
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
        with atomic_write_path(path) as tmp:
            tmp.write_text(buffer.getvalue())
        return str(path)

    @staticmethod
    def _read_csv_columns(path) -> dict[str, np.ndarray]:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            raise InputError(f"{path}: no rows to read")
        return {name: np.array([float(row[name]) for row in rows]) for name in rows[0]}

    @classmethod
    def from_csv(cls, path, **extra):
        """Read a table written by :meth:`to_csv`; ``extra`` sets non-column fields."""
        return cls(**cls._read_csv_columns(path), **extra)


@dataclass
class TemperatureProfile(_Table):
    """Per-temperature free energies (one row per requested temperature).

    Columns: ``temperature`` (K); ``delta_f_kT`` = f(β) − f(β0) and ``delta_f_kT_err``
    (kT); ``delta_f_kJmol``/``delta_f_kJmol_err`` = k_B T · Δf (the same difference in
    kJ/mol at T; an absolute F(T) − F(T0) would depend on the units of the configuration
    measure and is not reported); ``mean_energy``/``mean_energy_err`` (kJ/mol);
    ``heat_capacity``/``heat_capacity_err`` (kJ/mol/K); ``ess`` (fraction);
    ``delta_f_ti_kT`` (thermodynamic integration of ⟨U⟩, trapezoid rule over the
    temperatures sampled, T0 included); ``n_failed`` (failed energies).

    ``reference_temperature`` is T0 and ``ti_max_deviation_kT`` the largest
    |Δf − Δf_TI| (importance sampling vs TI; large values flag poor sampling or too coarse
    a temperature grid).
    """

    temperature: np.ndarray
    delta_f_kT: np.ndarray
    delta_f_kT_err: np.ndarray
    delta_f_kJmol: np.ndarray
    delta_f_kJmol_err: np.ndarray
    mean_energy: np.ndarray
    mean_energy_err: np.ndarray
    heat_capacity: np.ndarray
    heat_capacity_err: np.ndarray
    ess: np.ndarray
    delta_f_ti_kT: np.ndarray
    n_failed: np.ndarray
    reference_temperature: float = 300.0
    ti_max_deviation_kT: float = field(init=False)

    def __post_init__(self) -> None:
        self.ti_max_deviation_kT = float(np.max(np.abs(self.delta_f_kT - self.delta_f_ti_kT)))

    def summary(self) -> str:
        """A plain-text table with the TI consistency check."""
        lines = [f"{'T (K)':>8} {'Δf (kT)':>18} {'<U> (kJ/mol)':>20} {'Cv (kJ/mol/K)':>20} "
                 f"{'ESS':>7} {'Δf_TI (kT)':>11}"]
        for r in self.as_rows():
            lines.append(
                f"{r['temperature']:8.1f} {r['delta_f_kT']:9.3f} ± {r['delta_f_kT_err']:6.3f} "
                f"{r['mean_energy']:10.2f} ± {r['mean_energy_err']:7.2f} "
                f"{r['heat_capacity']:9.4f} ± {r['heat_capacity_err']:8.4f} {r['ess']:7.1%} "
                f"{r['delta_f_ti_kT']:11.3f}")
        lines.append(f"reference T0 = {self.reference_temperature:g} K; "
                     f"max |Δf - Δf_TI| = {self.ti_max_deviation_kT:.3f} kT")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- bootstrap


def _bootstrap_counts(rng: np.random.Generator, n: int, n_bootstrap: int,
                      max_elements: int = 2_000_000) -> Iterator[np.ndarray]:
    """Multiplicities ``(b, n)`` of bootstrap resamples (with replacement), in chunks."""
    per_chunk = max(1, max_elements // max(n, 1))
    probabilities = np.full(n, 1.0 / n)
    done = 0
    while done < n_bootstrap:
        b = min(per_chunk, n_bootstrap - done)
        yield rng.multinomial(n, probabilities, size=b).astype(np.float64)
        done += b


def _check_bootstrap(n_bootstrap) -> int:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) \
            or n_bootstrap < 2:
        raise InputError(f"n_bootstrap must be an integer >= 2, got {n_bootstrap!r}")
    return int(n_bootstrap)


def _std(replicates: np.ndarray) -> np.ndarray:
    """Standard deviation over axis 0 using the finite replicates (NaN if fewer than 2)."""
    finite = np.isfinite(replicates)
    count = finite.sum(axis=0)
    filled = np.where(finite, replicates, 0.0)
    mean = filled.sum(axis=0) / np.maximum(count, 1)
    var = (np.where(finite, replicates - mean, 0.0) ** 2).sum(axis=0) / np.maximum(count - 1, 1)
    return np.where(count >= 2, np.sqrt(var), np.nan)


def _scaled_weights(log_weights: np.ndarray) -> tuple[np.ndarray, float]:
    """``exp(log w - m)`` (zero for -inf) and the shift ``m``."""
    finite = np.isfinite(log_weights)
    shift = float(log_weights[finite].max()) if finite.any() else 0.0
    return np.exp(log_weights - shift), shift


def _thermodynamics(multiplicity, w, shift, energies, beta):
    """ln Z, ⟨U⟩ and C_v from weights ``w·exp(shift)`` with sample multiplicities."""
    weights = multiplicity * w
    total = weights.sum(-1)
    n = multiplicity.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_z = shift + np.log(total) - np.log(n)
        mean = (weights @ energies) / total
        var = (weights * (energies - mean[..., None]) ** 2).sum(-1) / total
    return log_z, mean, KB * beta ** 2 * var


@dataclass
class _Estimate:
    temperature: float
    log_z: float
    mean_energy: float
    heat_capacity: float
    log_z_boot: np.ndarray
    mean_energy_err: float
    heat_capacity_err: float
    ess: float
    n_failed: int


def _estimate(wt: WeightedTrajectory, n_bootstrap: int, rng) -> _Estimate:
    w, shift = _scaled_weights(wt.log_weights)
    energies = np.where(np.isfinite(wt.energies), wt.energies, 0.0)
    log_z, mean, cv = _thermodynamics(np.ones(len(wt)), w, shift, energies, wt.beta)
    boot = [np.stack(_thermodynamics(c, w, shift, energies, wt.beta))
            for c in _bootstrap_counts(rng, len(wt), n_bootstrap)]
    boot = np.concatenate(boot, axis=1)
    return _Estimate(wt.temperature, float(log_z), float(mean), float(cv), boot[0],
                     float(_std(boot[1])), float(_std(boot[2])), wt.ess, wt.n_failed)


# ---------------------------------------------------------------------------- Δf(T)


def temperature_profile(model, energy, temperatures: Sequence[float], n: int = 10_000,
                        reference_temperature: float | None = None, n_bootstrap: int = 200,
                        seed: int | None = None, chunk_size: int = 1000,
                        quiet: bool = False, refine=None) -> TemperatureProfile:
    """Δf(T), ⟨U⟩, C_v and ESS at each temperature by importance sampling with ``model``.

    Draws ``n`` samples at every temperature (and at T0 if it is not among them) with
    :func:`openmm_trade.sample`, then calls :func:`profile_from_trajectories`.

    Parameters
    ----------
    model
        Conditional density model (``sample(n, T)``, ``reference_temperature``).
    energy : openmm_trade.energy.Energy
        The potential energy.
    temperatures : sequence of float
        Temperatures in K (rows of the table, in this order).
    n : int
        Samples per temperature.
    reference_temperature : float, optional
        T0 of Δf; default ``model.reference_temperature``.
    n_bootstrap : int
        Bootstrap replicates for the uncertainties.
    seed : int, optional
        Seeds sampling (one derived seed per temperature) and the bootstrap.
    chunk_size, quiet
        Passed to :func:`openmm_trade.sample`.
    refine : bool or openmm_trade.SMC, optional
        Refine every temperature's samples by SMC (:mod:`openmm_trade.refine`): Δf comes
        from the SMC estimates of ``ln Z`` with their island errors (see
        :func:`profile_from_trajectories`); ⟨U⟩ and C_v from the refined weighted samples.

    Returns
    -------
    TemperatureProfile

    Examples
    --------
    >>> from openmm_trade.flow import ConditionalFlow, Domain
    >>> from openmm_trade.toys import HarmonicOscillator
    >>> model = ConditionalFlow([Domain.real(-1.0, 1.0)], reference_temperature=300.0,
    ...                         temperature_range=(300.0, 600.0), hidden=16, n_blocks=1, seed=0)
    >>> table = temperature_profile(model, HarmonicOscillator(), [300.0, 450.0], n=500,
    ...                             n_bootstrap=20, seed=0, quiet=True)
    >>> table.temperature.tolist(), float(table.delta_f_kT[0])
    ([300.0, 450.0], 0.0)
    """
    temperatures = _check_temperatures(temperatures)
    t0 = check_temperature(model.reference_temperature if reference_temperature is None
                           else reference_temperature, name="reference_temperature")
    draw = list(temperatures)
    if not any(math.isclose(t, t0, rel_tol=1e-12) for t in draw):
        draw.append(t0)
    seeds = ([None] * len(draw) if seed is None else
             [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(len(draw))])
    trajectories = [sample(model, energy, t, n, chunk_size=chunk_size, seed=s, quiet=quiet,
                           refine=refine)
                    for t, s in zip(draw, seeds, strict=True)]
    return profile_from_trajectories(trajectories, reference_temperature=t0,
                                     n_bootstrap=n_bootstrap, seed=seed,
                                     temperatures=temperatures)


def _check_temperatures(temperatures) -> list[float]:
    values = np.atleast_1d(np.asarray(temperatures, dtype=np.float64))
    if values.ndim != 1 or values.size == 0:
        raise InputError(f"temperatures must be a non-empty sequence of K, got {temperatures!r}")
    return [check_temperature(float(t), name="temperatures") for t in values]


def profile_from_trajectories(trajectories: Sequence[WeightedTrajectory],
                              reference_temperature: float | None = None,
                              n_bootstrap: int = 200, seed: int | None = None,
                              temperatures: Sequence[float] | None = None) -> TemperatureProfile:
    """The table of :func:`temperature_profile` from weighted trajectories already drawn.

    Parameters
    ----------
    trajectories : sequence of WeightedTrajectory
        One per temperature, all from the same model (so that the log-densities share
        one normalisation), one of them at T0.
    reference_temperature : float, optional
        T0; default the lowest temperature among ``trajectories``.
    n_bootstrap, seed
        Bootstrap replicates and seed.

        The error of Δf is the bootstrap spread of the difference of the two ``ln Z``
        estimates; for refined trajectories (``WeightedTrajectory.refinement``), whose
        ``ln Z`` is an SMC estimate that a bootstrap of the final particles does not
        capture, each side contributes its recorded ``log_partition_error`` instead and
        the two add in quadrature (the temperatures are sampled independently).
    temperatures : sequence of float, optional
        Rows to report (default: every trajectory's temperature, in the given order).

    Examples
    --------
    >>> import numpy as np
    >>> from openmm_trade.sampling import WeightedTrajectory
    >>> rng = np.random.default_rng(0)
    >>> wts = [WeightedTrajectory(np.zeros((500, 1)), rng.normal(size=500), np.zeros(500), t)
    ...        for t in (300.0, 400.0)]
    >>> float(profile_from_trajectories(wts, n_bootstrap=20, seed=0).delta_f_kT[0])
    0.0
    """
    trajectories = list(trajectories)
    if not trajectories or not all(isinstance(t, WeightedTrajectory) for t in trajectories):
        raise InputError("trajectories must be a non-empty sequence of WeightedTrajectory")
    n_bootstrap = _check_bootstrap(n_bootstrap)
    by_temperature: dict[float, WeightedTrajectory] = {}
    for wt in trajectories:
        if any(math.isclose(wt.temperature, t, rel_tol=1e-12) for t in by_temperature):
            raise InputError(f"trajectories: two trajectories at {wt.temperature:g} K; "
                             "join them with WeightedTrajectory.concatenate")
        by_temperature[wt.temperature] = wt

    def lookup(t: float, name: str) -> float:
        for known in by_temperature:
            if math.isclose(known, t, rel_tol=1e-12):
                return known
        raise InputError(f"{name}: no trajectory at {t:g} K (have "
                         f"{sorted(by_temperature)})")

    t0 = lookup(min(by_temperature) if reference_temperature is None
                else check_temperature(reference_temperature, "reference_temperature"),
                "reference_temperature")
    rows = [lookup(t, "temperatures") for t in (
        _check_temperatures(temperatures) if temperatures is not None
        else [wt.temperature for wt in trajectories])]
    rngs = np.random.default_rng(seed).spawn(len(by_temperature))
    estimates = {t: _estimate(wt, n_bootstrap, rng)
                 for (t, wt), rng in zip(by_temperature.items(), rngs, strict=True)}
    reference = estimates[t0]
    delta = {t: reference.log_z - e.log_z for t, e in estimates.items()}
    delta_err = {t: 0.0 if t == t0 else _delta_f_error(by_temperature[t0], reference,
                                                         by_temperature[t], e)
                 for t, e in estimates.items()}
    ti = _thermodynamic_integration(estimates, t0)

    def column(values) -> np.ndarray:
        return np.array([values(t) for t in rows], dtype=np.float64)

    t = np.array(rows)
    delta_f = column(delta.get)
    delta_f_err = column(delta_err.get)
    return TemperatureProfile(
        temperature=t, delta_f_kT=delta_f, delta_f_kT_err=delta_f_err,
        delta_f_kJmol=KB * t * delta_f, delta_f_kJmol_err=KB * t * delta_f_err,
        mean_energy=column(lambda s: estimates[s].mean_energy),
        mean_energy_err=column(lambda s: estimates[s].mean_energy_err),
        heat_capacity=column(lambda s: estimates[s].heat_capacity),
        heat_capacity_err=column(lambda s: estimates[s].heat_capacity_err),
        ess=column(lambda s: estimates[s].ess), delta_f_ti_kT=column(ti.get),
        n_failed=np.array([estimates[s].n_failed for s in rows], dtype=np.int64),
        reference_temperature=float(t0),
    )


def _delta_f_error(wt0: WeightedTrajectory, e0: _Estimate, wt: WeightedTrajectory,
                   e: _Estimate) -> float:
    """Standard error of ``ln Z(β0) - ln Z(β)``: bootstrap, or SMC errors when refined."""
    if wt0.refinement is None and wt.refinement is None:
        return float(_std(e0.log_z_boot - e.log_z_boot))

    def variance(trajectory: WeightedTrajectory, estimate: _Estimate) -> float:
        if trajectory.refinement is not None:
            return float(trajectory.log_partition_error) ** 2
        return float(_std(estimate.log_z_boot)) ** 2

    return math.sqrt(variance(wt0, e0) + variance(wt, e))


def _thermodynamic_integration(estimates: dict[float, _Estimate], t0: float) -> dict:
    """Δf_TI(T) = ∫_{β0}^{β} ⟨U⟩ dβ' by the trapezoid rule over the sampled temperatures."""
    temperatures = np.array(sorted(estimates, reverse=True))  # ascending β
    betas = 1.0 / (KB * temperatures)
    means = np.array([estimates[t].mean_energy for t in temperatures])
    integral = cumulative_trapezoid(means, betas, initial=0.0)
    offset = integral[list(temperatures).index(t0)]
    return {t: float(v - offset) for t, v in zip(temperatures, integral, strict=True)}


def compare_with_mbar(profile: TemperatureProfile, mbar: MBARResult) -> DeltaFComparison:
    """Differences Δf_model − Δf_MBAR (kT) at the temperatures both tables share.

    MBAR's Δf (relative to its first temperature) is re-referenced to the profile's T0,
    which must be one of MBAR's temperatures; the two MBAR errors are then added in
    quadrature (conservative: their correlation is ignored) unless T0 is MBAR's first.

    Examples
    --------
    >>> result = compare_with_mbar(table, ot.mbar.mbar_reference(pt))  # doctest: +SKIP
    >>> result.within(3)  # doctest: +SKIP
    """
    mbar_t = np.asarray(mbar.temperatures, dtype=np.float64)
    at_t0 = np.flatnonzero(np.isclose(mbar_t, profile.reference_temperature, rtol=1e-9))
    if at_t0.size == 0:
        raise InputError(f"mbar: no state at the profile's reference temperature "
                         f"{profile.reference_temperature:g} K (have {mbar_t.tolist()})")
    k0 = int(at_t0[0])
    rows, cols = [], []
    for i, t in enumerate(profile.temperature):
        match = np.flatnonzero(np.isclose(mbar_t, t, rtol=1e-9))
        if match.size:
            rows.append(i)
            cols.append(int(match[0]))
    if not rows:
        raise InputError("mbar: no temperature in common with the profile")
    ref = np.asarray(mbar.delta_f)[cols] - np.asarray(mbar.delta_f)[k0]
    err = np.asarray(mbar.delta_f_error, dtype=np.float64)
    ref_err = err[cols] if k0 == 0 else np.hypot(err[cols], err[k0])
    ref_err = np.where(np.array(cols) == k0, 0.0, ref_err)
    return delta_f_difference(profile.delta_f_kT[rows], ref, profile.delta_f_kT_err[rows],
                              ref_err)


# ---------------------------------------------------------------------------- weighted data


def _weighted_data(data, temperature) -> tuple[np.ndarray, float | None]:
    """Log-weights and temperature of a WeightedTrajectory, mdtraj.Trajectory or array."""
    if isinstance(data, WeightedTrajectory):
        if temperature is not None and not math.isclose(temperature, data.temperature):
            raise InputError(f"temperature {temperature} K differs from the trajectory's "
                             f"{data.temperature} K")
        return data.log_weights, data.temperature
    if isinstance(data, mdtraj.Trajectory):
        n = data.n_frames
    elif isinstance(data, np.ndarray):
        n = data.shape[0]
    else:
        raise InputError("data must be a WeightedTrajectory, an mdtraj.Trajectory or an array "
                         f"of samples, got {type(data).__name__}")
    t = None if temperature is None else check_temperature(temperature)
    return np.zeros(n), t


# ---------------------------------------------------------------------------- surfaces


@dataclass
class FreeEnergySurface:
    """F(cv) = −k_B T ln P_w(cv) on a 1-D or 2-D grid (kJ/mol, minimum 0).

    Attributes
    ----------
    free_energy : numpy.ndarray
        ``(bins,)`` or ``(bins, bins)``; ``+inf`` in bins without weight.
    error : numpy.ndarray
        Bootstrap standard error of −k_B T ln P per bin (kJ/mol; NaN where fewer than two
        replicates had weight in the bin).
    probability : numpy.ndarray
        Weighted probability per bin (normalised by the total weight, also out of range).
    edges : tuple of numpy.ndarray
        Bin edges per dimension.
    temperature : float
        K.
    names : tuple of str
        CV labels.
    """

    free_energy: np.ndarray
    error: np.ndarray
    probability: np.ndarray
    edges: tuple
    temperature: float
    names: tuple = ()

    @property
    def ndim(self) -> int:
        return self.free_energy.ndim

    @property
    def centers(self) -> tuple:
        """Bin centres per dimension."""
        return tuple(0.5 * (e[1:] + e[:-1]) for e in self.edges)

    @property
    def free_energy_kT(self) -> np.ndarray:
        """The surface in units of k_B T."""
        return self.free_energy / (KB * self.temperature)


def surface(data, cv, bins: int | Sequence[int] = 60, n_bootstrap: int = 100, range=None,
            temperature: float | None = None, seed: int | None = None) -> FreeEnergySurface:
    """Free-energy surface along one or two CVs from weighted (or plain MD) samples.

    Parameters
    ----------
    data : WeightedTrajectory, mdtraj.Trajectory or numpy.ndarray
        Weighted samples; a plain trajectory/array counts every frame equally (reference MD),
        which then needs ``temperature``.
    cv : callable or array-like
        E.g. :data:`openmm_trade.cv.ramachandran`, any ``mdtraj.Trajectory -> (n,) | (n, 2)``
        callable, or precomputed values.
    bins : int or (int, int)
        Bins per dimension.
    n_bootstrap : int
        Bootstrap replicates for ``error``.
    range : sequence of (low, high), optional
        Histogram range per dimension; default the CV's natural range
        (``CollectiveVariable.range``, [-π, π] for dihedrals) or the data's extent.
    temperature : float, optional
        K, for unweighted ``data``.
    seed : int, optional
        Bootstrap seed.

    Returns
    -------
    FreeEnergySurface

    Examples
    --------
    >>> import mdtraj, openmm_trade as ot
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> md = mdtraj.Trajectory(msys.positions[None].repeat(4, 0), msys.mdtraj_topology)
    >>> fes = surface(md, cv=ot.cv.ramachandran, bins=18, temperature=300.0, n_bootstrap=5)
    >>> fes.free_energy.shape, fes.names
    ((18, 18), ('φ', 'ψ'))
    """
    log_weights, temperature = _weighted_data(data, temperature)
    if temperature is None:
        raise InputError("temperature is required (in K) for unweighted data")
    n_bootstrap = _check_bootstrap(n_bootstrap)
    values = cvs.evaluate(cv, data)
    k = values.shape[1]
    if k not in (1, 2):
        raise InputError(f"cv must have 1 or 2 dimensions for a surface, got {k}")
    w, _ = _scaled_weights(log_weights)
    keep = w > 0
    if not keep.any():
        raise InputError("data has no sample with non-zero weight")
    if range is None:
        range = cvs.natural_range(cv)
    if range is None:
        range = [(float(values[keep, j].min()), float(values[keep, j].max())) for j in
                 np.arange(k)]
    range = np.asarray(range, dtype=np.float64).reshape(-1, 2)
    if range.shape[0] != k or not np.all(range[:, 1] > range[:, 0]):
        raise InputError(f"range must give (low, high), low < high, for each of the {k} "
                         f"CV dimensions, got {range.tolist()}")
    bins = np.broadcast_to(np.asarray(bins, dtype=int), (k,))
    if np.any(bins < 1):
        raise InputError(f"bins must be positive, got {bins.tolist()}")
    edges = tuple(np.linspace(lo, hi, b + 1) for (lo, hi), b in zip(range, bins, strict=True))
    shape = tuple(int(b) for b in bins)
    flat = _bin_index(values, edges, shape)
    kT = KB * temperature

    def minus_kt_log_p(weights: np.ndarray) -> np.ndarray:
        mass = np.bincount(flat[flat >= 0], weights=weights[flat >= 0],
                           minlength=int(np.prod(shape)))
        with np.errstate(divide="ignore"):
            return mass / weights.sum(), -kT * np.log(mass / weights.sum())

    probability, f = minus_kt_log_p(w)
    if not np.isfinite(f).any():
        raise InputError(f"range: no weighted sample lies inside {range.tolist()}")
    rng = np.random.default_rng(seed)
    replicates = np.concatenate([np.stack([minus_kt_log_p(c * w)[1] for c in counts])
                                 for counts in _bootstrap_counts(rng, len(w), n_bootstrap)])
    f = f - f[np.isfinite(f)].min()
    names = tuple(getattr(cv, "names", ())) if callable(cv) else ()
    return FreeEnergySurface(f.reshape(shape), _std(replicates).reshape(shape),
                             probability.reshape(shape), edges, float(temperature), names)


def _bin_index(values: np.ndarray, edges: tuple, shape: tuple) -> np.ndarray:
    """Flat bin index per sample; -1 outside the range or for non-finite values."""
    index = np.zeros(values.shape[0], dtype=np.int64)
    inside = np.all(np.isfinite(values), axis=1)
    for j, e in enumerate(edges):
        column = np.nan_to_num(values[:, j])
        i = np.searchsorted(e, column, side="right") - 1
        i[column == e[-1]] = len(e) - 2  # the upper edge belongs to the last bin
        inside &= (i >= 0) & (i < len(e) - 1)
        index = index * shape[j] + np.clip(i, 0, len(e) - 2)
    return np.where(inside, index, -1)


# ---------------------------------------------------------------------------- populations


class Populations(Mapping, _Table):
    """Weighted state populations: a mapping ``state -> (population, error)``.

    ``population`` and ``population_err`` are arrays in the order of ``states``;
    ``temperature`` is in K (``None`` for unweighted data without a temperature).
    """

    def __init__(self, states, population, population_err, temperature):
        self.states = tuple(states)
        self.population = np.asarray(population, dtype=np.float64)
        self.population_err = np.asarray(population_err, dtype=np.float64)
        self.temperature = temperature

    def columns(self) -> dict[str, np.ndarray]:
        return {"state": np.array(self.states, dtype=object), "population": self.population,
                "population_err": self.population_err}

    def __getitem__(self, state: str) -> tuple[float, float]:
        i = self.states.index(state)
        return float(self.population[i]), float(self.population_err[i])

    def __iter__(self):
        return iter(self.states)

    def __len__(self) -> int:
        return len(self.states)

    def __repr__(self) -> str:
        body = ", ".join(f"{s}: {p:.3f} ± {e:.3f}" for s, p, e in
                         zip(self.states, self.population, self.population_err, strict=True))
        return f"Populations({body})"


def _state_mask(name: str, state, values: np.ndarray) -> np.ndarray:
    """Boolean membership of each sample in ``state`` (callable or boxes on CV values)."""
    if callable(state):
        mask = np.asarray(state(values), dtype=bool).reshape(-1)
        if mask.shape != (values.shape[0],):
            raise InputError(f"states[{name!r}] must return a boolean array of shape "
                             f"({values.shape[0]},), got {mask.shape}")
        return mask
    boxes = np.asarray(state, dtype=np.float64)
    if boxes.ndim == 2:
        boxes = boxes[None]
    if boxes.ndim != 3 or boxes.shape[1:] != (values.shape[1], 2):
        raise InputError(f"states[{name!r}] must be a callable, a box ((lo, hi) per CV "
                         f"dimension, {values.shape[1]} here) or a list of boxes, got "
                         f"shape {boxes.shape}")
    mask = np.zeros(values.shape[0], dtype=bool)
    for box in boxes:
        lo, hi = box[:, 0], box[:, 1]
        upper = (values < hi) | ((hi >= math.pi) & (values == hi))
        mask |= np.all((values >= lo) & upper, axis=1)
    return mask


def populations(data, states: Mapping[str, Callable | Sequence] | None = None, cv=None,
                n_bootstrap: int = 200, seed: int | None = None,
                temperature: float | None = None) -> Populations:
    """Weighted populations of user-defined states, with bootstrap errors.

    Parameters
    ----------
    data : WeightedTrajectory, mdtraj.Trajectory or numpy.ndarray
        Weighted samples (plain trajectories/arrays weigh frames equally).
    states : dict, optional
        ``name -> state``; a state is a callable ``values (n, k) -> bool mask (n,)`` or a
        box ``[(lo, hi), ...]`` (one interval per CV dimension, half-open ``[lo, hi)``,
        closed at π) or a list of boxes (their union). Default
        :data:`openmm_trade.cv.RAMACHANDRAN_STATES`.
    cv : callable or array-like, optional
        The CV the states are defined on. Default: :data:`openmm_trade.cv.ramachandran`
        for molecular data, the flattened samples ``(n, d)`` otherwise.
    n_bootstrap, seed
        Bootstrap replicates and seed.
    temperature : float, optional
        Label for unweighted data.

    Returns
    -------
    Populations
        Mapping ``state -> (population, error)``; states may overlap or leave samples out.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[-1.0], [1.0], [2.0], [3.0]])
    >>> pops = populations(x, {"left": [(-10, 0)], "right": lambda v: v[:, 0] > 0},
    ...                    n_bootstrap=10, seed=0)
    >>> pops["left"][0], pops["right"][0]
    (0.25, 0.75)
    """
    log_weights, temperature = _weighted_data(data, temperature)
    n_bootstrap = _check_bootstrap(n_bootstrap)
    if states is None:
        states = cvs.RAMACHANDRAN_STATES
    if not isinstance(states, Mapping) or not states:
        raise InputError(f"states must be a non-empty dict name -> state, got {states!r}")
    if cv is None:
        molecular = isinstance(data, mdtraj.Trajectory) or (
            isinstance(data, WeightedTrajectory) and data.topology is not None)
        samples = data.samples if isinstance(data, WeightedTrajectory) else data
        cv = cvs.ramachandran if molecular else np.asarray(samples).reshape(len(log_weights), -1)
    values = cvs.evaluate(cv, data)
    w, _ = _scaled_weights(log_weights)
    if not (w > 0).any():
        raise InputError("data has no sample with non-zero weight")
    masks = np.stack([_state_mask(name, s, values) for name, s in states.items()], axis=1)
    masks = masks.astype(np.float64)
    population = (w @ masks) / w.sum()
    rng = np.random.default_rng(seed)
    replicates = np.concatenate([((c * w) @ masks) / (c * w).sum(-1, keepdims=True)
                                 for c in _bootstrap_counts(rng, len(w), n_bootstrap)])
    return Populations(states.keys(), population, _std(replicates), temperature)


@dataclass
class PopulationProfile(_Table):
    """Populations across temperature: ``population[i, j]`` of state ``j`` at
    ``temperature[i]`` with ``population_err``. CSV columns: ``temperature`` then
    ``<state>`` and ``<state>_err`` per state."""

    temperature: np.ndarray
    states: tuple
    population: np.ndarray
    population_err: np.ndarray

    def columns(self) -> dict[str, np.ndarray]:
        columns = {"temperature": self.temperature}
        for j, state in enumerate(self.states):
            columns[state] = self.population[:, j]
            columns[f"{state}_err"] = self.population_err[:, j]
        return columns

    @classmethod
    def from_csv(cls, path) -> PopulationProfile:
        """Read a table written by :meth:`to_csv`."""
        columns = cls._read_csv_columns(path)
        states = tuple(name for name in columns if name != "temperature"
                       and not name.endswith("_err"))
        return cls(columns["temperature"], states,
                   np.stack([columns[s] for s in states], axis=1),
                   np.stack([columns[f"{s}_err"] for s in states], axis=1))


def populations_vs_temperature(trajectories: Sequence, states=None, cv=None,
                               n_bootstrap: int = 200, seed: int | None = None,
                               temperatures: Sequence[float] | None = None) -> PopulationProfile:
    """:func:`populations` for several trajectories (one per temperature).

    ``temperatures`` labels unweighted trajectories (reference MD); weighted ones carry
    their own. Rows keep the order given.

    Examples
    --------
    >>> import numpy as np
    >>> data = [np.array([[-1.0], [1.0]]), np.array([[1.0], [1.0]])]
    >>> table = populations_vs_temperature(data, {"right": [(0, 10)]}, n_bootstrap=5,
    ...                                    temperatures=[300, 400], seed=0)
    >>> table.population[:, 0].tolist()
    [0.5, 1.0]
    """
    trajectories = list(trajectories)
    if not trajectories:
        raise InputError("trajectories must be a non-empty sequence")
    if temperatures is None:
        temperatures = [None] * len(trajectories)
    elif len(temperatures) != len(trajectories):
        raise InputError(f"temperatures must have one entry per trajectory "
                         f"({len(trajectories)}), got {len(temperatures)}")
    rngs = np.random.default_rng(seed).spawn(len(trajectories))
    tables = [populations(data, states, cv, n_bootstrap, rng, t)
              for data, rng, t in zip(trajectories, rngs, temperatures, strict=True)]
    if any(table.temperature is None for table in tables):
        raise InputError("temperatures are required for unweighted trajectories")
    return PopulationProfile(np.array([t.temperature for t in tables], dtype=np.float64),
                             tables[0].states, np.stack([t.population for t in tables]),
                             np.stack([t.population_err for t in tables]))


__all__ = [
    "FreeEnergySurface", "PopulationProfile", "Populations", "TemperatureProfile",
    "compare_with_mbar", "mbar_reference", "populations", "populations_vs_temperature",
    "profile_from_trajectories", "surface", "temperature_profile",
]
