"""Free energies across temperature: Δf(T), ⟨U⟩(T) and C_v(T) from weighted samples, checked
by thermodynamic integration and against MBAR."""


from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.integrate import cumulative_trapezoid

from .. import checks
from ..errors import InputError
from ..importance import scaled_weights
from ..mbar import MBARResult
from ..metrics import DeltaFComparison, delta_f_difference
from ..sampling import WeightedTrajectory, sample
from ..units import KB, check_temperature
from .bootstrap import _bootstrap_counts, _check_bootstrap, _std
from .tables import _Table


@dataclass
class TemperatureProfile(_Table):
    """Per-temperature free energies (one row per requested temperature).

    Columns: ``temperature`` (K); ``delta_f_kT`` = f(β) − f(β0) and ``delta_f_kT_err``
    (kT); ``delta_f_kJmol``/``delta_f_kJmol_err`` = k_B T · Δf (the same difference in
    kJ/mol at T; an absolute F(T) − F(T0) would depend on the units of the configuration
    measure and is not reported); ``mean_energy``/``mean_energy_err`` (kJ/mol);
    ``heat_capacity``/``heat_capacity_err`` (kJ/mol/K); ``ess`` (fraction);
    ``delta_f_ti_kT`` (thermodynamic integration of ⟨U⟩, trapezoid rule over the
    temperatures sampled, T0 included); ``n_failed`` (failed energies).

    ``reference_temperature`` is T0 and ``ti_max_deviation_kT`` the largest
    |Δf − Δf_TI| (importance sampling vs TI; large values flag poor sampling or too coarse
    a temperature grid).
    """

    temperature: np.ndarray
    delta_f_kT: np.ndarray
    delta_f_kT_err: np.ndarray
    delta_f_kJmol: np.ndarray
    delta_f_kJmol_err: np.ndarray
    mean_energy: np.ndarray
    mean_energy_err: np.ndarray
    heat_capacity: np.ndarray
    heat_capacity_err: np.ndarray
    ess: np.ndarray
    delta_f_ti_kT: np.ndarray
    n_failed: np.ndarray
    reference_temperature: float = 300.0
    ti_max_deviation_kT: float = field(init=False)

    def __post_init__(self) -> None:
        self.ti_max_deviation_kT = float(np.max(np.abs(self.delta_f_kT - self.delta_f_ti_kT)))

    def summary(self) -> str:
        """A plain-text table with the TI consistency check."""
        lines = [f"{'T (K)':>8} {'Δf (kT)':>18} {'<U> (kJ/mol)':>20} {'Cv (kJ/mol/K)':>20} "
                 f"{'ESS':>7} {'Δf_TI (kT)':>11}"]
        for r in self.as_rows():
            lines.append(
                f"{r['temperature']:8.1f} {r['delta_f_kT']:9.3f} ± {r['delta_f_kT_err']:6.3f} "
                f"{r['mean_energy']:10.2f} ± {r['mean_energy_err']:7.2f} "
                f"{r['heat_capacity']:9.4f} ± {r['heat_capacity_err']:8.4f} {r['ess']:7.1%} "
                f"{r['delta_f_ti_kT']:11.3f}")
        lines.append(f"reference T0 = {self.reference_temperature:g} K; "
                     f"max |Δf - Δf_TI| = {self.ti_max_deviation_kT:.3f} kT")
        return "\n".join(lines)


def _thermodynamics(multiplicity, w, shift, energies, beta):
    """ln Z, ⟨U⟩ and C_v from weights ``w·exp(shift)`` with sample multiplicities."""
    weights = multiplicity * w
    total = weights.sum(-1)
    n = multiplicity.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_z = shift + np.log(total) - np.log(n)
        mean = (weights @ energies) / total
        var = (weights * (energies - mean[..., None]) ** 2).sum(-1) / total
    return log_z, mean, KB * beta ** 2 * var


