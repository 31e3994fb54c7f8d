"""Shared fixtures: the built-in systems and a few MD frames, built once per session."""

from __future__ import annotations

import numpy as np
import pytest

import openmm_trade as ot


@pytest.fixture(scope="session")
def vacuum():
    """Alanine dipeptide in vacuum with HBond constraints."""
    return ot.systems.load("alanine-dipeptide-vacuum")


@pytest.fixture(scope="session")
def implicit():
    """Alanine dipeptide in OBC implicit solvent with HBond constraints."""
    return ot.systems.load("alanine-dipeptide-implicit")


@pytest.fixture(scope="session")
def vacuum_frames(vacuum):
    """(20, 22, 3) nm conformations of vacuum alanine dipeptide from short OpenMM MD."""
    return short_md_frames(vacuum, n_frames=20, seed=7)


def short_md_frames(msys, n_frames: int, seed: int, steps_between: int = 50) -> np.ndarray:
    """Positions from a short Langevin run with plain OpenMM (independent of ot.md)."""
    import openmm
    from openmm import unit

    integrator = openmm.LangevinMiddleIntegrator(
        400 * unit.kelvin, 1.0 / unit.picosecond, 0.002 * unit.picoseconds
    )
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(msys.system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(msys.positions)
    openmm.LocalEnergyMinimizer.minimize(context, maxIterations=200)
    context.setVelocitiesToTemperature(400 * unit.kelvin, seed)
    frames = []
    for _ in range(n_frames):
        integrator.step(steps_between)
        state = context.getState(getPositions=True)
        frames.append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.array(frames)
