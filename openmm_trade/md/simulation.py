"""Langevin MD at one temperature (:func:`simulate`) and the run summary
(:func:`simulation_summary`)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import mdtraj
import numpy as np

from .. import checks
from ..errors import CheckpointError, InputError
from ..files import exclusive_lock
from ..system import MolecularSystem
from ..timeseries import circular_statistical_inefficiency, statistical_inefficiency
from ..topology import backbone_dihedrals
from ..units import check_temperature
from .chains import (
    _CHECKPOINT_SUFFIX,
    _bar_updater,
    _chain_folder,
    _chain_path,
    _chain_seed,
    _chain_sizes,
    _resumed_chains,
    _run_chain,
    _run_chains,
    available_cores,
)
from .engine import (
    PathLike,
    _check_system,
    _platform,
    _progress,
    _steps_per,
    cores_by_idleness,
    default_timestep_ps,
)
from .trajectory import CHAIN_ATTRIBUTE, _write_frames, attach_energies, potential_energies


def simulation_summary(traj: mdtraj.Trajectory, msys: MolecularSystem | None = None) -> dict:
    """Simulated time, statistical inefficiencies and number of independent frames.

    The statistical inefficiency ``g`` (pymbar, in frames) is computed for the potential
    energy U and, where the topology defines them, the backbone torsions φ and ψ. A
    torsion is circular, so its ``g`` is the larger of those of cos(φ) and sin(φ) (no
    jump at ±π); with several φ (ψ) torsions the largest is reported. ``n_effective =
    n_frames / max(g)``. A constant series has ``g = 1``.

    Returns
    -------
    dict
        ``n_frames``, ``simulated_time_ps`` (``n_frames`` times the frame interval),
        ``statistical_inefficiency`` (``{"U": g, "phi": g, "psi": g}``, angles only when
        defined) and ``n_effective``.

    Examples
    --------
    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> traj = ot.md.simulate(msys, 300, n_frames=10, interval_ps=0.1, seed=0,
    ...                       equilibration_ps=0.2, quiet=True)
    >>> sorted(simulation_summary(traj)["statistical_inefficiency"])
    ['U', 'phi', 'psi']
    """
    energies = potential_energies(traj, msys)
    inefficiency = {"U": statistical_inefficiency(energies)}
    for name, atoms in backbone_dihedrals(traj.topology).items():
        if atoms:
            angles = mdtraj.compute_dihedrals(traj, np.array(list(atoms.values())))
            inefficiency[name] = max(circular_statistical_inefficiency(a)
                                     for a in np.asarray(angles, float).T)
    if traj.n_frames > 1:
        interval = float(np.median(np.diff(traj.time)))
    else:
        interval = float(traj.time[0]) if traj.n_frames else 0.0
    return {
        "n_frames": int(traj.n_frames),
        "simulated_time_ps": float(traj.n_frames * interval),
        "statistical_inefficiency": inefficiency,
        "n_effective": float(traj.n_frames / max(inefficiency.values())),
    }


def _format_summary(summary: dict) -> str:
    g = ", ".join(f"g({k})={v:.1f}" for k, v in summary["statistical_inefficiency"].items())
    return (f"{summary['n_frames']} frames, {summary['simulated_time_ps'] / 1000:.4g} ns; {g}; "
            f"~{summary['n_effective']:.0f} independent frames")


def simulate(
    msys: MolecularSystem,
    temperature: float,
    n_frames: int,
    interval_ps: float,
    seed: int,
    equilibration_ps: float = 20.0,
    timestep_ps: float | None = None,
    friction_per_ps: float = 1.0,
    platform: str = "CPU",
    output: PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int = 100,
    quiet: bool = False,
    n_chains: int | None = None,
) -> mdtraj.Trajectory:
    """Langevin MD at one temperature: the boundary samples for training.

    ``n_chains`` independent chains run in parallel processes, one per core by default.
    Each chain starts from the system's positions, is energy-minimised, equilibrated for
    ``equilibration_ps`` with its own seed and then run with a ``LangevinMiddleIntegrator``,
    saving a frame every ``interval_ps``. The chains share ``n_frames`` (the first
    ``n_frames % n_chains`` chains get one frame more) and are returned as one trajectory,
    chain after chain; ``traj.chain_index`` (see :func:`frame_chains`) says which chain made
    each frame. Frame ``i`` of a chain (from 0) has time ``(i + 1) * interval_ps`` ps,
    counted from the start of that chain's production.

    Parameters
    ----------
    msys : MolecularSystem
        The system to simulate.
    temperature : float
        Temperature in K (> 0).
    n_frames : int
        Number of production frames (>= 1), in total over the chains.
    interval_ps : float
        Time between frames in ps; a whole multiple of the time step.
    seed : int
        Seed (>= 0) of the integrators and the initial velocities. Chain 0 uses ``seed``,
        so a one-chain run is the first chain of a multi-chain run; chain ``c > 0`` uses a
        seed derived from ``(seed, c)``. On the CPU platform the same seed and ``n_chains``
        give the same trajectory.
    equilibration_ps : float, default 20.0
        Equilibration of each chain after minimisation, not saved (rounded to whole steps).
    timestep_ps : float, optional
        Default 0.002 ps when the system has constraints, 0.001 ps otherwise.
    friction_per_ps : float, default 1.0
        Langevin friction coefficient in 1/ps.
    platform : str, default "CPU"
        OpenMM platform name ("Reference", "CPU", "CUDA", "OpenCL"). On CPU each Context
        uses one thread, so the same seed gives the same trajectory bit for bit.
    output : path, optional
        HDF5 file (mdtraj layout, with time, potential energies and, for several chains,
        the chain of each frame in the extra array ``chain_index``). With one chain it is
        written as the run goes: every ``checkpoint_every`` frames the new frames are
        appended and flushed, then an OpenMM checkpoint of the integrator and context is
        written atomically to ``output + ".chk"``. With several chains each chain does the
        same in ``output + ".chains/chain-<c>.h5"`` (and ``.chk``), and ``output`` is
        written atomically, once, when every chain has finished; the ``.chains`` folder is
        kept so that a finished run can be extended with a larger ``n_frames``.
    resume : bool, default False
        Continue the run stored in ``output`` from its last checkpoints: each chain drops
        the frames written after its checkpoint and re-simulates them, earlier ones are
        kept, so the result has no duplicates or gaps. Settings (and ``n_chains``) must
        match the checkpoints. Without ``resume`` an existing ``output`` (or its
        ``.chains`` folder) is an error.
    checkpoint_every : int, default 100
        Frames between checkpoints (per chain) when ``output`` is given.
    quiet : bool, default False
        No progress bar (it also hides when stderr is not a TTY) and no printed summary.
    n_chains : int, optional
        Number of chains, each in its own process with one OpenMM CPU thread. Default:
        :func:`available_cores`, at most ``n_frames``; with ``resume``, the number of
        chains of the stored run. ``n_chains=1`` runs in this process.

    Returns
    -------
    mdtraj.Trajectory
        ``n_frames`` frames with ``traj.potential_energy`` (kJ/mol, float64) and
        ``traj.chain_index`` (int, ``(n_frames,)``) attached; see
        :func:`simulation_summary` for statistical inefficiencies.

    Raises
    ------
    InputError
        Bad arguments (checked before anything is simulated), an existing ``output``
        without ``resume``, or an unwritable ``output``.
    CheckpointError
        ``resume`` with a checkpoint made with other settings or an inconsistent file.
    WorkerError
        A chain's process died (the other chains are stopped; their checkpoints stay).

    Examples
    --------
    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> traj = ot.md.simulate(msys, 300, n_frames=3, interval_ps=0.1, seed=1,
    ...                       equilibration_ps=0.2, quiet=True, n_chains=1)
    >>> traj.time
    array([0.1, 0.2, 0.3])
    >>> two = ot.md.simulate(msys, 300, n_frames=3, interval_ps=0.1, seed=1,
    ...                      equilibration_ps=0.2, quiet=True, n_chains=2)
    >>> two.chain_index, two.time
    (array([0, 0, 1]), array([0.1, 0.2, 0.1]))
    """
    _check_system(msys)
    temperature = check_temperature(temperature)
    n_frames = checks.integer(n_frames, "n_frames")
    interval_ps = checks.number(interval_ps, "interval_ps")
    seed = checks.seed(seed)
    equilibration_ps = checks.number(equilibration_ps, "equilibration_ps", allow_zero=True)
    timestep_ps = default_timestep_ps(msys) if timestep_ps is None else checks.number(
        timestep_ps, "timestep_ps")
    friction_per_ps = checks.number(friction_per_ps, "friction_per_ps", allow_zero=True)
    _steps_per(interval_ps, timestep_ps, "interval_ps")
    checkpoint_every = checks.integer(checkpoint_every, "checkpoint_every")
    _platform(platform)
    if n_chains is not None and checks.integer(n_chains, "n_chains") > n_frames:
        raise InputError(f"n_chains must be at most n_frames={n_frames}, got {n_chains}")
    run = {"temperature": temperature, "interval_ps": interval_ps,
           "equilibration_ps": equilibration_ps, "timestep_ps": timestep_ps,
           "friction_per_ps": friction_per_ps, "platform": platform,
           "checkpoint_every": checkpoint_every}

    if output is not None:
        output = checks.writable_file(output, "output")
    # one writer per run: a second process waits here, then resumes or reads the result
    with exclusive_lock(output, "MD run") if output is not None else contextlib.nullcontext():
        return _simulate_locked(msys, n_frames=n_frames, seed=seed, output=output,
                                resume=resume, quiet=quiet, n_chains=n_chains, run=run)


def _check_resumable(output: Path, resume: bool, n_chains: int) -> Path:
    """Refuse an existing ``output`` without ``resume``, and a resume with another number of
    chains than the stored run's (one chain, or more chain files than ``n_chains``);
    returns the run's chain folder."""
    folder = _chain_folder(output)
    if (output.exists() or folder.exists()) and not resume:
        raise InputError(
            f"output {output} already exists; pass resume=True to continue that run or "
            "choose another path"
        )
    single = output.with_name(output.name + _CHECKPOINT_SUFFIX).exists()
    if resume and n_chains > 1 and output.exists() and not (single or folder.exists()):
        raise CheckpointError(
            f"{output} has no checkpoints (no {folder.name} folder); it cannot be resumed "
            "(move it away)"
        )
    made = len(list(folder.glob("chain-*.h5"))) if folder.exists() else 0
    if resume and ((n_chains > 1 and single) or (n_chains == 1 and folder.exists())
                   or made > n_chains):
        raise CheckpointError(
            f"cannot resume {output}: it was made with n_chains={1 if single else made}, now "
            f"n_chains={n_chains}"
        )
    return folder


