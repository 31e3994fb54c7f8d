"""Exception types raised by openmm_trade.

Every error subclasses a built-in (``ValueError``, ``RuntimeError``) so that callers
can catch either the specific type or the usual Python one. Everything caused by a bad
argument or a bad file (a corrupt model, a periodic system, an invalid configuration) is
an :class:`InputError`; the command line reports those with exit code 2.

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


class UnsupportedSystemError(InputError):
    """The OpenMM system cannot be modelled (periodic box, virtual sites, ...)."""


class WorkerError(OpenMMTradeError, RuntimeError):
    """An energy worker process died or could not be started."""


class CheckpointError(InputError, RuntimeError):
    """A checkpoint or saved model cannot be used (corrupt, wrong system, ...).

    An :class:`InputError` (a bad file is a bad input); also a ``RuntimeError`` for callers
    written against older versions.
    """


class ConfigError(InputError):
    """A run configuration is invalid; the message lists every problem found."""


def one_line(error: BaseException, limit: int = 240) -> str:
    """``error``'s message on one line: whitespace collapsed, OpenMM's FAQ links dropped.

    For messages that quote a third-party error (OpenMM, torch, HDF5) inside ours.

    >>> one_line(ValueError("No template found.  For more information, see https://x\\n"))
    'No template found.'
    """
    text = " ".join(str(error).split()) or type(error).__name__
    text = text.split(" For more information, see")[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"
