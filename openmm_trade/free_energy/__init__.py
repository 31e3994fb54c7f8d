"""Free energies from weighted samples: Δf(T), ⟨U⟩(T), C_v(T), FES along CVs, populations.

Conventions (DESIGN.md §4): ``f(β) = -ln Z(β)`` in kT; with samples ``x_i ~ p_θ(·|T)``
and ``log w_i = -β U(x_i) - log p_θ(x_i|T)``::

    ln Z(β)  ≈ ln( (1/n) Σ w_i )                  (failed samples count, with w = 0)
    Δf(T)    = f(β) - f(β0)                        (kT; T0 the reference temperature)
    ⟨U⟩      = Σ w̄_i U_i                           (self-normalised, kJ/mol)
    C_v      = k_B β² (⟨U²⟩ - ⟨U⟩²)                (kJ/mol/K)

Every estimate carries a bootstrap standard error (resampling the samples of each
temperature independently with replacement). Δf is cross-checked by thermodynamic
integration, ``f(β) - f(β0) = ∫_{β0}^{β} ⟨U⟩_β' dβ'`` (trapezoid rule over the given
temperatures), and can be compared with MBAR (:func:`mbar_reference`, pymbar on
parallel-tempering data) through :func:`compare_with_mbar`.

Modules: :mod:`~openmm_trade.free_energy.profile` (Δf(T), ⟨U⟩, C_v: :func:`temperature_profile`,
:func:`profile_from_trajectories`, :func:`compare_with_mbar`),
:mod:`~openmm_trade.free_energy.surfaces` (F(cv): :func:`surface`),
:mod:`~openmm_trade.free_energy.states` (:func:`populations`,
:func:`populations_vs_temperature`), :mod:`~openmm_trade.free_energy.bootstrap` (weights and
bootstrap resampling) and :mod:`~openmm_trade.free_energy.tables` (CSV tables);
:func:`mbar_reference` comes from :mod:`openmm_trade.mbar`.

Example
-------
>>> import numpy as np
>>> from openmm_trade.sampling import WeightedTrajectory
>>> x = np.random.default_rng(0).uniform(-np.pi, np.pi, size=(1000, 1))
>>> wt = WeightedTrajectory(x, np.zeros(1000), np.zeros(1000), temperature=300.0)
>>> fes = surface(wt, cv=x[:, 0], bins=10, n_bootstrap=10, seed=0)
>>> fes.free_energy.shape, float(fes.free_energy.min())
((10,), 0.0)
"""

from __future__ import annotations

from ..mbar import mbar_reference
from .profile import (
    TemperatureProfile,
    compare_with_mbar,
    profile_from_trajectories,
    temperature_profile,
)
from .states import (
    PopulationProfile,
    Populations,
    populations,
    populations_vs_temperature,
    state_mask,
)
from .surfaces import FreeEnergySurface, surface

__all__ = [
    "FreeEnergySurface", "PopulationProfile", "Populations", "TemperatureProfile",
    "compare_with_mbar", "mbar_reference", "populations", "populations_vs_temperature",
    "profile_from_trajectories", "state_mask", "surface", "temperature_profile",
]
