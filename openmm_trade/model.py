"""The model protocol: what training, sampling and refinement ask of a conditional density.

Training, sampling, free energies and refinement never import the flow; they take any
object that follows :class:`BoltzmannModel`: ``sample(n, temperature, generator=None)``
and ``log_prob(x, temperature)``. :class:`~openmm_trade.flow.ConditionalFlow` and
:class:`~openmm_trade.flow.TemperatureFlow` follow it; so can a hand-written model.

Optional attributes that the package reads when present: ``temperature_range`` (K; the
training range, required by :func:`openmm_trade.train`), ``reference_temperature``,
``event_shape`` (shape of one sample), ``device``, ``dtype`` and ``system`` (a
:class:`~openmm_trade.MolecularSystem`, for mdtraj output).

Example
-------
>>> import math, torch
>>> from openmm_trade.units import KB
>>> class Gaussian:
...     '''N(0, k_B T / k) in one dimension: the exact Boltzmann density of a spring.'''
...     event_shape, temperature_range = (1,), (300.0, 600.0)
...     def _sigma(self, temperature):
...         return math.sqrt(KB * float(temperature) / 100.0)
...     def log_prob(self, x, temperature):
...         s = self._sigma(temperature)
...         return -0.5 * (x[:, 0] / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))
...     def sample(self, n, temperature, generator=None):
...         x = torch.randn(n, 1, generator=generator) * self._sigma(temperature)
...         return x, self.log_prob(x, temperature)
>>> isinstance(Gaussian(), BoltzmannModel)
True
>>> check_model(Gaussian()).event_shape
(1,)
"""

from __future__ import annotations

import inspect
from typing import Protocol, runtime_checkable

import torch

from .errors import InputError

#: what :func:`check_model` asks for by default
REQUIRED = ("sample", "log_prob")


@runtime_checkable
class LogDensityModel(Protocol):
    """A temperature-conditioned log-density: ``log_prob(x, temperature) -> (B,)``."""

    def log_prob(self, x: torch.Tensor, temperature) -> torch.Tensor:
        """Log-density ``(B,)`` of ``x`` ``(B, *event_shape)`` at ``temperature`` (K: a
        float or a ``(B,)`` tensor), differentiable in the parameters and in a tensor
        ``temperature``."""
        ...


@runtime_checkable
class BoltzmannModel(LogDensityModel, Protocol):
    """A conditional density ``p_θ(x | T)`` that can be sampled and evaluated.

    ``sample(n, temperature, generator=None) -> (x, log_p)`` returns ``x``
    ``(n, *event_shape)`` and ``log_p`` ``(n,)``; with a ``torch.Generator`` the draw is
    reproducible, without one the model uses its own source of randomness.
    ``isinstance(obj, BoltzmannModel)`` checks that both methods exist; :func:`check_model`
    also checks that ``sample`` takes ``generator``.
    """

    def sample(self, n: int, temperature, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples at ``temperature`` and their log-densities."""
        ...


def _takes_generator(method) -> bool:
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): trust it
        return True
    return any(p.name == "generator" or p.kind is p.VAR_KEYWORD for p in parameters)


def check_model(model, *requires: str, name: str = "model"):
    """Return ``model`` if it has what the caller needs, else raise one clear InputError.

    Parameters
    ----------
    model
        The object to check.
    *requires : str
        Names it must have (default ``"sample"`` and ``"log_prob"``). ``sample`` and
        ``log_prob`` must be callable and ``sample`` must take ``generator=``; any other
        name (``"temperature_range"``, ...) must be an attribute.
    name : str
        The argument's name in the message.

    Raises
    ------
    InputError
        Naming every missing piece and the type that was given.

    Examples
    --------
    >>> check_model(object())
    Traceback (most recent call last):
    ...
    openmm_trade.errors.InputError: model must follow the model protocol \
(openmm_trade.model.BoltzmannModel: sample(n, temperature, generator=None) -> (x, log_p), \
log_prob(x, temperature) -> log_p); got object, which lacks sample, log_prob
    """
    missing = []
    for attribute in requires or REQUIRED:
        value = getattr(model, attribute, None)
        if attribute in REQUIRED and not callable(value):
            missing.append(attribute)
        elif attribute not in REQUIRED and not hasattr(model, attribute):
            missing.append(attribute)
        elif attribute == "sample" and not _takes_generator(value):
            missing.append("a generator= keyword in sample")
    if missing:
        raise InputError(
            f"{name} must follow the model protocol (openmm_trade.model.BoltzmannModel: "
            "sample(n, temperature, generator=None) -> (x, log_p), log_prob(x, temperature) "
            f"-> log_p); got {type(model).__name__}, which lacks {', '.join(missing)}")
    return model


__all__ = ["BoltzmannModel", "LogDensityModel", "check_model"]
