"""Molecular dynamics for the boundary ensemble and the parallel-tempering reference.

* :func:`simulate` — Langevin MD at one temperature (minimise, equilibrate, produce),
  optionally into an HDF5 file that is checkpointed and resumable.
* :class:`BoundaryReporter` — an OpenMM reporter for the user's own ``Simulation``.
* :func:`load_boundary` — trajectories from files (DCD, XTC, HDF5, NetCDF, ...), checked
  against a :class:`~openmm_trade.system.MolecularSystem`.
* :func:`parallel_tempering` — openmmtools parallel tempering, resumable from its
  NetCDF storage; :mod:`openmm_trade.mbar` turns its result into reference free energies.

Energies alongside trajectories
-------------------------------
Every ``mdtraj.Trajectory`` returned here carries its potential energies as the
attribute ``traj.potential_energy``: a float64 array ``(n_frames,)`` in kJ/mol, equal to
``U(traj.xyz[i])`` evaluated by OpenMM *on the stored float32 coordinates* (so a
recomputation from ``traj.xyz`` agrees to round-off). Read it with
:func:`potential_energies`, which recomputes the energies when the attribute is missing
(mdtraj operations such as slicing or joining return new objects without it) and a
system is given; :func:`attach_energies` sets it. In HDF5 files written here the energies
travel in mdtraj's standard ``potentialEnergy`` field (stored by mdtraj as float32);
:func:`load_boundary` recomputes float64 energies and warns if stored ones disagree.

Threads and chains: :func:`simulate` gives each Context one CPU thread and runs
``n_chains`` independent chains in parallel processes, by default one per core
(:func:`available_cores`); pass ``n_chains=1`` to stay in one process.

Modules
-------
* :mod:`~openmm_trade.md.simulation` — :func:`simulate` and :func:`simulation_summary`;
* :mod:`~openmm_trade.md.chains` — the chains of a run, in this process or in parallel ones;
* :mod:`~openmm_trade.md.trajectory` — energies alongside frames, HDF5 files, chain records;
* :mod:`~openmm_trade.md.reporter` — :class:`BoundaryReporter`;
* :mod:`~openmm_trade.md.boundary` — :func:`load_boundary`;
* :mod:`~openmm_trade.md.parallel_tempering` — :func:`parallel_tempering` and its result
  (with :mod:`~openmm_trade.md.moves`, its seeded Langevin move);
* :mod:`~openmm_trade.md.engine` — OpenMM platforms, seeds, time steps, energy evaluation.


Example
-------
>>> import openmm_trade as ot
>>> msys = ot.systems.load("alanine-dipeptide-vacuum")
>>> traj = ot.md.simulate(msys, temperature=300, n_frames=5, interval_ps=0.1, seed=1,
...                       equilibration_ps=0.2, quiet=True)
>>> traj.n_frames, ot.md.potential_energies(traj).shape
(5, (5,))
"""

from __future__ import annotations

from .boundary import load_boundary
from .chains import available_cores
from .engine import default_timestep_ps

# PT storage files written before the md/ split name the move here
from .moves import SeededLangevinDynamicsMove
from .parallel_tempering import ParallelTemperingResult, cache_dir, parallel_tempering
from .reporter import BoundaryReporter
from .simulation import simulate, simulation_summary
from .trajectory import (
    CHAIN_ATTRIBUTE,
    ENERGY_ATTRIBUTE,
    attach_energies,
    frame_chains,
    load_trajectory,
    potential_energies,
    save_trajectory,
)

__all__ = [
    "CHAIN_ATTRIBUTE",
    "ENERGY_ATTRIBUTE",
    "BoundaryReporter",
    "ParallelTemperingResult",
    "SeededLangevinDynamicsMove",
    "attach_energies",
    "available_cores",
    "cache_dir",
    "default_timestep_ps",
    "frame_chains",
    "load_boundary",
    "load_trajectory",
    "parallel_tempering",
    "potential_energies",
    "save_trajectory",
    "simulate",
    "simulation_summary",
]
