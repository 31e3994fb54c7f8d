"""The seeded Langevin move of :func:`openmm_trade.md.parallel_tempering`.

This module imports openmmtools, so :mod:`openmm_trade.md` imports it only when a
parallel-tempering run needs it; openmmtools restores the move from its storage by this
module's name and the class name.
"""

from __future__ import annotations

from openmmtools import mcmc

from .engine import _openmm_seed

__all__ = ["SeededLangevinDynamicsMove"]


class SeededLangevinDynamicsMove(mcmc.LangevinDynamicsMove):
    """A LangevinDynamicsMove (LangevinMiddleIntegrator) with a set seed that redraws the
    velocities at the state's temperature before every integration, seeded as well.

    The redraw is what makes the swaps correct: openmmtools exchanges thermodynamic
    states but neither rescales nor (with ``reassign_velocities=False``) redraws the
    velocities, so a replica that moved from 300 K to 450 K would go on with 300 K
    velocities while the swap was accepted on potential energies alone; that biased ⟨U⟩
    low at the hot end and high at the cold end. openmmtools' own redraw
    (``reassign_velocities=True``) takes no seed, hence this one.

    Examples
    --------
    >>> from openmm import unit
    >>> move = SeededLangevinDynamicsMove(random_seed=3, timestep=1 * unit.femtosecond)
    >>> move.random_seed
    3
    """

    def __init__(self, random_seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.random_seed = random_seed
        self.n_velocity_draws = 0

    def __getstate__(self):
        return {**super().__getstate__(), "random_seed": self.random_seed}

    def __setstate__(self, serialization):
        self.random_seed = serialization.pop("random_seed", 0)
        self.n_velocity_draws = 0
        super().__setstate__(serialization)

    def _get_integrator(self, thermodynamic_state):
        integrator = super()._get_integrator(thermodynamic_state)
        integrator.setRandomNumberSeed(self.random_seed)
        return integrator

    def _before_integration(self, context, thermodynamic_state):
        super()._before_integration(context, thermodynamic_state)
        temperature = thermodynamic_state.temperature
        if self.random_seed:
            self.n_velocity_draws += 1
            seed = _openmm_seed(self.random_seed, self.n_velocity_draws)
            context.setVelocitiesToTemperature(temperature, seed)
        else:  # not seeded: OpenMM picks a random seed
            context.setVelocitiesToTemperature(temperature)

