"""Argument checks shared by the public functions: each returns the cleaned value or raises
:class:`~openmm_trade.errors.InputError` naming the argument, what was expected and what
was found.

>>> integer(3, "n_frames")
3
>>> number(0.0, "friction_per_ps", allow_zero=True)
0.0
>>> temperatures([300, 450], "temperatures", increasing=True).tolist()
[300.0, 450.0]
>>> integer(0, "n_frames")
Traceback (most recent call last):
...
openmm_trade.errors.InputError: n_frames must be an integer >= 1, got 0
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import InputError
from .units import check_temperature

PathLike = str | os.PathLike


def integer(value, name: str, minimum: int = 1) -> int:
    """An ``int`` (numpy integers too, not ``bool``) that is at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def seed(value, name: str = "seed") -> int:
    """A random seed: an integer >= 0."""
    return integer(value, name, minimum=0)


def number(value, name: str, allow_zero: bool = False) -> float:
    """A finite real number > 0 (>= 0 with ``allow_zero``); ``bool`` and strings refused."""
    if isinstance(value, (bool, str, bytes)):
        raise InputError(f"{name} must be a number, got {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(result) or result < 0 or (result == 0 and not allow_zero):
        relation = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be a finite number {relation}, got {value!r}")
    return result


def one_of(value, name: str, options: Sequence[str]) -> str:
    """One of the ``options``."""
    if value not in options:
        raise InputError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


def interval(bounds, name: str) -> tuple[float, float]:
    """A pair ``(low, high)`` of finite numbers with ``low < high``."""
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a pair (low, high), got {bounds!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise InputError(f"{name} must be finite with low < high, got {bounds!r}")
    return low, high


def temperatures(values, name: str = "temperatures", minimum_count: int = 1,
                 increasing: bool = False) -> np.ndarray:
    """A 1-D float64 array of temperatures in K (each finite and > 0), at least
    ``minimum_count`` of them, strictly increasing if asked."""
    try:
        array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a sequence of temperatures in K, got {values!r}") \
            from None
    if array.ndim != 1 or array.size < minimum_count:
        raise InputError(f"{name} must list >= {minimum_count} temperatures in K, got {values!r}")
    check_temperature(array, name=name)
    if increasing and np.any(np.diff(array) <= 0):
        raise InputError(f"{name} must be strictly increasing, got {array.tolist()}")
    return array


def within(values, name: str, bounds: tuple[float, float], what: str = "the model's range"):
    """Each temperature inside ``bounds`` (K), e.g. a model's range."""
    for t in np.atleast_1d(values):
        if not bounds[0] <= t <= bounds[1]:
            raise InputError(f"{name}: expected temperatures within {what} "
                             f"[{bounds[0]:g}, {bounds[1]:g}] K, found {t:g} K")


def writable_file(path: PathLike, name: str) -> Path:
    """A file path that can be created or replaced (its folder is created if needed)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{name} must be a file path, got the directory {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{name}: cannot create the folder {path.parent}: {err}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{name}: {path} is not writable")
    return path
