"""Free-energy surfaces F(cv) along one or two collective variables."""


from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import cv as cvs
from ..errors import InputError
from ..importance import scaled_weights
from ..units import KB
from .bootstrap import _bootstrap_counts, _check_bootstrap, _std, _weighted_data


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
    log_weights, temperature, lineages = _weighted_data(data, temperature)
    if temperature is None:
        raise InputError("temperature is required (in K) for unweighted data")
    n_bootstrap = _check_bootstrap(n_bootstrap)
    values = cvs.evaluate(cv, data)
    k = values.shape[1]
    if k not in (1, 2):
        raise InputError(f"cv must have 1 or 2 dimensions for a surface, got {k}")
    w, _ = scaled_weights(log_weights)
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
                                 for counts in _bootstrap_counts(rng, lineages, n_bootstrap)])
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
