"""Physical constants, unit conventions and checks on temperatures.

Units throughout openmm_trade: nm, kJ/mol, K, ps. ``beta = 1 / (k_B T)`` in mol/kJ.

Example
-------
>>> from openmm_trade.units import beta_from_temperature, KB
>>> round(beta_from_temperature(300.0), 6)
0.400908
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import InputError

#: Boltzmann constant in kJ/(mol K) (CODATA 2018 times N_A), as in DESIGN.md.
KB = 0.008314462618


def beta_from_temperature(temperature):
    """Return β = 1/(k_B T) in mol/kJ for a float, array or tensor temperature in K."""
    return 1.0 / (KB * temperature)


def temperature_from_beta(beta):
    """Return T = 1/(k_B β) in K for a float, array or tensor β in mol/kJ."""
    return 1.0 / (KB * beta)


def temperature_label(temperature: float) -> str:
    """Label of a temperature for file names and table columns: ``450.0 -> '450K'``,
    ``312.5 -> '312.5K'``."""
    return f"{temperature:g}K"


def check_temperature(temperature, name: str = "temperature", batch_size: int | None = None):
    """Validate a temperature in K: a positive finite float, or a 1-D array/tensor.

    Returns the input unchanged (floats converted to ``float``). With ``batch_size`` a
    tensor/array must have shape ``(batch_size,)``.

    >>> check_temperature(300)
    300.0
    >>> check_temperature(-1.0)
    Traceback (most recent call last):
    ...
    openmm_trade.errors.InputError: temperature must be a finite temperature > 0 K, got -1.0
    """
    if isinstance(temperature, torch.Tensor):
        values = temperature.detach().cpu().numpy()
    elif isinstance(temperature, np.ndarray):
        values = temperature
    elif isinstance(temperature, (int, float, np.floating, np.integer)) and not isinstance(
        temperature, bool
    ):
        value = float(temperature)
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"{name} must be a finite temperature > 0 K, got {value!r}")
        return value
    else:
        raise InputError(
            f"{name} must be a float or a 1-D tensor/array of temperatures in K, "
            f"got {type(temperature).__name__}"
        )
    if values.ndim > 1 or (batch_size is not None and values.ndim == 1
                           and values.shape[0] != batch_size):
        expected = f"({batch_size},)" if batch_size is not None else "a scalar or 1-D"
        raise InputError(f"{name} must have shape {expected}, got {tuple(values.shape)}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        bad = values[~(np.isfinite(values) & (values > 0))].ravel()[:3]
        raise InputError(f"{name} must be finite temperatures > 0 K, got values such as {bad}")
    return temperature
