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
    """The file is there, in its format, with no temporary files left beside it."""
    assert path.exists() and path.suffix == suffix
    head = path.read_bytes()[:200]
    assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in head or b"<?xml" in head
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files


def _points(ax, label):
    """(x, y) of the plotted line or error-bar series called ``label``."""
    for container in ax.containers:
        if container.get_label() == label:
            return container.lines[0].get_xdata(), container.lines[0].get_ydata()
    line = next(line for line in ax.lines if line.get_label() == label)
    return line.get_xdata(), line.get_ydata()


def test_ramachandran_panels(tmp_path):
    model = [fe.surface(_angles(t, 3000, 1), cv=lambda x: x, bins=36,
                        range=[(-math.pi, math.pi)] * 2, n_bootstrap=5, seed=0)
             for t in TEMPERATURES]
    reference = [fe.surface(_angles(t, 3000, 2), cv=lambda x: x, bins=36,
                            range=[(-math.pi, math.pi)] * 2, n_bootstrap=5, seed=0)
                 for t in TEMPERATURES]
    fig = plots.ramachandran_panels_figure(model, reference=reference)
    panels = [ax for ax in fig.axes if ax.get_title()]  # not the colour bar
    assert len(panels) == 2 * len(TEMPERATURES)
    for ax, fes in zip(panels, model + reference, strict=True):
        shown = ax.collections[0].get_array()
        np.testing.assert_array_equal(shown.mask.ravel(), ~np.isfinite(fes.free_energy.T).ravel())
        np.testing.assert_allclose(shown.compressed(),
                                   fes.free_energy.T[np.isfinite(fes.free_energy.T)])
        assert f"{fes.temperature:g} K" in ax.get_title()
    _check(plots.ramachandran_panels(model, tmp_path / "rama.png", reference=reference))
    with pytest.raises(InputError, match="one surface per model"):
        plots.ramachandran_panels(model, tmp_path / "bad.png", reference=reference[:1])


def test_profile_figures(harmonic_draws, tmp_path):
    profile = fe.profile_from_trajectories(harmonic_draws, n_bootstrap=20, seed=0)
    ax = plots.ess_vs_temperature_figure(profile).axes[0]
    x, y = ax.lines[0].get_xdata(), ax.lines[0].get_ydata()
    np.testing.assert_allclose(x, TEMPERATURES)
    np.testing.assert_allclose(y, profile.ess)
    _check(plots.ess_vs_temperature(profile, tmp_path / "ess.png"))

    rng = np.random.default_rng(0)
    mbar = mbar_from_energies(TEMPERATURES, [rng.gamma(1.0, KB * t, 1000) for t in TEMPERATURES])
    ax = plots.delta_f_vs_temperature_figure(profile, mbar=mbar).axes[0]
    np.testing.assert_allclose(_points(ax, "flow (importance sampling)")[1], profile.delta_f_kT)
    np.testing.assert_allclose(_points(ax, "flow (TI of ⟨U⟩)")[1], profile.delta_f_ti_kT)
    t0 = list(TEMPERATURES).index(profile.reference_temperature)
    np.testing.assert_allclose(_points(ax, "MBAR")[1], mbar.delta_f - mbar.delta_f[t0])
    _check(plots.delta_f_vs_temperature(profile, tmp_path / "df.png", mbar=mbar))
    _check(plots.delta_f_vs_temperature(profile, tmp_path / "df.svg"), suffix=".svg")
    with pytest.raises(InputError, match="must end in"):
        plots.ess_vs_temperature(profile, tmp_path / "ess.jpeg")


def test_populations_and_energy_figures(harmonic_draws, tmp_path):
    states = {"inner": lambda v: (v ** 2).sum(1) < 0.03, "outer": lambda v: (v ** 2).sum(1) >= 0.03}
    table = fe.populations_vs_temperature(harmonic_draws, states, n_bootstrap=20, seed=0)
    ax = plots.populations_vs_temperature_figure(table, reference=table).axes[0]
    for j, state in enumerate(table.states):
        np.testing.assert_allclose(_points(ax, state)[1], table.population[:, j])
        np.testing.assert_allclose(_points(ax, f"{state} (reference)")[1], table.population[:, j])
    _check(plots.populations_vs_temperature(table, tmp_path / "pops.png", reference=table))

    rng = np.random.default_rng(1)
    reference = {t: rng.gamma(1.0, KB * t, 2000) for t in TEMPERATURES}
    fig = plots.energy_histograms_figure(harmonic_draws, reference=reference, bins=30)
    for ax, wt in zip(fig.axes, harmonic_draws, strict=True):
        keep = wt.weights > 0
        edges = np.histogram_bin_edges(np.concatenate([wt.energies[keep], reference[
            wt.temperature]]), bins=30)
        expected, _ = np.histogram(wt.energies[keep], bins=edges, weights=wt.weights[keep],
                                   density=True)
        bars = [patch.get_height() for patch in ax.patches[:30]]  # the reweighted histogram
        np.testing.assert_allclose(bars, expected)
    _check(plots.energy_histograms(harmonic_draws, tmp_path / "energies.png",
                                   reference=reference))
