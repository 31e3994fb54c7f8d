"""Exception types raised by openmm_trade.

Every error subclasses a built-in (``ValueError``, ``RuntimeError``) so that callers
can catch either the specific type or the usual Python one.

Example
-------
>>> from openmm_trade.errors import InputError
>>> try:
...     raise InputError("temperature must be > 0 K, got -3.0")
... except ValueError as err:
...     print(err)
temperature must be > 0 K, got -3.0
"""

from __future__ import annotations


class OpenMMTradeError(Exception):
    """Base class of all openmm_trade errors."""


class InputError(OpenMMTradeError, ValueError):
    """An argument has the wrong value, shape or type (names the argument)."""


class UnsupportedSystemError(OpenMMTradeError, ValueError):
    """The OpenMM system cannot be modelled (periodic box, virtual sites, ...)."""


class WorkerError(OpenMMTradeError, RuntimeError):
    """An energy worker process died or could not be started."""


class CheckpointError(OpenMMTradeError, RuntimeError):
    """A checkpoint or saved model cannot be used (corrupt, wrong system, ...)."""


class ConfigError(OpenMMTradeError, ValueError):
    """A run configuration is invalid; the message lists every problem found."""
