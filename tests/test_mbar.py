"""Tests of openmm_trade.mbar against systems whose partition function is known exactly.

Harmonic wells U = k/2 Σ|r_i - r0_i|² in d = 3N dimensions: Z(β) ∝ (2π/(βk))^{d/2}, so
Δf_k = f(β_k) - f(β_0) = (d/2) ln(β_k/β_0) (f = -ln Z) and ⟨U⟩_β = d/(2β).
"""

from __future__ import annotations

import numpy as np
import openmm
import pytest
from openmm import app

import openmm_trade as ot
from openmm_trade.errors import InputError
from openmm_trade.mbar import MBARResult, mbar_from_energies, mbar_reference
from openmm_trade.units import KB

TEMPERATURES = np.array([300.0, 380.0, 470.0, 600.0])


def exact(d: int, temperatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    beta = 1 / (KB * temperatures)
    return 0.5 * d * np.log(beta / beta[0]), 0.5 * d / beta


def within(estimate, error, truth, n_sigma=3.0):
    return np.abs(estimate - truth) <= n_sigma * error + 1e-12


def test_gaussian_samples_match_exact_free_energies():
    d, rng = 6, np.random.default_rng(42)
    # exact samples: x ~ N(0, kT/k) per dimension, U = k|x|²/2 ~ Gamma(d/2, scale=kT)
    energies = [rng.gamma(0.5 * d, KB * t, size=1500) for t in TEMPERATURES]
    table = mbar_from_energies(TEMPERATURES, energies)
    delta_f, mean_u = exact(d, TEMPERATURES)
    assert isinstance(table, MBARResult)
    assert table.delta_f[0] == 0.0 and table.delta_f_error[0] == pytest.approx(0.0, abs=1e-8)
    assert np.all(table.delta_f_error[1:] > 0)
    assert np.all(within(table.delta_f, table.delta_f_error, delta_f)), (table.delta_f, delta_f)
    assert np.all(within(table.mean_energy, table.mean_energy_error, mean_u))
    assert list(table.n_samples) == [1500] * 4
    assert "T (K)" in str(table) and set(table.as_dict()) >= {"delta_f", "mean_energy"}


def test_discard_and_subsample():
    rng = np.random.default_rng(0)
    # AR(1) series: correlated, so subsampling must keep fewer samples, g > 1
    energies = []
    for t in TEMPERATURES[:2]:
        noise, series, x = rng.normal(size=4000), np.empty(4000), 0.0
        for i in range(4000):
            x = 0.9 * x + noise[i]
            series[i] = 100 + KB * t * x
        energies.append(series)
    table = mbar_from_energies(TEMPERATURES[:2], energies, discard=100, subsample=True)
    assert np.all(table.discarded == 100)
    assert np.all(table.statistical_inefficiency > 5)
    assert np.all(table.n_samples < 1000)
    auto = mbar_from_energies(TEMPERATURES[:2], energies, discard="auto")
    assert np.all(auto.discarded >= 0)
    # replica exchange: one set of iterations for all temperatures, judged on Σ_k β_k U_k
    joint = mbar_from_energies(TEMPERATURES[:2], energies, discard=100, subsample=True,
                               replica_exchange=True)
    assert np.all(joint.discarded == 100) and joint.n_samples[0] == joint.n_samples[1]
    assert joint.statistical_inefficiency[0] == joint.statistical_inefficiency[1] > 5
    with pytest.raises(InputError, match="one length"):
        mbar_from_energies(TEMPERATURES[:2], [energies[0], energies[1][:-1]],
                           replica_exchange=True)


@pytest.mark.parametrize(
    ("temperatures", "energies", "match"),
    [
        ([300.0], [np.ones(5)], "temperatures"),
        ([300.0, -1.0], [np.ones(5), np.ones(5)], "temperatures"),
        ([300.0, 400.0], [np.ones(5)], "one array per temperature"),
        ([300.0, 400.0], [np.ones(5), np.array([1.0, np.inf])], "non-finite"),
        ([300.0, 400.0], [np.ones(5), np.ones((2, 2))], r"energies_per_state\[1\]"),
    ],
)
def test_bad_input(temperatures, energies, match):
    with pytest.raises(InputError, match=match):
        mbar_from_energies(temperatures, energies)


def test_bad_discard_and_result():
    energies = [np.arange(5.0), np.arange(5.0)]
    with pytest.raises(InputError, match="discard"):
        mbar_from_energies([300.0, 400.0], energies, discard=-1)
    with pytest.raises(InputError, match="leaves"):
        mbar_from_energies([300.0, 400.0], energies, discard=4)
    with pytest.raises(InputError, match="ParallelTemperingResult"):
        mbar_reference(object())


def harmonic_wells(n_particles: int = 2, k: float = 1000.0) -> ot.MolecularSystem:
    """N argon atoms, each in its own isotropic harmonic well (no interactions)."""
    system, topology = openmm.System(), app.Topology()
    residue = topology.addResidue("WEL", topology.addChain())
    force = openmm.CustomExternalForce("0.5*k*((x-x0)^2+(y-y0)^2+(z-z0)^2)")
    force.addGlobalParameter("k", k)
    for name in ("x0", "y0", "z0"):
        force.addPerParticleParameter(name)
    positions = 0.5 * np.arange(3 * n_particles, dtype=float).reshape(n_particles, 3)
    for i, centre in enumerate(positions):
        system.addParticle(39.948)
        topology.addAtom(f"AR{i}", app.element.argon, residue)
        force.addParticle(i, centre.tolist())
    system.addForce(force)
    return ot.MolecularSystem.from_openmm(system, topology, positions, name="wells")


def test_parallel_tempering_mbar_on_harmonic_wells(tmp_path):
    """End to end: openmmtools PT on exact harmonic wells, MBAR within 3σ of Z(β).

    Seeded, so it is one fixed draw (bit for bit on CPU). Over 18 other seeds the errors
    are honest: the z-scores of Δf, ⟨U⟩(300 K) and ⟨U⟩(450 K) have rms 1.1, 1.0, 1.1.
    The 5-fs step is exact here (LangevinMiddleIntegrator samples a harmonic well's
    configurations without step-size bias; a 0.5-ns plain run at 450 K agreed within 1.4σ).
    """
    msys = harmonic_wells()
    temps = np.array([300.0, 450.0])
    pt = ot.md.parallel_tempering(msys, temps, n_iterations=400, steps_per_iteration=100,
                                  timestep_ps=0.005, storage=tmp_path / "wells.nc", seed=3,
                                  quiet=True)
    table = mbar_reference(pt)  # auto equilibration, subsampled by g
    delta_f, mean_u = exact(3 * msys.n_atoms, temps)
    assert np.all(table.n_samples > 30)
    assert np.all(within(table.delta_f, table.delta_f_error, delta_f)), (table, delta_f)
    assert np.all(within(table.mean_energy, table.mean_energy_error, mean_u)), (table, mean_u)
