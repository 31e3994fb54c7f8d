"""Importance-weight arithmetic on log-weights: normalised weights, ESS, ``ln mean w``.

The one home of the arithmetic that sampling, refinement, metrics and free energies share.
Log-weights are float64 arrays; ``-inf`` (a failed sample, or one outside the model's
support) counts as weight zero, and so does any other non-finite entry. Every function
shifts by the largest finite log-weight before exponentiating, so no weight overflows.

Example
-------
>>> import numpy as np
>>> log_w = np.array([0.0, 0.0, np.log(2.0), -np.inf])
>>> normalized_weights(log_w).tolist()
[0.25, 0.25, 0.5, 0.0]
>>> round(effective_sample_size(log_w), 6), round(log_mean_exp(log_w), 6)
(0.666667, 0.0)
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError


def scaled_weights(log_weights) -> tuple[np.ndarray, float]:
    """Weights ``exp(log w - m)`` (zero where ``log w`` is not finite) and the shift ``m``.

    ``m`` is the largest finite log-weight (0 if there is none), so the largest weight is 1.

    Examples
    --------
    >>> w, shift = scaled_weights([1.0, 3.0, -np.inf])
    >>> w.round(4).tolist(), shift
    ([0.1353, 1.0, 0.0], 3.0)
    """
    log_weights = np.asarray(log_weights, dtype=np.float64)
    finite = np.isfinite(log_weights)
    if not finite.any():
        return np.zeros_like(log_weights), 0.0
    shift = float(log_weights[finite].max())
    w = np.exp(log_weights - shift)
    w[~finite] = 0.0
    return w, shift


def log_sum_exp(log_weights) -> float:
    """``ln Σ w`` from log-weights (``-inf`` if no weight is finite).

    >>> round(log_sum_exp([0.0, np.log(3.0)]), 6)
    1.386294
    """
    w, shift = scaled_weights(log_weights)
    total = w.sum()
    return float(shift + np.log(total)) if total > 0 else -math.inf


def log_mean_exp(log_weights) -> float:
    """``ln mean(w)`` over all entries, zeros included (``-inf`` if no weight is finite).

    The importance-sampling estimate of ``ln Z`` when ``log w = -βU - log p``.

    >>> log_mean_exp([0.0, -np.inf])
    -0.6931471805599453
    """
    log_weights = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    return log_sum_exp(log_weights) - math.log(log_weights.size)


def normalized_weights(log_weights) -> np.ndarray:
    """Weights ``exp(log w)`` normalised to sum 1 (all zero if no weight is finite).

    >>> normalized_weights([0.0, np.log(3.0)]).round(3).tolist()
    [0.25, 0.75]
    """
    w, _ = scaled_weights(log_weights)
    total = w.sum()
    return w / total if total > 0 else w


def effective_sample_size(log_weights, fraction: bool = True) -> float:
    """Kish effective sample size ``(Σw)² / Σw²`` of importance weights given as logs.

    Parameters
    ----------
    log_weights : array-like, shape (n,)
        Unnormalised log-weights; ``-inf`` (failed samples) counts as weight zero.
    fraction : bool
        Return ESS / n (default, the convention of openmm_trade) instead of the count.

    Returns
    -------
    float
        In [1/n, 1] as a fraction (0 if every weight is zero).

    Raises
    ------
    InputError
        Empty input, or a NaN or ``+inf`` log-weight.

    Examples
    --------
    >>> effective_sample_size([0.0, 0.0, -np.inf, -np.inf])
    0.5
    >>> effective_sample_size([0.0, 0.0, -np.inf, -np.inf], fraction=False)
    2.0
    """
    log_weights = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if log_weights.size == 0:
        raise InputError("log_weights must hold at least one value, got an empty array")
    if np.isnan(log_weights).any() or np.isposinf(log_weights).any():
        raise InputError("log_weights must be finite or -inf, got NaN or +inf")
    w, _ = scaled_weights(log_weights)
    if not w.any():
        return 0.0
    count = float(w.sum() ** 2 / (w ** 2).sum())
    return count / log_weights.size if fraction else count


__all__ = ["effective_sample_size", "log_mean_exp", "log_sum_exp", "normalized_weights",
           "scaled_weights"]