@dataclass
class _Estimate:
    temperature: float
    log_z: float
    mean_energy: float
    heat_capacity: float
    log_z_boot: np.ndarray
    mean_energy_err: float
    heat_capacity_err: float
    ess: float
    n_failed: int


def _estimate(wt: WeightedTrajectory, n_bootstrap: int, rng) -> _Estimate:
    w, shift = scaled_weights(wt.log_weights)
    energies = np.where(np.isfinite(wt.energies), wt.energies, 0.0)
    log_z, mean, cv = _thermodynamics(np.ones(len(wt)), w, shift, energies, wt.beta)
    boot = [np.stack(_thermodynamics(c, w, shift, energies, wt.beta))
            for c in _bootstrap_counts(rng, wt.lineages, n_bootstrap)]
    boot = np.concatenate(boot, axis=1)
    return _Estimate(wt.temperature, float(log_z), float(mean), float(cv), boot[0],
                     float(_std(boot[1])), float(_std(boot[2])), wt.ess, wt.n_failed)


def temperature_profile(model, energy, temperatures: Sequence[float], n: int = 10_000,
                        reference_temperature: float | None = None, n_bootstrap: int = 200,
                        seed: int | None = None, chunk_size: int = 1000,
                        quiet: bool = False, refine=None) -> TemperatureProfile:
    """Δf(T), ⟨U⟩, C_v and ESS at each temperature by importance sampling with ``model``.

    Draws ``n`` samples at every temperature (and at T0 if it is not among them) with
    :func:`openmm_trade.sample`, then calls :func:`profile_from_trajectories`.

    Parameters
    ----------
    model
        A model of the protocol :class:`openmm_trade.model.BoltzmannModel` with a
        ``reference_temperature`` (or give ``reference_temperature``).
    energy : openmm_trade.energy.Energy
        The potential energy.
    temperatures : sequence of float
        Temperatures in K (rows of the table, in this order).
    n : int
        Samples per temperature.
    reference_temperature : float, optional
        T0 of Δf; default ``model.reference_temperature``.
    n_bootstrap : int
        Bootstrap replicates for the uncertainties.
    seed : int, optional
        Seeds sampling (one derived seed per temperature) and the bootstrap.
    chunk_size, quiet
        Passed to :func:`openmm_trade.sample`.
    refine : bool or openmm_trade.SMC, optional
        Refine every temperature's samples by SMC (:mod:`openmm_trade.refine`): Δf comes
        from the SMC estimates of ``ln Z`` with their island errors (see
        :func:`profile_from_trajectories`); ⟨U⟩ and C_v from the refined weighted samples.

    Returns
    -------
    TemperatureProfile

    Examples
    --------
    >>> from openmm_trade.flow import ConditionalFlow, Domain
    >>> from openmm_trade.toys import HarmonicOscillator
    >>> model = ConditionalFlow([Domain.real(-1.0, 1.0)], reference_temperature=300.0,
    ...                         temperature_range=(300.0, 600.0), hidden=16, n_blocks=1, seed=0)
    >>> table = temperature_profile(model, HarmonicOscillator(), [300.0, 450.0], n=500,
    ...                             n_bootstrap=20, seed=0, quiet=True)
    >>> table.temperature.tolist(), float(table.delta_f_kT[0])
    ([300.0, 450.0], 0.0)
    """
    temperatures = checks.temperatures(temperatures, "temperatures").tolist()
    t0 = check_temperature(model.reference_temperature if reference_temperature is None
                           else reference_temperature, name="reference_temperature")
    draw = list(temperatures)
    if not any(math.isclose(t, t0, rel_tol=1e-12) for t in draw):
        draw.append(t0)
    seeds = ([None] * len(draw) if seed is None else
             [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(len(draw))])
    trajectories = [sample(model, energy, t, n, chunk_size=chunk_size, seed=s, quiet=quiet,
                           refine=refine)
                    for t, s in zip(draw, seeds, strict=True)]
    return profile_from_trajectories(trajectories, reference_temperature=t0,
                                     n_bootstrap=n_bootstrap, seed=seed,
                                     temperatures=temperatures)



