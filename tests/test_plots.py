"""Figures render to PNG/SVG files from real results of the analysis functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from analytic import GaussianModel, HarmonicEnergy

from openmm_trade import free_energy as fe
from openmm_trade import plots
from openmm_trade.errors import InputError
from openmm_trade.mbar import mbar_from_energies
from openmm_trade.sampling import WeightedTrajectory, sample
from openmm_trade.units import KB

TEMPERATURES = [300.0, 400.0, 500.0]


@pytest.fixture(scope="module")
def harmonic_draws():
    energy, model = HarmonicEnergy(dim=2), GaussianModel(dim=2, width=1.2)
    return [sample(model, energy, t, 1500, seed=i, quiet=True)
            for i, t in enumerate(TEMPERATURES)]


def _angles(temperature: float, n: int, seed: int) -> WeightedTrajectory:
    """(φ, ψ)-like samples: a von Mises basin that widens with temperature, weighted."""
    rng = np.random.default_rng(seed)
    values = np.column_stack([rng.vonmises(-1.4, 300.0 / temperature * 2, n),
                              rng.vonmises(2.5, 300.0 / temperature * 2, n)])
    log_p = np.zeros(n)
    energies = -KB * temperature * np.cos(values[:, 0] + 1.4)  # a mild reweighting
    return WeightedTrajectory(values, energies, log_p, temperature)


def _check(path, suffix=".png"):
    assert path.exists() and path.suffix == suffix
    assert path.stat().st_size > 5000
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files


def test_ramachandran_panels(tmp_path):
    model = [fe.surface(_angles(t, 3000, 1), cv=lambda x: x, bins=36,
                        range=[(-math.pi, math.pi)] * 2, n_bootstrap=5, seed=0)
             for t in TEMPERATURES]
    reference = [fe.surface(_angles(t, 3000, 2), cv=lambda x: x, bins=36,
                            range=[(-math.pi, math.pi)] * 2, n_bootstrap=5, seed=0)
                 for t in TEMPERATURES]
    path = plots.ramachandran_panels(model, tmp_path / "rama.png", reference=reference)
    _check(path)
    with pytest.raises(InputError, match="one surface per model"):
        plots.ramachandran_panels(model, tmp_path / "bad.png", reference=reference[:1])


def test_profile_figures(harmonic_draws, tmp_path):
    profile = fe.profile_from_trajectories(harmonic_draws, n_bootstrap=20, seed=0)
    _check(plots.ess_vs_temperature(profile, tmp_path / "ess.png"))
    rng = np.random.default_rng(0)
    mbar = mbar_from_energies(TEMPERATURES, [rng.gamma(1.0, KB * t, 1000) for t in TEMPERATURES])
    _check(plots.delta_f_vs_temperature(profile, tmp_path / "df.png", mbar=mbar))
    _check(plots.delta_f_vs_temperature(profile, tmp_path / "df.svg"), suffix=".svg")
    with pytest.raises(InputError, match="must end in"):
        plots.ess_vs_temperature(profile, tmp_path / "ess.jpeg")


def test_populations_and_energy_figures(harmonic_draws, tmp_path):
    states = {"inner": lambda v: (v ** 2).sum(1) < 0.03, "outer": lambda v: (v ** 2).sum(1) >= 0.03}
    table = fe.populations_vs_temperature(harmonic_draws, states, n_bootstrap=20, seed=0)
    _check(plots.populations_vs_temperature(table, tmp_path / "pops.png", reference=table))
    rng = np.random.default_rng(1)
    reference = {t: rng.gamma(1.0, KB * t, 2000) for t in TEMPERATURES}
    _check(plots.energy_histograms(harmonic_draws, tmp_path / "energies.png",
                                   reference=reference))
