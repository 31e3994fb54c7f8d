"""Time-series statistics shared by the MD summary, MBAR, the coverage check and the benchmarks.

The statistical inefficiency ``g`` of a correlated series is the number of consecutive
samples that are worth one independent sample (pymbar's estimator, in samples);
``n / g`` is the effective sample size. An angle series is circular, so its ``g`` is that
of the slower of cos and sin (no jump at ±π).

Example
-------
>>> import numpy as np
>>> from openmm_trade.timeseries import statistical_inefficiency
>>> statistical_inefficiency(np.ones(10))         # constant: nothing to correlate
1.0
>>> series = np.repeat(np.random.default_rng(0).normal(size=200), 10)
>>> bool(statistical_inefficiency(series) > 5)    # each value repeated 10 times
True
"""

from __future__ import annotations

import numpy as np

__all__ = ["circular_statistical_inefficiency", "statistical_inefficiency"]


def statistical_inefficiency(series) -> float:
    """pymbar's statistical inefficiency of a 1-D series, in samples (>= 1).

    A constant series, or one of fewer than 3 samples, has ``g = 1``; so has a series on
    which pymbar's estimator gives up (its ``ParameterError``).

    Parameters
    ----------
    series : array_like
        ``(n,)`` values in time order.

    Returns
    -------
    float

    Examples
    --------
    >>> statistical_inefficiency([1.0, 2.0])
    1.0
    """
    from pymbar import timeseries
    from pymbar.utils import ParameterError

    series = np.asarray(series, dtype=np.float64)
    if series.size < 3 or np.ptp(series) == 0:
        return 1.0
    try:
        return float(timeseries.statistical_inefficiency(series))
    except ParameterError:
        return 1.0


def circular_statistical_inefficiency(angles) -> float:
    """Statistical inefficiency of an angle series (radians): the larger of those of cos
    and sin.

    Examples
    --------
    >>> import numpy as np
    >>> circular_statistical_inefficiency(np.full(5, np.pi))
    1.0
    """
    angles = np.asarray(angles, dtype=np.float64)
    return max(statistical_inefficiency(np.cos(angles)), statistical_inefficiency(np.sin(angles)))