def profile_from_trajectories(trajectories: Sequence[WeightedTrajectory],
                              reference_temperature: float | None = None,
                              n_bootstrap: int = 200, seed: int | None = None,
                              temperatures: Sequence[float] | None = None) -> TemperatureProfile:
    """The table of :func:`temperature_profile` from weighted trajectories already drawn.

    Parameters
    ----------
    trajectories : sequence of WeightedTrajectory
        One per temperature, all from the same model (so that the log-densities share
        one normalisation), one of them at T0.
    reference_temperature : float, optional
        T0; default the lowest temperature among ``trajectories``.
    n_bootstrap, seed
        Bootstrap replicates and seed.

        The error of Δf is the bootstrap spread of the difference of the two ``ln Z``
        estimates; for refined trajectories (``WeightedTrajectory.refinement``), whose
        ``ln Z`` is an SMC estimate that a bootstrap of the final particles does not
        capture, each side contributes its recorded ``log_partition_error`` instead and
        the two add in quadrature (the temperatures are sampled independently).
    temperatures : sequence of float, optional
        Rows to report (default: every trajectory's temperature, in the given order).

    Examples
    --------
    >>> import numpy as np
    >>> from openmm_trade.sampling import WeightedTrajectory
    >>> rng = np.random.default_rng(0)
    >>> wts = [WeightedTrajectory(np.zeros((500, 1)), rng.normal(size=500), np.zeros(500), t)
    ...        for t in (300.0, 400.0)]
    >>> float(profile_from_trajectories(wts, n_bootstrap=20, seed=0).delta_f_kT[0])
    0.0
    """
    trajectories = list(trajectories)
    if not trajectories or not all(isinstance(t, WeightedTrajectory) for t in trajectories):
        raise InputError("trajectories must be a non-empty sequence of WeightedTrajectory")
    n_bootstrap = _check_bootstrap(n_bootstrap)
    by_temperature: dict[float, WeightedTrajectory] = {}
    for wt in trajectories:
        if any(math.isclose(wt.temperature, t, rel_tol=1e-12) for t in by_temperature):
            raise InputError(f"trajectories: two trajectories at {wt.temperature:g} K; "
                             "join them with WeightedTrajectory.concatenate")
        by_temperature[wt.temperature] = wt

    def lookup(t: float, name: str) -> float:
        for known in by_temperature:
            if math.isclose(known, t, rel_tol=1e-12):
                return known
        raise InputError(f"{name}: no trajectory at {t:g} K (have "
                         f"{sorted(by_temperature)})")

    t0 = lookup(min(by_temperature) if reference_temperature is None
                else check_temperature(reference_temperature, "reference_temperature"),
                "reference_temperature")
    rows = [lookup(t, "temperatures") for t in (
        checks.temperatures(temperatures, "temperatures").tolist() if temperatures is not None
        else [wt.temperature for wt in trajectories])]
    rngs = np.random.default_rng(seed).spawn(len(by_temperature))
    estimates = {t: _estimate(wt, n_bootstrap, rng)
                 for (t, wt), rng in zip(by_temperature.items(), rngs, strict=True)}
    reference = estimates[t0]
    delta = {t: reference.log_z - e.log_z for t, e in estimates.items()}
    delta_err = {t: 0.0 if t == t0 else _delta_f_error(by_temperature[t0], reference,
                                                         by_temperature[t], e)
                 for t, e in estimates.items()}
    ti = _thermodynamic_integration(estimates, t0)

    def column(values) -> np.ndarray:
        return np.array([values(t) for t in rows], dtype=np.float64)

    t = np.array(rows)
    delta_f = column(delta.get)
    delta_f_err = column(delta_err.get)
    return TemperatureProfile(
        temperature=t, delta_f_kT=delta_f, delta_f_kT_err=delta_f_err,
        delta_f_kJmol=KB * t * delta_f, delta_f_kJmol_err=KB * t * delta_f_err,
        mean_energy=column(lambda s: estimates[s].mean_energy),
        mean_energy_err=column(lambda s: estimates[s].mean_energy_err),
        heat_capacity=column(lambda s: estimates[s].heat_capacity),
        heat_capacity_err=column(lambda s: estimates[s].heat_capacity_err),
        ess=column(lambda s: estimates[s].ess), delta_f_ti_kT=column(ti.get),
        n_failed=np.array([estimates[s].n_failed for s in rows], dtype=np.int64),
        reference_temperature=float(t0),
    )


