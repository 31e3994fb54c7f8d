"""Weighted samples and their bootstrap: resampling multiplicities, standard errors.

The weight arithmetic itself lives in :mod:`openmm_trade.importance`.
"""


from __future__ import annotations

import math
from collections.abc import Iterator

import mdtraj
import numpy as np

from .. import checks
from ..errors import InputError
from ..sampling import WeightedTrajectory
from ..units import check_temperature


def _bootstrap_counts(rng: np.random.Generator, lineages: np.ndarray, n_bootstrap: int,
                      max_elements: int = 2_000_000) -> Iterator[np.ndarray]:
    """Multiplicities ``(b, n)`` of the samples in bootstrap resamples, in chunks.

    Whole lineages (:attr:`WeightedTrajectory.lineages`) are drawn with replacement and
    each sample counts as often as its lineage was drawn, so samples that descend from one
    draw (SMC resampling) are kept together: a block bootstrap over the independent draws.
    With every sample its own lineage this is the ordinary bootstrap (the same draws).

    >>> rng = np.random.default_rng(0)
    >>> counts = next(_bootstrap_counts(rng, np.array([7, 7, 3]), 4))
    >>> counts.shape, bool(np.all(counts[:, 0] == counts[:, 1]))  # lineage 7 stays together
    ((4, 3), True)
    """
    _, sample_lineage = np.unique(lineages, return_inverse=True)
    k = int(sample_lineage.max()) + 1 if len(sample_lineage) else 0
    per_chunk = max(1, max_elements // max(len(sample_lineage), 1))
    probabilities = np.full(k, 1.0 / max(k, 1))
    identity = np.array_equal(sample_lineage, np.arange(len(sample_lineage)))
    done = 0
    while done < n_bootstrap:
        b = min(per_chunk, n_bootstrap - done)
        counts = rng.multinomial(k, probabilities, size=b).astype(np.float64)
        yield counts if identity else counts[:, sample_lineage]
        done += b


def _check_bootstrap(n_bootstrap) -> int:
    return checks.integer(n_bootstrap, "n_bootstrap", minimum=2)


def _std(replicates: np.ndarray) -> np.ndarray:
    """Standard deviation over axis 0 using the finite replicates (NaN if fewer than 2)."""
    finite = np.isfinite(replicates)
    count = finite.sum(axis=0)
    filled = np.where(finite, replicates, 0.0)
    mean = filled.sum(axis=0) / np.maximum(count, 1)
    var = (np.where(finite, replicates - mean, 0.0) ** 2).sum(axis=0) / np.maximum(count - 1, 1)
    return np.where(count >= 2, np.sqrt(var), np.nan)


def _weighted_data(data, temperature) -> tuple[np.ndarray, float | None, np.ndarray]:
    """Log-weights, temperature and lineages (for the bootstrap) of a WeightedTrajectory,
    mdtraj.Trajectory or array (unweighted data: each sample its own lineage)."""
    if isinstance(data, WeightedTrajectory):
        if temperature is not None and not math.isclose(temperature, data.temperature):
            raise InputError(f"temperature {temperature} K differs from the trajectory's "
                             f"{data.temperature} K")
        return data.log_weights, data.temperature, data.lineages
    if isinstance(data, mdtraj.Trajectory):
        n = data.n_frames
    elif isinstance(data, np.ndarray):
        n = data.shape[0]
    else:
        raise InputError("data must be a WeightedTrajectory, an mdtraj.Trajectory or an array "
                         f"of samples, got {type(data).__name__}")
    t = None if temperature is None else check_temperature(temperature)
    return np.zeros(n), t, np.arange(n)