def _simulate_locked(msys: MolecularSystem, *, n_frames: int, seed: int, output: Path | None,
                     resume: bool, quiet: bool, n_chains: int | None,
                     run: dict) -> mdtraj.Trajectory:
    """The body of :func:`simulate` (arguments already checked), run while holding the
    lock on ``output``."""
    temperature, interval_ps = run["temperature"], run["interval_ps"]
    if n_chains is None:
        n_chains = _resumed_chains(output) if resume and output is not None else None
        n_chains = min(available_cores(), n_frames) if n_chains is None else n_chains
    n_chains = int(n_chains)
    folder = None if output is None else _check_resumable(output, resume, n_chains)

    bar = _progress(n_frames, quiet, f"MD {temperature:g} K")
    try:
        if n_chains == 1:
            xyz, times, energies = _run_chain(
                msys, n_frames=n_frames, seed=seed, output=output, resume=resume,
                progress=_bar_updater(bar, interval_ps), **run)
            chain = np.zeros(n_frames, dtype=np.int64)
        else:
            if folder is not None:
                folder.mkdir(exist_ok=True)
            cores = cores_by_idleness()  # chain c on the c-th idlest core
            jobs = [
                {**run, "n_frames": size, "seed": _chain_seed(seed, c), "resume": resume,
                 "core": cores[c % len(cores)],
                 "output": None if folder is None else _chain_path(folder, c)}
                for c, size in enumerate(_chain_sizes(n_frames, n_chains))
            ]
            parts = _run_chains(msys, jobs, _bar_updater(bar, interval_ps))
            xyz, times, energies = (np.concatenate(p) for p in zip(*parts, strict=True))
            chain = np.repeat(np.arange(n_chains), [len(p[0]) for p in parts])
            if output is not None:
                _write_frames(output, msys.mdtraj_topology, xyz, times, energies, chain)
    finally:
        bar.close()

    traj = attach_energies(mdtraj.Trajectory(xyz, msys.mdtraj_topology, time=times), energies)
    setattr(traj, CHAIN_ATTRIBUTE, chain)
    if not quiet:
        print(f"simulate: {_format_summary(simulation_summary(traj))}", file=sys.stderr)
    return traj
