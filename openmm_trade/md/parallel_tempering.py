"""Parallel tempering with openmmtools: the multi-temperature reference, resumable from its
NetCDF storage; :mod:`openmm_trade.mbar` turns its result into reference free energies."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mdtraj
import numpy as np
from openmm import unit

from .. import checks
from ..errors import CheckpointError, InputError
from ..files import exclusive_lock
from ..system import MolecularSystem
from ..units import KB
from .engine import (
    PathLike,
    _check_system,
    _EnergyEvaluator,
    _ns_per_day,
    _openmm_seed,
    _platform,
    _platform_properties,
    _progress,
    default_timestep_ps,
    one_core,
)
from .simulation import simulation_summary
from .trajectory import attach_energies


def cache_dir() -> Path:
    """Folder for cached reference data: ``$OPENMM_TRADE_CACHE`` or ``~/.cache/openmm-trade``.

    >>> cache_dir().name in ("openmm-trade", Path(os.environ.get("OPENMM_TRADE_CACHE", "x")).name)
    True
    """
    root = os.environ.get("OPENMM_TRADE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "openmm-trade"


@dataclass
class ParallelTemperingResult:
    """Output of :func:`parallel_tempering`, demultiplexed by temperature.

    Attributes
    ----------
    temperatures : numpy.ndarray
        ``(K,)`` temperatures in K, increasing.
    trajectories : list of mdtraj.Trajectory
        ``trajectories[k]``: the configuration at temperature ``k`` after every iteration
        (iterations 1..n; the minimised start is left out), time = iteration × steps ×
        timestep in ps, ``potential_energy`` attached.
    energies : list of numpy.ndarray
        ``energies[k]``: U (kJ/mol) of ``trajectories[k]`` frames.
    acceptance_rates : numpy.ndarray
        ``(K-1,)`` swap acceptance between neighbouring temperatures ``k``, ``k+1``.
    n_iterations, steps_per_iteration : int
        Iterations stored and MD steps per replica per iteration.
    timestep_ps : float
    wall_time_s : float
        Wall time of this call (sampling and reading).
    storage : pathlib.Path
        The openmmtools NetCDF storage (``*_checkpoint.nc`` next to it holds positions).
    """

    temperatures: np.ndarray
    trajectories: list = field(repr=False)
    energies: list = field(repr=False)
    acceptance_rates: np.ndarray
    n_iterations: int
    steps_per_iteration: int
    timestep_ps: float
    wall_time_s: float
    storage: Path
    replica_states: np.ndarray = field(repr=False, default=None)

    @property
    def n_energy_evaluations(self) -> int:
        """MD force evaluations spent: iterations × replicas × steps per iteration."""
        return self.n_iterations * len(self.temperatures) * self.steps_per_iteration

    @property
    def simulated_time_ps(self) -> float:
        """Simulated time per replica in ps."""
        return self.n_iterations * self.steps_per_iteration * self.timestep_ps

    @property
    def N_k(self) -> np.ndarray:  # noqa: N802 (pymbar's name)
        """Samples per temperature, ``(K,)``."""
        return np.array([len(e) for e in self.energies], dtype=np.int64)

    @property
    def u_kn(self) -> np.ndarray:
        """Reduced potentials ``u_kn[k, n] = U_n / (k_B T_k)`` of all samples, ``(K, N)``."""
        return (1.0 / (KB * self.temperatures))[:, None] * np.concatenate(self.energies)[None, :]

    def summary(self) -> dict:
        """JSON-ready summary: acceptance rates, per-temperature :func:`simulation_summary`."""
        return {
            "temperatures_K": self.temperatures.tolist(),
            "n_iterations": self.n_iterations,
            "steps_per_iteration": self.steps_per_iteration,
            "timestep_ps": self.timestep_ps,
            "simulated_time_per_replica_ns": self.simulated_time_ps / 1000,
            "n_energy_evaluations": self.n_energy_evaluations,
            "wall_time_s": self.wall_time_s,
            "acceptance_rates": self.acceptance_rates.tolist(),
            "per_temperature": [simulation_summary(t) for t in self.trajectories],
            "storage": str(self.storage),
        }


def _default_storage(msys, temperatures, steps, timestep_ps, seed) -> Path:
    key = json.dumps([msys.fingerprint, list(temperatures), steps, timestep_ps, seed])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "parallel_tempering" / f"{msys.name}-{digest}.nc"



def _read_parallel_tempering(storage: Path, checkpoint: Path, temps: np.ndarray, msys,
                             steps: int, timestep_ps: float, platform: str):
    """Demultiplex positions by temperature and recompute energies."""
    import netCDF4
    from openmmtools.multistate import MultiStateReporter

    reporter = MultiStateReporter(str(storage), open_mode="r", checkpoint_interval=1,
                                  checkpoint_storage=checkpoint.name)
    try:
        last = reporter.read_last_iteration(last_checkpoint=False)
        iterations = np.arange(1, last + 1)
        replica_states = np.asarray(reporter.read_replica_thermodynamic_states(iterations))
        accepted, proposed = reporter.read_mixing_statistics(iterations)
    finally:
        reporter.close()
    with netCDF4.Dataset(str(checkpoint), "r") as data:
        positions = np.asarray(data.variables["positions"][1 : last + 1], dtype=np.float32)
    accepted, proposed = accepted.sum(axis=0), proposed.sum(axis=0)
    pairs = np.arange(len(temps) - 1)
    n_acc = accepted[pairs, pairs + 1] + accepted[pairs + 1, pairs]
    n_prop = proposed[pairs, pairs + 1] + proposed[pairs + 1, pairs]
    acceptance = np.where(n_prop > 0, n_acc / np.maximum(n_prop, 1), np.nan)
    replica_of_state = np.argsort(replica_states, axis=1)
    evaluator = _EnergyEvaluator(msys.system, platform)
    times = iterations * steps * timestep_ps
    trajectories, energies = [], []
    for k in range(len(temps)):
        xyz = positions[np.arange(last), replica_of_state[:, k]]
        traj = mdtraj.Trajectory(xyz, msys.mdtraj_topology, time=times)
        attach_energies(traj, evaluator(xyz))
        trajectories.append(traj)
        energies.append(traj.potential_energy)
    return trajectories, energies, acceptance, replica_states, last


def parallel_tempering(
    msys: MolecularSystem,
    temperatures: Sequence[float],
    n_iterations: int,
    steps_per_iteration: int = 500,
    storage: PathLike | None = None,
    timestep_ps: float | None = None,
    friction_per_ps: float = 1.0,
    seed: int | None = None,
    platform: str = "CPU",
    resume: bool = True,
    quiet: bool = False,
) -> ParallelTemperingResult:
    """Parallel tempering (temperature replica exchange) with openmmtools: the reference.

    One replica per temperature; each iteration draws every replica's velocities from
    the Maxwell-Boltzmann distribution at its current temperature (openmmtools swaps
    configurations and velocities without rescaling them), runs ``steps_per_iteration``
    steps of Langevin dynamics (``LangevinMiddleIntegrator``, friction
    ``friction_per_ps``) per replica, then attempts swaps (openmmtools' ``swap-all``
    Gibbs mixing). The replicas
    are minimised before the first iteration; the minimised start (iteration 0) is not
    part of the result, equilibration is left to the analysis (``mbar_reference``
    detects it).

    Storage: openmmtools' ``MultiStateReporter`` NetCDF file with
    ``checkpoint_interval=1``, so positions (and velocities) of every iteration are kept
    in ``<storage stem>_checkpoint.nc`` (a few kB per iteration for a small molecule)
    and a killed run restarts from the last completed iteration. Calling again with the
    same ``storage`` and ``resume=True`` continues it: ``n_iterations`` is the *total*,
    so a larger value extends the run and an equal one only reads it.

    Parameters
    ----------
    msys : MolecularSystem
    temperatures : sequence of float
        Strictly increasing temperatures in K (>= 2).
    n_iterations : int
        Total number of iterations (>= 1).
    steps_per_iteration : int, default 500
        MD steps per replica between exchange attempts.
    storage : path, optional
        NetCDF file. Default: ``cache_dir()/parallel_tempering/<name>-<hash>.nc``, the
        hash covering the system, temperatures, steps, time step and seed, so a repeated
        call resumes (``$OPENMM_TRADE_CACHE`` moves the cache).
    timestep_ps : float, optional
        2 fs with constraints, 1 fs without.
    friction_per_ps : float, default 1.0
    seed : int, optional
        Seeds the integrators and the swap moves, so the same seed reproduces a run bit
        for bit on CPU, also twice in one process (numpy's global generator is saved and
        restored around the run; numba's, which openmmtools' compiled swap-all mixing
        draws from, is reseeded). ``None``: not reproducible.
    platform : str, default "CPU"
    resume : bool, default True
        Continue an existing ``storage``; ``False`` makes an existing file an error.
    quiet : bool, default False

    Returns
    -------
    ParallelTemperingResult

    Examples
    --------
    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> pt = ot.md.parallel_tempering(msys, [300, 350, 400], n_iterations=5,
    ...                               steps_per_iteration=50, storage="/tmp/pt_doc.nc",
    ...                               seed=1, quiet=True)      # doctest: +SKIP
    >>> len(pt.trajectories), pt.trajectories[0].n_frames    # doctest: +SKIP
    (3, 5)
    """
    _check_system(msys)
    temps = checks.temperatures(temperatures, "temperatures", minimum_count=2, increasing=True)
    n_iterations = checks.integer(n_iterations, "n_iterations")
    steps = checks.integer(steps_per_iteration, "steps_per_iteration")
    timestep_ps = default_timestep_ps(msys) if timestep_ps is None else checks.number(
        timestep_ps, "timestep_ps")
    friction_per_ps = checks.number(friction_per_ps, "friction_per_ps", allow_zero=True)
    seed = None if seed is None else checks.seed(seed)
    openmm_platform = _platform(platform)
    if storage is None:
        storage = _default_storage(msys, temps.tolist(), steps, timestep_ps, seed)
    storage = checks.writable_file(storage, "storage")
    if storage.suffix != ".nc":
        raise InputError(f"storage must be a NetCDF path ending in .nc, got {storage}")
    checkpoint = storage.with_name(storage.stem + "_checkpoint.nc")
    lock = exclusive_lock(storage, "parallel-tempering storage")  # one writer per storage
    # All replicas run in this one process; on the CPU platform that is fastest on one core
    # (10 iterations x 8 replicas x 500 steps, implicit alanine dipeptide, 2-core VM: 52-65 s
    # free, 7-8 s pinned; see engine.one_core), the idlest one.
    pin = one_core() if openmm_platform.getName() == "CPU" else contextlib.nullcontext()
    with lock, _quiet_openmmtools(quiet), pin:
        if storage.exists() and not resume:
            raise InputError(f"storage {storage} exists; pass resume=True to continue it or "
                             "choose another path")
        return _run_parallel_tempering(msys, temps, n_iterations, steps, storage, checkpoint,
                                       timestep_ps, friction_per_ps, seed, platform,
                                       openmm_platform, quiet)


@contextlib.contextmanager
def _quiet_openmmtools(quiet: bool):
    """Silence openmmtools' log warnings and the citations it prints to stdout (also when a
    sampler is restored from storage) when ``quiet``."""
    from openmmtools.multistate import MultiStateSampler

    logger = logging.getLogger("openmmtools")
    level, citations = logger.level, MultiStateSampler._global_citation_silence
    if quiet:
        logger.setLevel(logging.ERROR)
        MultiStateSampler._global_citation_silence = True
    try:
        yield
    finally:
        logger.setLevel(level)
        MultiStateSampler._global_citation_silence = citations


def _open_sampler(msys, temps, n_iterations, steps, storage, checkpoint, reporter, timestep_ps,
                  friction_per_ps, context_cache):
    """The openmmtools sampler: restored from ``storage`` (checked to hold these temperatures
    and this system) or created, minimised, with a new storage. ``reporter`` is closed on
    failure."""
    from openmmtools import states
    from openmmtools.multistate import ParallelTemperingSampler

    if storage.exists():
        try:
            sampler = ParallelTemperingSampler.from_storage(reporter)
        except Exception as err:  # noqa: BLE001 - openmmtools raises many kinds
            reporter.close()
            raise CheckpointError(
                f"cannot resume the parallel-tempering storage {storage} ({err}); delete it "
                f"and {checkpoint.name} to start again"
            ) from err
        stored = np.array([s.temperature.value_in_unit(unit.kelvin)
                           for s in sampler._thermodynamic_states])
        metadata = reporter.read_dict("metadata")
        mismatch = []
        if stored.shape != temps.shape or not np.allclose(stored, temps, rtol=1e-9):
            mismatch.append(f"temperatures {stored.tolist()} != {temps.tolist()}")
        if metadata.get("openmm_trade_fingerprint") != msys.fingerprint:
            mismatch.append("a different system")
        if mismatch:
            reporter.close()
            raise CheckpointError(f"cannot resume {storage}: it holds {'; '.join(mismatch)}")
    else:
        from .moves import SeededLangevinDynamicsMove

        move = SeededLangevinDynamicsMove(
            random_seed=0, timestep=timestep_ps * unit.picosecond,
            collision_rate=friction_per_ps / unit.picosecond, n_steps=steps,
            reassign_velocities=False,
        )
        sampler = ParallelTemperingSampler(mcmc_moves=move, number_of_iterations=n_iterations,
                                           online_analysis_interval=None)
        reference = states.ThermodynamicState(msys.system, temperature=temps[0] * unit.kelvin)
        sampler_states = [states.SamplerState(msys.positions * unit.nanometer)
                          for _ in temps]
        try:
            # openmmtools 0.27 needs n_temperatures even when temperatures are given
            sampler.create(reference, sampler_states, reporter,
                           temperatures=[t * unit.kelvin for t in temps],
                           n_temperatures=len(temps),
                           metadata={"openmm_trade_fingerprint": msys.fingerprint})
            sampler.energy_context_cache = sampler.sampler_context_cache = context_cache
            sampler.minimize()
        except BaseException:
            reporter.close()
            for path in (storage, checkpoint):  # an unusable half-created storage
                path.unlink(missing_ok=True)
            raise
    return sampler


def _run_parallel_tempering(msys, temps, n_iterations, steps, storage, checkpoint, timestep_ps,
                            friction_per_ps, seed, platform, openmm_platform, quiet):
    from openmmtools import cache
    from openmmtools.multistate import MultiStateReporter

    start = time.perf_counter()
    context_cache = cache.ContextCache(platform=openmm_platform,
                                       platform_properties=_platform_properties(platform))
    reporter = MultiStateReporter(str(storage), checkpoint_interval=1,
                                  checkpoint_storage=checkpoint.name)
    sampler = _open_sampler(msys, temps, n_iterations, steps, storage, checkpoint, reporter,
                            timestep_ps, friction_per_ps, context_cache)
    sampler.energy_context_cache = sampler.sampler_context_cache = context_cache

    first = sampler.iteration
    rng_state = np.random.get_state()
    bar = _progress(n_iterations, quiet, f"PT {len(temps)} replicas",
                    initial=min(first, n_iterations), what="iteration")
    try:
        if first < n_iterations:
            if seed is not None:
                _seed_sampler(sampler, seed, first)
            if sampler.number_of_iterations < n_iterations:
                sampler.number_of_iterations = n_iterations
            run_start = time.perf_counter()
            while sampler.iteration < n_iterations:
                sampler.run(1)
                bar.update(1)
                ps = (sampler.iteration - first) * steps * timestep_ps * len(temps)
                bar.set_postfix_str(
                    f"{_ns_per_day(ps, time.perf_counter() - run_start):.1f} ns/day (all replicas)",
                    refresh=False)
    finally:
        bar.close()
        np.random.set_state(rng_state)
        reporter.close()
        del sampler

    trajectories, energies, acceptance, replica_states, last = _read_parallel_tempering(
        storage, checkpoint, temps, msys, steps, timestep_ps, platform)
    result = ParallelTemperingResult(
        temperatures=temps, trajectories=trajectories, energies=energies,
        acceptance_rates=acceptance, n_iterations=last, steps_per_iteration=steps,
        timestep_ps=timestep_ps, wall_time_s=time.perf_counter() - start, storage=storage,
        replica_states=replica_states,
    )
    if not quiet:
        rates = ", ".join(f"{a:.2f}" for a in acceptance)
        print(f"parallel_tempering: {last} iterations, {result.simulated_time_ps / 1000:.4g} ns "
              f"per replica; neighbour acceptance {rates}", file=sys.stderr)
    return result


_NUMBA_SEEDER = []  # the compiled seeding function, built (compiled) on first use


def _seed_numba(seed: int) -> None:
    """Seed numba's generator, which is not numpy's: openmmtools' swap-all mixing is an
    ``@njit`` function, and ``np.random`` inside it draws from numba's own per-thread
    state, which only a call from compiled code can seed."""
    if not _NUMBA_SEEDER:
        from numba import njit

        @njit
        def seed_compiled(value):
            np.random.seed(value)

        _NUMBA_SEEDER.append(seed_compiled)
    _NUMBA_SEEDER[0](seed)


def _seed_sampler(sampler, seed: int, first: int) -> None:
    """Seed everything random in a parallel-tempering run that starts at iteration ``first``:
    a fresh stream for every (re)start, reproducible for the same history.

    * the integrators and velocity draws: ``sampler.mcmc_moves`` is a deep copy, so the
      seeds go to the moves the sampler runs (``_mcmc_moves``); seed 0 would mean
      'random' to OpenMM;
    * the swaps: numba's generator (the compiled swap-all mixing) and numpy's global one
      (openmmtools' pure-Python fallback and swap-neighbors scheme).
    """
    for index, move in enumerate(_flatten_moves(sampler._mcmc_moves)):
        move.random_seed = _openmm_seed(seed, first, 3, index)  # one stream per state
    np.random.seed(_openmm_seed(seed, first, 2))
    _seed_numba(_openmm_seed(seed, first, 4))


def _flatten_moves(moves):
    """The moves inside an openmmtools move or list of moves (sequence moves flattened)."""
    if isinstance(moves, (list, tuple)):
        for move in moves:
            yield from _flatten_moves(move)
    elif hasattr(moves, "move_list"):
        yield from _flatten_moves(moves.move_list)
    else:
        yield moves
