"""MBAR free energies across temperature from samples at several temperatures.

This is the reference against which the flow's free energies are checked: pymbar's
MBAR on the energies of parallel-tempering (or any multi-temperature) samples. With
states that differ only in temperature, the reduced potential of sample ``n`` in state
``k`` is ``u_kn = β_k U(x_n)``, so the potential energies alone are enough.

Conventions (DESIGN.md §4): ``f(β) = -ln Z(β)`` in units of kT (reduced, no unit);
``Δf_k = f(β_k) - f(β_0)`` relative to the *first* temperature; energies in kJ/mol.

Example
-------
>>> import numpy as np
>>> from openmm_trade.mbar import mbar_from_energies
>>> from openmm_trade.units import KB
>>> rng = np.random.default_rng(0)
>>> temperatures = [300.0, 450.0]
>>> # U = k x^2 / 2 of a 1-D harmonic oscillator sampled exactly: U ~ Gamma(1/2, kT)
>>> energies = [rng.gamma(0.5, KB * t, size=2000) for t in temperatures]
>>> table = mbar_from_energies(temperatures, energies)
>>> exact = 0.5 * np.log(300.0 / 450.0)   # Δf = (d/2) ln(β_1/β_0), d = 1
>>> bool(abs(table.delta_f[1] - exact) < 4 * table.delta_f_error[1])
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .timeseries import statistical_inefficiency
from .units import KB, check_temperature

__all__ = ["MBARResult", "mbar_from_energies", "mbar_reference"]


@dataclass(frozen=True)
class MBARResult:
    """Per-temperature MBAR estimates (one row per temperature).

    Attributes
    ----------
    temperatures : numpy.ndarray
        ``(K,)`` temperatures in K, in the order given.
    delta_f, delta_f_error : numpy.ndarray
        ``(K,)`` reduced free energy ``f(β_k) - f(β_0)`` (kT, ``f = -ln Z``) and its
        one-sigma asymptotic uncertainty (``delta_f[0] == 0``).
    mean_energy, mean_energy_error : numpy.ndarray
        ``(K,)`` ⟨U⟩ at each temperature in kJ/mol and its one-sigma uncertainty.
    n_samples : numpy.ndarray
        ``(K,)`` samples per temperature that entered MBAR (after discarding and
        subsampling).
    discarded : numpy.ndarray
        ``(K,)`` samples discarded at the start of each series as equilibration.
    statistical_inefficiency : numpy.ndarray
        ``(K,)`` statistical inefficiency of U in each kept series (1 if not subsampled;
        with ``replica_exchange``, that of the summed reduced potential, the same for all).
    """

    temperatures: np.ndarray
    delta_f: np.ndarray
    delta_f_error: np.ndarray
    mean_energy: np.ndarray
    mean_energy_error: np.ndarray
    n_samples: np.ndarray
    discarded: np.ndarray
    statistical_inefficiency: np.ndarray

    def as_dict(self) -> dict[str, list]:
        """The table as plain lists (JSON-ready), one entry per column."""
        return {name: np.asarray(getattr(self, name)).tolist()
                for name in self.__dataclass_fields__}

    def __str__(self) -> str:
        lines = [f"{'T (K)':>9} {'Δf (kT)':>12} {'±':>8} {'<U> kJ/mol':>12} {'±':>8} {'N':>7}"]
        for row in zip(self.temperatures, self.delta_f, self.delta_f_error,
                       self.mean_energy, self.mean_energy_error, self.n_samples,
                       strict=True):
            t, f, df, u, du, n = row
            lines.append(f"{t:9.2f} {f:12.4f} {df:8.4f} {u:12.3f} {du:8.3f} {int(n):7d}")
        return "\n".join(lines)


def _check_energies(temperatures, energies_per_state) -> tuple[np.ndarray, list[np.ndarray]]:
    temps = np.asarray(check_temperature(np.asarray(temperatures, dtype=np.float64),
                                         name="temperatures"), dtype=np.float64)
    if temps.ndim != 1 or temps.size < 2:
        raise InputError(f"temperatures must be a 1-D sequence of >= 2 temperatures, got {temps!r}")
    if len(energies_per_state) != temps.size:
        raise InputError(
            f"energies_per_state must hold one array per temperature ({temps.size}), "
            f"got {len(energies_per_state)}"
        )
    arrays = []
    for k, energies in enumerate(energies_per_state):
        array = np.asarray(energies, dtype=np.float64)
        if array.ndim != 1 or array.size < 2:
            raise InputError(
                f"energies_per_state[{k}] must be a 1-D array of >= 2 energies in kJ/mol, "
                f"got shape {array.shape}"
            )
        if not np.all(np.isfinite(array)):
            raise InputError(f"energies_per_state[{k}] contains non-finite energies")
        arrays.append(array)
    return temps, arrays


def _prepare(series: np.ndarray, discard, subsample: bool) -> tuple[np.ndarray, int, float]:
    """Indices of a series to keep: equilibration (an int or ``"auto"``) discarded and,
    optionally, decorrelated; with the number discarded and the statistical inefficiency."""
    from pymbar import timeseries

    if discard == "auto":
        start = int(timeseries.detect_equilibration(series)[0]) if series.size > 2 else 0
    elif isinstance(discard, (int, np.integer)) and not isinstance(discard, bool) and discard >= 0:
        start = int(discard)
    else:
        raise InputError(f"discard must be an int >= 0 or 'auto', got {discard!r}")
    indices = np.arange(start, series.size)
    if indices.size < 2:
        raise InputError(
            f"discard={discard!r} leaves {indices.size} samples of a series of "
            f"{series.size}; need at least 2"
        )
    g = 1.0
    if subsample:
        g = statistical_inefficiency(series[start:])
        picked = timeseries.subsample_correlated_data(series[start:], g=g)
        indices = indices[np.asarray(picked, dtype=int)]
    return indices, start, g


def _prepare_jointly(temps: np.ndarray, arrays: list[np.ndarray], discard, subsample: bool):
    """Discard and decorrelate replica-exchange series together, as :func:`_prepare` does
    one series, but judged on ``u_n(t) = Σ_k β_k U_k(t)``, the reduced potential summed
    over all replicas (the series openmmtools' analysis decorrelates).

    Per-temperature series of a replica-exchange run look less correlated than they
    are: a swap replaces a configuration by its neighbour's, which stays correlated with
    the configuration the neighbour temperature held before, and MBAR, pooling all
    temperatures, would count those copies as independent samples. ``u_n`` is a sum over
    replicas, so swaps do not decorrelate it, and one set of indices keeps the time
    points of all temperatures together.
    """
    if len({a.size for a in arrays}) != 1:
        raise InputError(
            "energies_per_state must be series of one length (one sample per temperature "
            f"and iteration) to be decorrelated jointly, got lengths {[a.size for a in arrays]}"
        )
    u_n = (1.0 / (KB * temps)) @ np.stack(arrays)
    indices, start, g = _prepare(u_n, discard, subsample)
    return [(indices, start, g)] * len(arrays)


def mbar_from_energies(
    temperatures: Sequence[float],
    energies_per_state: Sequence[np.ndarray],
    discard: int | str = 0,
    subsample: bool = False,
    replica_exchange: bool = False,
) -> MBARResult:
    """MBAR free energies and ⟨U⟩ from potential energies sampled at each temperature.

    Parameters
    ----------
    temperatures : sequence of float
        ``K >= 2`` temperatures in K; ``Δf`` is relative to ``temperatures[0]``.
    energies_per_state : sequence of array-like
        ``energies_per_state[k]`` are the potential energies (kJ/mol) of samples drawn
        at ``temperatures[k]``, in sampling order.
    discard : int or "auto", default 0
        Samples to drop at the start of every series, or ``"auto"`` for pymbar's
        ``detect_equilibration`` applied to each series separately.
    subsample : bool, default False
        Keep only every ``g``-th sample of each series, ``g`` its statistical
        inefficiency, so that the MBAR uncertainties (which assume independent samples)
        are honest for correlated MD data.
    replica_exchange : bool, default False
        The series come from one replica-exchange run (sample ``n`` of every series at
        iteration ``n``): discard and subsample all of them at the same iterations,
        judged on the reduced potential summed over the replicas,
        ``u_n = Σ_k U_k(n) / (k_B T_k)``. Per-temperature statistical inefficiencies
        underestimate the correlation there, since swaps hand correlated configurations
        from one temperature to the next.

    Returns
    -------
    MBARResult

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> energies = [rng.gamma(1.5, KB * t, size=1000) for t in (300.0, 400.0)]
    >>> table = mbar_from_energies([300.0, 400.0], energies)
    >>> float(table.delta_f[0]), bool(table.delta_f_error[1] > 0)
    (0.0, True)
    """
    import pymbar

    temps, arrays = _check_energies(temperatures, energies_per_state)
    if replica_exchange:
        prepared = _prepare_jointly(temps, arrays, discard, subsample)
    else:
        prepared = [_prepare(series, discard, subsample) for series in arrays]
    kept = [series[p[0]] for series, p in zip(arrays, prepared, strict=True)]
    n_k = np.array([k.size for k in kept], dtype=np.int64)
    energies = np.concatenate(kept)
    beta = 1.0 / (KB * temps)
    u_kn = beta[:, None] * energies[None, :]
    mbar = pymbar.MBAR(u_kn, n_k)
    free = mbar.compute_free_energy_differences()
    means = mbar.compute_expectations(energies)
    return MBARResult(
        temperatures=temps,
        delta_f=np.asarray(free["Delta_f"][0], dtype=np.float64),
        delta_f_error=np.asarray(free["dDelta_f"][0], dtype=np.float64),
        mean_energy=np.asarray(means["mu"], dtype=np.float64),
        mean_energy_error=np.asarray(means["sigma"], dtype=np.float64),
        n_samples=n_k,
        discarded=np.array([p[1] for p in prepared], dtype=np.int64),
        statistical_inefficiency=np.array([p[2] for p in prepared], dtype=np.float64),
    )


def mbar_reference(result, discard: int | str = "auto", subsample: bool = True) -> MBARResult:
    """MBAR on a parallel-tempering run: reference ``Δf(T)`` and ⟨U⟩(T).

    Parameters
    ----------
    result : openmm_trade.md.ParallelTemperingResult
        Output of :func:`openmm_trade.md.parallel_tempering` (anything with
        ``temperatures`` and ``energies``, one energy series per temperature, all
        of one length).
    discard : int or "auto", default "auto"
        Equilibration to drop from each temperature's series (see
        :func:`mbar_from_energies`).
    subsample : bool, default True
        Decorrelate the series before MBAR.

    Equilibration and decorrelation are judged jointly for all temperatures
    (``replica_exchange=True`` of :func:`mbar_from_energies`).

    Returns
    -------
    MBARResult

    Examples
    --------
    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> pt = ot.md.parallel_tempering(msys, [300, 400], n_iterations=20,
    ...                               steps_per_iteration=50, quiet=True)  # doctest: +SKIP
    >>> print(mbar_reference(pt))                                         # doctest: +SKIP
    """
    for name in ("temperatures", "energies"):
        if not hasattr(result, name):
            raise InputError(
                "result must be a ParallelTemperingResult (with temperatures and energies), "
                f"got {type(result).__name__} without {name!r}"
            )
    return mbar_from_energies(result.temperatures, result.energies, discard=discard,
                              subsample=subsample, replica_exchange=True)
