"""Energies: the common ``Energy`` interface and ``OpenMMEnergy``, the OpenMM bridge.

An ``Energy`` maps a batch of samples ``x`` of shape ``(B, *event_shape)`` to potential
energies ``U(x)`` of shape ``(B,)`` in kJ/mol (float64), differentiable with autograd.
A failed or non-finite evaluation is ``+inf`` and is counted in ``n_failed``.

Example
-------
>>> import torch
>>> from openmm_trade.toys import HarmonicOscillator
>>> energy = HarmonicOscillator(spring_constant=100.0)
>>> energy(torch.zeros(3, 1)).tolist()
[0.0, 0.0, 0.0]
"""

from __future__ import annotations

import abc

import torch

from .errors import InputError
from .units import KB, check_temperature


class Energy(abc.ABC):
    """Base class of batched potential energies ``U(x)`` in kJ/mol.

    Subclasses set ``event_shape`` (shape of one sample, e.g. ``(N, 3)``) and implement
    :meth:`_energy` on a validated tensor. Counters: ``n_evaluations`` (samples
    evaluated) and ``n_failed`` (samples whose energy was not finite, returned as +inf).
    """

    event_shape: tuple[int, ...] = ()

    def __init__(self) -> None:
        self.n_evaluations = 0
        self.n_failed = 0

    @abc.abstractmethod
    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        """Energies ``(B,)`` float64 for a validated ``x`` of shape ``(B, *event_shape)``."""

    def check_input(self, x, name: str = "x") -> torch.Tensor:
        """Validate a batch: a tensor of shape ``(B, *event_shape)``; returns it."""
        if not isinstance(x, torch.Tensor):
            raise InputError(
                f"{name} must be a torch.Tensor of shape (B, {', '.join(map(str, self.event_shape))})"
                f", got {type(x).__name__}"
            )
        if x.dim() != 1 + len(self.event_shape) or tuple(x.shape[1:]) != tuple(self.event_shape):
            expected = "(B, " + ", ".join(map(str, self.event_shape)) + ")"
            raise InputError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Potential energies ``(B,)`` in kJ/mol, float64; ``+inf`` where evaluation failed."""
        x = self.check_input(x)
        energies = self._energy(x)
        bad = ~torch.isfinite(energies.detach())
        if bad.any():
            energies = torch.where(bad, torch.full_like(energies, float("inf")), energies)
        self.n_evaluations += x.shape[0]
        self.n_failed += int(bad.sum())
        return energies

    def reduced(self, x: torch.Tensor, temperature) -> torch.Tensor:
        """Reduced energies ``U / (k_B T)``; ``temperature`` a float or ``(B,)`` tensor in K."""
        x = self.check_input(x)
        check_temperature(temperature, batch_size=x.shape[0])
        if isinstance(temperature, torch.Tensor):
            temperature = temperature.to(torch.float64)
        return self(x) / (KB * temperature)
