"""Figures: Ramachandran free-energy panels, ESS(T), Δf(T) vs MBAR, populations(T), energies.

Every function takes the data, writes one figure to ``path`` (format from the suffix:
``.png``, ``.svg`` or ``.pdf``; written atomically) and returns the path; its ``*_figure``
twin returns the matplotlib ``Figure`` unsaved, for a user who wants to adjust it. Figures are
built with matplotlib's object API and the Agg canvas, so nothing touches pyplot's global
state or needs a display.

Example
-------
>>> import numpy as np, tempfile, pathlib
>>> from openmm_trade.free_energy import profile_from_trajectories
>>> from openmm_trade.sampling import WeightedTrajectory
>>> rng = np.random.default_rng(0)
>>> wts = [WeightedTrajectory(np.zeros((200, 1)), rng.normal(size=200), np.zeros(200), t)
...        for t in (300.0, 400.0)]
>>> table = profile_from_trajectories(wts, n_bootstrap=10, seed=0)
>>> out = ess_vs_temperature(table, pathlib.Path(tempfile.mkdtemp()) / "ess.png")
>>> out.suffix
'.png'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import InputError
from .sampling import WeightedTrajectory, atomic_write_path

PathLike = str | os.PathLike
_FORMATS = (".png", ".svg", ".pdf")


def _figure(n_rows: int = 1, n_cols: int = 1, size=(5.0, 3.6), **kwargs):
    fig = Figure(figsize=(size[0] * n_cols, size[1] * n_rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, **kwargs)
    return fig, axes


def _save(fig: Figure, path: PathLike, dpi: int = 120) -> Path:
    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise InputError(f"path must end in one of {', '.join(_FORMATS)}, got {path.name!r}")
    with atomic_write_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lower()[1:])
    return path


def _reference_series(reference, temperatures_name: str = "temperatures"):
    """(temperatures, Δf, error) from an MBARResult-like object or a 3-tuple of arrays."""
    if reference is None:
        return None
    if isinstance(reference, tuple):
        t, f, e = (np.asarray(a, dtype=np.float64) for a in reference)
        return t, f, e
    return (np.asarray(getattr(reference, temperatures_name), dtype=np.float64),
            np.asarray(reference.delta_f, dtype=np.float64),
            np.asarray(reference.delta_f_error, dtype=np.float64))


def ramachandran_panels(model: Sequence, path: PathLike, reference: Sequence | None = None,
                        vmax: float | None = None, dpi: int = 120) -> Path:
    """Ramachandran free-energy surfaces across temperatures, model above reference, saved
    to ``path`` (:func:`ramachandran_panels_figure` for the figure itself).

    Parameters
    ----------
    model : sequence of FreeEnergySurface
        2-D surfaces (φ, ψ in radians), one per temperature (columns).
    path : path
        Output figure.
    reference : sequence of FreeEnergySurface, optional
        Reference surfaces (MD/replica exchange) at the same temperatures (second row).
    vmax : float, optional
        Upper end of the colour scale in kJ/mol (default: the largest finite value, at
        most 40 kJ/mol).

    Examples
    --------
    >>> fes = [ot.free_energy.surface(wt, ot.cv.ramachandran) for wt in wts]  # doctest: +SKIP
    >>> ramachandran_panels(fes, "rama.png")  # doctest: +SKIP
    """
    return _save(ramachandran_panels_figure(model, reference, vmax), path, dpi)


def ramachandran_panels_figure(model: Sequence, reference: Sequence | None = None,
                               vmax: float | None = None) -> Figure:
    """The figure of :func:`ramachandran_panels`, unsaved (to adjust before saving)."""
    rows = [("model", list(model))]
    if reference is not None:
        rows.append(("reference", list(reference)))
        if len(rows[1][1]) != len(rows[0][1]):
            raise InputError(f"reference must have one surface per model surface "
                             f"({len(rows[0][1])}), got {len(rows[1][1])}")
    if not rows[0][1] or any(s.ndim != 2 for _, surfaces in rows for s in surfaces):
        raise InputError("model (and reference) must be non-empty sequences of 2-D surfaces")
    if vmax is None:
        finite = [s.free_energy[np.isfinite(s.free_energy)] for _, ss in rows for s in ss]
        vmax = min(40.0, max(float(f.max()) for f in finite if f.size))
    fig, axes = _figure(len(rows), len(rows[0][1]), size=(3.4, 3.0), sharex=True, sharey=True)
    for r, (label, surfaces) in enumerate(rows):
        for c, fes in enumerate(surfaces):
            ax = axes[r, c]
            mesh = ax.pcolormesh(np.degrees(fes.edges[0]), np.degrees(fes.edges[1]),
                                 np.ma.masked_invalid(fes.free_energy.T), vmin=0.0, vmax=vmax,
                                 cmap="viridis", shading="flat")
            ax.set_title(f"{label}, {fes.temperature:g} K", fontsize=10)
            names = fes.names if len(fes.names) == 2 else ("φ", "ψ")
            if r == len(rows) - 1:
                ax.set_xlabel(f"{names[0]} (°)")
            if c == 0:
                ax.set_ylabel(f"{names[1]} (°)")
            ax.set_aspect("equal")
    fig.colorbar(mesh, ax=axes, label="F (kJ/mol)", shrink=0.9)
    return fig


def ess_vs_temperature(profile, path: PathLike, dpi: int = 120) -> Path:
    """Effective sample size (fraction, log scale) against temperature.

    ``profile`` is a :class:`~openmm_trade.free_energy.TemperatureProfile` or anything with
    ``temperature`` and ``ess`` arrays. :func:`ess_vs_temperature_figure` gives the figure.
    """
    return _save(ess_vs_temperature_figure(profile), path, dpi)


def ess_vs_temperature_figure(profile) -> Figure:
    """The figure of :func:`ess_vs_temperature`, unsaved (to adjust before saving)."""
    order = np.argsort(profile.temperature)
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.plot(np.asarray(profile.temperature)[order], np.asarray(profile.ess)[order], "o-")
    reference = getattr(profile, "reference_temperature", None)
    if reference is not None:
        ax.axvline(reference, color="0.6", ls="--", label=f"T0 = {reference:g} K")
        ax.legend()
    ax.set_yscale("log")
    ax.set_xlabel("temperature (K)")
    ax.set_ylabel("ESS (fraction of samples)")
    return fig


def delta_f_vs_temperature(profile, path: PathLike, mbar=None, dpi: int = 120) -> Path:
    """Δf(T) = f(β) − f(β0) in kT with error bars, the TI check and optionally MBAR.

    Parameters
    ----------
    profile : TemperatureProfile
        From :func:`openmm_trade.free_energy.temperature_profile`.
    path : path
        Output figure.
    mbar : MBARResult or (temperatures, delta_f, delta_f_error), optional
        Reference values; shifted to the profile's T0 when T0 is one of its temperatures.

    :func:`delta_f_vs_temperature_figure` gives the figure unsaved.
    """
    return _save(delta_f_vs_temperature_figure(profile, mbar), path, dpi)


def delta_f_vs_temperature_figure(profile, mbar=None) -> Figure:
    """The figure of :func:`delta_f_vs_temperature`, unsaved (to adjust before saving)."""
    order = np.argsort(profile.temperature)
    t = np.asarray(profile.temperature)[order]
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.errorbar(t, profile.delta_f_kT[order], yerr=profile.delta_f_kT_err[order], fmt="o",
                capsize=3, label="flow (importance sampling)")
    ax.plot(t, profile.delta_f_ti_kT[order], "--", color="0.5", label="flow (TI of ⟨U⟩)")
    series = _reference_series(mbar)
    if series is not None:
        mt, mf, me = series
        at_t0 = np.isclose(mt, profile.reference_temperature)
        if at_t0.any():
            mf = mf - mf[at_t0][0]
        ax.errorbar(mt, mf, yerr=me, fmt="s", mfc="none", capsize=3, label="MBAR")
    ax.set_xlabel("temperature (K)")
    ax.set_ylabel(f"Δf (kT), T0 = {profile.reference_temperature:g} K")
    ax.legend()
    return fig


def populations_vs_temperature(profile, path: PathLike, reference=None,
                               dpi: int = 120) -> Path:
    """State populations against temperature with error bars; reference as open markers.

    ``profile`` and ``reference`` are :class:`~openmm_trade.free_energy.PopulationProfile`
    tables (e.g. flow vs MD). :func:`populations_vs_temperature_figure` gives the figure.
    """
    return _save(populations_vs_temperature_figure(profile, reference), path, dpi)


def populations_vs_temperature_figure(profile, reference=None) -> Figure:
    """The figure of :func:`populations_vs_temperature`, unsaved (to adjust before saving)."""
    fig, axes = _figure()
    ax = axes[0, 0]
    for j, state in enumerate(profile.states):
        line = ax.errorbar(profile.temperature, profile.population[:, j],
                           yerr=profile.population_err[:, j], fmt="o-", capsize=3, label=state)
        if reference is not None and state in reference.states:
            k = list(reference.states).index(state)
            ax.errorbar(reference.temperature, reference.population[:, k],
                        yerr=reference.population_err[:, k], fmt="s", mfc="none", capsize=3,
                        color=line[0].get_color(), label=f"{state} (reference)")
    ax.set_xlabel("temperature (K)")
    ax.set_ylabel("population")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return fig


def energy_histograms(trajectories: Sequence[WeightedTrajectory], path: PathLike,
                      reference: Mapping[float, np.ndarray] | None = None, bins: int = 50,
                      dpi: int = 120) -> Path:
    """Weighted potential-energy distributions per temperature (one panel each).

    ``reference`` maps a temperature (K) to reference energies (kJ/mol) drawn as a line.
    :func:`energy_histograms_figure` gives the figure unsaved.
    """
    return _save(energy_histograms_figure(trajectories, reference, bins), path, dpi)


def energy_histograms_figure(trajectories: Sequence[WeightedTrajectory],
                             reference: Mapping[float, np.ndarray] | None = None,
                             bins: int = 50) -> Figure:
    """The figure of :func:`energy_histograms`, unsaved (to adjust before saving)."""
    trajectories = list(trajectories)
    if not trajectories:
        raise InputError("trajectories must be a non-empty sequence of WeightedTrajectory")
    fig, axes = _figure(1, len(trajectories), size=(3.6, 3.0))
    for ax, wt in zip(axes[0], trajectories, strict=True):
        keep = wt.weights > 0
        energies = wt.energies[keep]
        ref = None
        if reference is not None:
            ref = next((np.asarray(v) for t, v in reference.items()
                        if np.isclose(float(t), wt.temperature)), None)
        pooled = energies if ref is None else np.concatenate([energies, ref])
        edges = np.histogram_bin_edges(pooled, bins=bins)
        ax.hist(energies, bins=edges, weights=wt.weights[keep], density=True, alpha=0.6,
                label="flow (reweighted)")
        ax.hist(energies, bins=edges, density=True, histtype="step", color="0.4",
                label="flow (raw)")
        if ref is not None:
            ax.hist(ref, bins=edges, density=True, histtype="step", lw=2, label="reference")
        ax.set_title(f"{wt.temperature:g} K, ESS {wt.ess:.1%}", fontsize=10)
        ax.set_xlabel("U (kJ/mol)")
    axes[0, 0].set_ylabel("density")
    axes[0, 0].legend(fontsize=8)
    return fig


__all__ = [
    "delta_f_vs_temperature", "delta_f_vs_temperature_figure", "energy_histograms",
    "energy_histograms_figure", "ess_vs_temperature", "ess_vs_temperature_figure",
    "populations_vs_temperature", "populations_vs_temperature_figure", "ramachandran_panels",
    "ramachandran_panels_figure",
]
