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
    return checks.integer(n_bootstrap, "n_bootstrap", minimum=2)


def _std(replicates: np.ndarray) -> np.ndarray:
    """Standard deviation over axis 0 using the finite replicates (NaN if fewer than 2)."""
    finite = np.isfinite(replicates)
    count = finite.sum(axis=0)
    filled = np.where(finite, replicates, 0.0)
    mean = filled.sum(axis=0) / np.maximum(count, 1)
    var = (np.where(finite, replicates - mean, 0.0) ** 2).sum(axis=0) / np.maximum(count - 1, 1)
    return np.where(count >= 2, np.sqrt(var), np.nan)


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