def _delta_f_error(wt0: WeightedTrajectory, e0: _Estimate, wt: WeightedTrajectory,
                   e: _Estimate) -> float:
    """Standard error of ``ln Z(β0) - ln Z(β)``: bootstrap, or SMC errors when refined."""
    if wt0.refinement is None and wt.refinement is None:
        return float(_std(e0.log_z_boot - e.log_z_boot))

    def variance(trajectory: WeightedTrajectory, estimate: _Estimate) -> float:
        if trajectory.refinement is not None:
            return float(trajectory.log_partition_error) ** 2
        return float(_std(estimate.log_z_boot)) ** 2

    return math.sqrt(variance(wt0, e0) + variance(wt, e))


def _thermodynamic_integration(estimates: dict[float, _Estimate], t0: float) -> dict:
    """Δf_TI(T) = ∫_{β0}^{β} ⟨U⟩ dβ' by the trapezoid rule over the sampled temperatures."""
    temperatures = np.array(sorted(estimates, reverse=True))  # ascending β
    betas = 1.0 / (KB * temperatures)
    means = np.array([estimates[t].mean_energy for t in temperatures])
    integral = cumulative_trapezoid(means, betas, initial=0.0)
    offset = integral[list(temperatures).index(t0)]
    return {t: float(v - offset) for t, v in zip(temperatures, integral, strict=True)}


def compare_with_mbar(profile: TemperatureProfile, mbar: MBARResult) -> DeltaFComparison:
    """Differences Δf_model − Δf_MBAR (kT) at the temperatures both tables share.

    MBAR's Δf (relative to its first temperature) is re-referenced to the profile's T0,
    which must be one of MBAR's temperatures; the two MBAR errors are then added in
    quadrature (conservative: their correlation is ignored) unless T0 is MBAR's first.

    Examples
    --------
    >>> result = compare_with_mbar(table, ot.mbar.mbar_reference(pt))  # doctest: +SKIP
    >>> result.within(3)  # doctest: +SKIP
    """
    mbar_t = np.asarray(mbar.temperatures, dtype=np.float64)
    at_t0 = np.flatnonzero(np.isclose(mbar_t, profile.reference_temperature, rtol=1e-9))
    if at_t0.size == 0:
        raise InputError(f"mbar: no state at the profile's reference temperature "
                         f"{profile.reference_temperature:g} K (have {mbar_t.tolist()})")
    k0 = int(at_t0[0])
    rows, cols = [], []
    for i, t in enumerate(profile.temperature):
        match = np.flatnonzero(np.isclose(mbar_t, t, rtol=1e-9))
        if match.size:
            rows.append(i)
            cols.append(int(match[0]))
    if not rows:
        raise InputError("mbar: no temperature in common with the profile")
    ref = np.asarray(mbar.delta_f)[cols] - np.asarray(mbar.delta_f)[k0]
    err = np.asarray(mbar.delta_f_error, dtype=np.float64)
    ref_err = err[cols] if k0 == 0 else np.hypot(err[cols], err[k0])
    ref_err = np.where(np.array(cols) == k0, 0.0, ref_err)
    return delta_f_difference(profile.delta_f_kT[rows], ref, profile.delta_f_kT_err[rows],
                              ref_err)
