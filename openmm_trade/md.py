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

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import select
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mdtraj
import numpy as np
import openmm
from openmm import unit

from .errors import CheckpointError, InputError, WorkerError, one_line
from .files import atomic_write_path, write_bytes_atomic
from .mbar import _statistical_inefficiency
from .system import MolecularSystem
from .units import KB, check_temperature

PathLike = str | os.PathLike

__all__ = [
    "BoundaryReporter",
    "ParallelTemperingResult",
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

#: Name of the trajectory attribute that holds the potential energies (kJ/mol).
ENERGY_ATTRIBUTE = "potential_energy"
#: Name of the trajectory attribute (and HDF5 array) that holds each frame's MD chain.
CHAIN_ATTRIBUTE = "chain_index"

_CHECKPOINT_SUFFIX = ".chk"
_CHAINS_SUFFIX = ".chains"
#: Relative tolerance for "the interval is a whole number of time steps".
_STEP_TOLERANCE = 1e-6
#: Constraint deviation (nm) above which boundary data is reported.
_CONSTRAINT_TOLERANCE = 1e-3


# =============================================================================
# small validated helpers
# =============================================================================
def cache_dir() -> Path:
    """Folder for cached reference data: ``$OPENMM_TRADE_CACHE`` or ``~/.cache/openmm-trade``.

    >>> cache_dir().name in ("openmm-trade", Path(os.environ.get("OPENMM_TRADE_CACHE", "x")).name)
    True
    """
    root = os.environ.get("OPENMM_TRADE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "openmm-trade"


def _check_system(msys) -> MolecularSystem:
    if not isinstance(msys, MolecularSystem):
        raise InputError(f"msys must be an openmm_trade.MolecularSystem, got {type(msys).__name__}")
    return msys


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_float(value, name: str, allow_zero: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        relation = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be a finite number {relation}, got {value!r}")
    return number


def _check_seed(seed) -> int:
    return _check_int(seed, "seed", minimum=0)


def _openmm_seed(*parts: int) -> int:
    """A non-zero 31-bit integrator seed from integers (OpenMM treats 0 as 'random')."""
    digest = hashlib.sha256(repr(tuple(int(p) for p in parts)).encode()).digest()
    return 1 + int.from_bytes(digest[:4], "little") % (2**31 - 2)


def default_timestep_ps(msys: MolecularSystem) -> float:
    """Default MD time step in ps: 0.002 with constraints (HBonds or more), else 0.001.

    >>> import openmm_trade as ot
    >>> default_timestep_ps(ot.systems.load("alanine-dipeptide-vacuum", constraints=None))
    0.001
    """
    return 0.002 if _check_system(msys).constraint_lengths.size else 0.001


def _steps_per(interval_ps: float, timestep_ps: float, name: str) -> int:
    ratio = interval_ps / timestep_ps
    steps = round(ratio)
    if steps < 1 or abs(ratio - steps) > _STEP_TOLERANCE * max(1.0, ratio):
        raise InputError(
            f"{name} must be a whole multiple of the time step {timestep_ps} ps, got "
            f"{interval_ps} ps ({ratio:.6g} steps)"
        )
    return int(steps)


def _platform_properties(name: str) -> dict[str, str]:
    """Context properties: one CPU thread, so that the same seed gives the same trajectory
    (multi-threaded CPU force sums vary at ~1e-7 and chaotic MD amplifies that); for
    molecules of a few dozen atoms one thread is also the fastest."""
    return {"Threads": "1"} if name == "CPU" else {}


def _platform(name: str) -> openmm.Platform:
    count = openmm.Platform.getNumPlatforms()
    names = [openmm.Platform.getPlatform(i).getName() for i in range(count)]
    if name not in names:
        raise InputError(f"platform must be one of {names}, got {name!r}")
    return openmm.Platform.getPlatformByName(name)


def _check_writable(path: PathLike, name: str) -> Path:
    """Check that ``path`` can be created or replaced (its folder is created if needed)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{name} must be a file path, got the directory {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{name}: cannot create the folder {path.parent}: {err}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{name}: {path} is not writable")
    return path


def _progress(total: int, quiet: bool, desc: str, initial: int = 0, what: str = "frame"):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=what, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())


def _ns_per_day(simulated_ps: float, seconds: float) -> float:
    return simulated_ps * 1e-3 * 86400.0 / max(seconds, 1e-9)


# =============================================================================
# energies alongside trajectories
# =============================================================================
class _EnergyEvaluator:
    """Potential energies of frames with a plain OpenMM ``Context`` (float64, kJ/mol)."""

    def __init__(self, system: openmm.System, platform: str = "CPU"):
        self._integrator = openmm.VerletIntegrator(0.001)
        self._context = openmm.Context(system, self._integrator, _platform(platform),
                                       _platform_properties(platform))

    def __call__(self, xyz: np.ndarray) -> np.ndarray:
        energies = np.empty(len(xyz), dtype=np.float64)
        for i, frame in enumerate(xyz):
            self._context.setPositions(np.asarray(frame, dtype=np.float64))
            state = self._context.getState(getEnergy=True)
            energies[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        return energies


def attach_energies(traj: mdtraj.Trajectory, energies) -> mdtraj.Trajectory:
    """Attach energies (kJ/mol) to ``traj`` as ``traj.potential_energy``; returns ``traj``.

    >>> import mdtraj, numpy as np
    >>> top = mdtraj.Topology(); c = top.add_chain(); r = top.add_residue("X", c)
    >>> _ = top.add_atom("A", mdtraj.element.argon, r)
    >>> t = attach_energies(mdtraj.Trajectory(np.zeros((2, 1, 3)), top), [1.0, 2.0])
    >>> t.potential_energy
    array([1., 2.])
    """
    array = np.asarray(energies, dtype=np.float64)
    if array.shape != (traj.n_frames,):
        raise InputError(
            f"energies must have shape ({traj.n_frames},) (one per frame), got {array.shape}"
        )
    setattr(traj, ENERGY_ATTRIBUTE, array)
    return traj


def _check_atoms(top: mdtraj.Topology, msys: MolecularSystem, source: str) -> None:
    """Atom count, names and order of ``top`` must match the system's topology."""
    expected = msys.mdtraj_topology
    if top.n_atoms != expected.n_atoms:
        raise InputError(
            f"{source}: expected the {expected.n_atoms} atoms of {msys.name!r}, found "
            f"{top.n_atoms} atoms (another molecule?)"
        )
    for a, b in zip(top.atoms, expected.atoms, strict=True):
        if (a.name, a.residue.name) != (b.name, b.residue.name):
            raise InputError(
                f"{source}: atom {a.index} is {a.residue.name}:{a.name} but the system "
                f"{msys.name!r} has {b.residue.name}:{b.name} there (atom names and order "
                "must match the system)"
            )


def potential_energies(
    traj: mdtraj.Trajectory, msys: MolecularSystem | None = None, platform: str = "CPU"
) -> np.ndarray:
    """Potential energies (kJ/mol, float64, ``(n_frames,)``) that travel with ``traj``.

    Returns ``traj.potential_energy`` when present; otherwise recomputes ``U(traj.xyz)``
    with OpenMM for ``msys`` (attaching the result), or raises :class:`InputError` if no
    system is given.

    Examples
    --------
    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> traj = ot.md.simulate(msys, 300, n_frames=4, interval_ps=0.1, seed=0,
    ...                       equilibration_ps=0.2, quiet=True)
    >>> sub = traj[::2]                        # a new object: energies not carried
    >>> potential_energies(sub, msys).shape
    (2,)
    """
    energies = getattr(traj, ENERGY_ATTRIBUTE, None)
    if energies is not None and len(energies) == traj.n_frames:
        return energies
    if msys is None:
        raise InputError(
            "traj carries no potential energies (attribute 'potential_energy'); pass msys "
            "to recompute them with OpenMM"
        )
    _check_atoms(traj.topology, _check_system(msys), "traj")
    attach_energies(traj, _EnergyEvaluator(msys.system, platform)(traj.xyz))
    return getattr(traj, ENERGY_ATTRIBUTE)


# =============================================================================
# summary: simulated time, statistical inefficiencies, effective sample size
# =============================================================================
def _circular_inefficiency(angles: np.ndarray) -> float:
    """Statistical inefficiency of an angle series: the larger of those of cos and sin."""
    return max(_statistical_inefficiency(np.cos(angles)), _statistical_inefficiency(np.sin(angles)))


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
    inefficiency = {"U": _statistical_inefficiency(energies)}
    for name, compute in (("phi", mdtraj.compute_phi), ("psi", mdtraj.compute_psi)):
        indices, angles = compute(traj)
        if indices.size:
            inefficiency[name] = max(_circular_inefficiency(a) for a in np.asarray(angles, float).T)
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


# =============================================================================
# HDF5 frame files (mdtraj layout) and checkpoint sidecars
# =============================================================================
class _FrameFile:
    """Append-only mdtraj HDF5 file of coordinates, time (ps) and potential energies."""

    _FIELDS = ("coordinates", "time", "potentialEnergy")

    def __init__(self, path: Path, topology: mdtraj.Topology | None = None, mode: str = "a"):
        from mdtraj.formats import HDF5TrajectoryFile

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mdtraj recommends the .h5 extension
            self._file = HDF5TrajectoryFile(str(path), mode=mode)
        if mode == "w":
            self._file.topology = topology
            self._file.flush()

    def __len__(self) -> int:
        return len(self._file)

    def append(self, xyz: np.ndarray, times: np.ndarray, energies: np.ndarray) -> None:
        """Append frames and flush them to disk."""
        self._file.write(coordinates=np.asarray(xyz, np.float32), time=np.asarray(times),
                         potentialEnergy=np.asarray(energies))

    def add_array(self, name: str, values: np.ndarray) -> None:
        """Store an extra array at the file's root (mdtraj readers ignore it)."""
        self._file._handle.create_array(self._file._handle.root, name, values)
        self._file.flush()

    def truncate(self, n_frames: int) -> None:
        """Drop frames beyond ``n_frames`` (written after the last checkpoint)."""
        root = self._file._handle.root
        for name in self._FIELDS:
            getattr(root, name).truncate(n_frames)
        self._file._frame_index = n_frames
        self._file.flush()

    def frames(self) -> tuple[mdtraj.Topology, np.ndarray]:
        """The topology and the coordinates ``(n_frames, N, 3)`` stored so far."""
        root = self._file._handle.root
        topology = self._file.topology
        if not len(self):
            return topology, np.zeros((0, topology.n_atoms, 3), np.float32)
        return topology, np.asarray(root.coordinates[:], np.float32)

    def close(self) -> None:
        self._file.close()


def _read_frame_file(path: Path):
    """Read an mdtraj HDF5 file: ``(topology, xyz, time, energies or None)``."""
    from mdtraj.formats import HDF5TrajectoryFile

    with HDF5TrajectoryFile(str(path), mode="r") as handle:
        topology = handle.topology
        if len(handle) == 0:
            n_atoms = topology.n_atoms if topology is not None else 0
            return topology, np.zeros((0, n_atoms, 3), np.float32), np.zeros(0), None
        data = handle.read()
    energies = None if data.potentialEnergy is None else np.asarray(data.potentialEnergy, float)
    times = data.time if data.time is not None else np.arange(len(data.coordinates), dtype=float)
    return topology, data.coordinates, np.asarray(times, float), energies


def _write_checkpoint(path: Path, meta: dict, checkpoint: bytes) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta, sort_keys=True)),
             checkpoint=np.frombuffer(checkpoint, dtype=np.uint8))
    write_bytes_atomic(path, buffer.getvalue())


def _read_checkpoint(path: Path) -> tuple[dict, bytes]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"])), data["checkpoint"].tobytes()
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"cannot read the checkpoint {path}: {err}") from None


def save_trajectory(traj: mdtraj.Trajectory, path: PathLike) -> Path:
    """Write ``traj`` and its potential energies to an mdtraj HDF5 file, atomically.

    The energies (``traj.potential_energy``, required) go to mdtraj's
    ``potentialEnergy`` field; :func:`load_trajectory` reads them back.

    >>> import openmm_trade as ot, tempfile, os
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> traj = ot.md.simulate(msys, 300, n_frames=2, interval_ps=0.1, seed=0,
    ...                       equilibration_ps=0.2, quiet=True)
    >>> path = save_trajectory(traj, os.path.join(tempfile.mkdtemp(), "b.h5"))
    >>> load_trajectory(path).potential_energy.shape
    (2,)
    """
    path = _check_writable(path, "path")
    energies = potential_energies(traj)
    with atomic_write_path(path) as tmp:
        frame_file = _FrameFile(tmp, traj.topology, mode="w")
        try:
            frame_file.append(traj.xyz, traj.time, energies)
        finally:
            frame_file.close()
    return path


def load_trajectory(path: PathLike, msys: MolecularSystem | None = None) -> mdtraj.Trajectory:
    """Read an HDF5 file written by :func:`simulate`, :class:`BoundaryReporter` or
    :func:`save_trajectory`, with its potential energies attached.

    Without ``msys`` the stored energies are used (mdtraj stores them as float32, about
    7 significant digits); with ``msys`` this is :func:`load_boundary` (checks and
    float64 energies recomputed with OpenMM).
    """
    if msys is not None:
        return load_boundary(path, msys)
    path = Path(path).expanduser()
    topology, xyz, times, energies = _read_trajectory_file(path)
    if topology is None or energies is None:
        raise InputError(
            f"trajectory file {path}: expected a topology and potential energies (as "
            "simulate writes them), found none; use load_boundary(path, msys)"
        )
    traj = attach_energies(mdtraj.Trajectory(xyz, topology, time=times), energies)
    chain = _read_chain_index(path)
    if chain is not None:
        setattr(traj, CHAIN_ATTRIBUTE, chain)
    return traj


def _read_trajectory_file(path: Path):
    """:func:`_read_frame_file` for a user's file: an :class:`InputError` if unusable."""
    if not path.is_file():
        raise InputError(f"trajectory file {path} not found: expected an existing file")
    try:
        return _read_frame_file(path)
    except Exception as error:  # noqa: BLE001 - PyTables/HDF5 raise many types
        raise InputError(f"trajectory file {path}: expected an mdtraj HDF5 trajectory, found a "
                         f"file that HDF5 cannot read ({type(error).__name__})") from None


# =============================================================================
# simulate
# =============================================================================
def available_cores() -> int:
    """CPU cores this process may run on (``sched_getaffinity``, else ``os.cpu_count()``).

    The default number of MD chains in :func:`simulate`.

    >>> available_cores() >= 1
    True
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _chain_seed(seed: int, chain: int) -> int:
    """Seed of chain ``chain``: chain 0 keeps ``seed`` (a one-chain run is chain 0 of any
    multi-chain run); the others get distinct seeds derived from it."""
    return seed if chain == 0 else _openmm_seed(seed, 2, chain)


def _chain_sizes(n_frames: int, n_chains: int) -> list[int]:
    """Split ``n_frames`` over ``n_chains`` as evenly as possible (first chains larger)."""
    base, extra = divmod(n_frames, n_chains)
    return [base + (i < extra) for i in range(n_chains)]


def _chain_folder(output: Path) -> Path:
    """Folder of the per-chain files and checkpoints of a multi-chain ``output``."""
    return output.with_name(output.name + _CHAINS_SUFFIX)


def _chain_path(folder: Path, chain: int) -> Path:
    return folder / f"chain-{chain}.h5"


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
    n_frames = _check_int(n_frames, "n_frames")
    interval_ps = _check_float(interval_ps, "interval_ps")
    seed = _check_seed(seed)
    equilibration_ps = _check_float(equilibration_ps, "equilibration_ps", allow_zero=True)
    timestep_ps = default_timestep_ps(msys) if timestep_ps is None else _check_float(
        timestep_ps, "timestep_ps")
    friction_per_ps = _check_float(friction_per_ps, "friction_per_ps", allow_zero=True)
    _steps_per(interval_ps, timestep_ps, "interval_ps")
    checkpoint_every = _check_int(checkpoint_every, "checkpoint_every")
    _platform(platform)
    if n_chains is None:
        n_chains = _resumed_chains(output) if resume and output is not None else None
        n_chains = min(available_cores(), n_frames) if n_chains is None else n_chains
    elif _check_int(n_chains, "n_chains") > n_frames:
        raise InputError(f"n_chains must be at most n_frames={n_frames}, got {n_chains}")
    n_chains = int(n_chains)
    run = {"temperature": temperature, "interval_ps": interval_ps,
           "equilibration_ps": equilibration_ps, "timestep_ps": timestep_ps,
           "friction_per_ps": friction_per_ps, "platform": platform,
           "checkpoint_every": checkpoint_every}

    folder = None
    if output is not None:
        output = _check_writable(output, "output")
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
        if resume and ((n_chains > 1 and single) or (n_chains == 1 and folder.exists())):
            made = 1 if single else len(list(folder.glob("chain-*.h5")))
            raise CheckpointError(
                f"cannot resume {output}: it was made with n_chains={made}, now n_chains="
                f"{n_chains}"
            )

    bar = _progress(n_frames, quiet, f"MD {temperature:g} K")
    try:
        if n_chains == 1:
            xyz, times, energies = _run_chain(
                msys, n_frames=n_frames, seed=seed, output=output, resume=resume,
                progress=_bar_updater(bar, interval_ps), **run)
            chain = np.zeros(n_frames, dtype=np.int64)
        else:
            if folder is not None:
                found = len(list(folder.glob("chain-*.h5"))) if folder.exists() else 0
                if resume and found > n_chains:
                    raise CheckpointError(
                        f"cannot resume {output}: it was made with n_chains={found}, now "
                        f"n_chains={n_chains}"
                    )
                folder.mkdir(exist_ok=True)
            jobs = [
                {**run, "n_frames": size, "seed": _chain_seed(seed, c), "resume": resume,
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


def _resumed_chains(output: PathLike) -> int | None:
    """Number of chains of the run stored in ``output`` (None when there is none)."""
    output = Path(output).expanduser()
    if output.with_name(output.name + _CHECKPOINT_SUFFIX).exists():
        return 1
    folder = _chain_folder(output)
    found = len(list(folder.glob("chain-*.h5"))) if folder.is_dir() else 0
    return found or None


def frame_chains(source: mdtraj.Trajectory | PathLike) -> np.ndarray:
    """The MD chain (0, 1, ...) of each frame of a trajectory or an HDF5 file.

    Reads ``traj.chain_index`` (set by :func:`simulate` and :func:`load_trajectory`) or
    the file's ``chain_index`` array; frames without that record are one chain (zeros).
    Consecutive frames of the same chain are consecutive in time; analyses of time series
    (transitions, autocorrelation) must not join the end of one chain to the start of the
    next.

    >>> import numpy as np, mdtraj
    >>> top = mdtraj.Topology(); c = top.add_chain(); r = top.add_residue("X", c)
    >>> _ = top.add_atom("A", mdtraj.element.argon, r)
    >>> frame_chains(mdtraj.Trajectory(np.zeros((3, 1, 3)), top))
    array([0, 0, 0])
    """
    if isinstance(source, mdtraj.Trajectory):
        chain = getattr(source, CHAIN_ATTRIBUTE, None)
        if chain is not None and len(chain) == source.n_frames:
            return np.asarray(chain, dtype=np.int64)
        return np.zeros(source.n_frames, dtype=np.int64)
    path = Path(source).expanduser()
    if not path.is_file():
        raise InputError(f"trajectory file not found: {path}")
    chain = _read_chain_index(path)
    if chain is None:
        from mdtraj.formats import HDF5TrajectoryFile

        with HDF5TrajectoryFile(str(path), mode="r") as handle:
            return np.zeros(len(handle), dtype=np.int64)
    return chain


def _read_chain_index(path: Path) -> np.ndarray | None:
    """The ``chain_index`` array of an HDF5 file written by :func:`simulate`, or None."""
    import tables

    with tables.open_file(str(path), mode="r") as handle:
        if CHAIN_ATTRIBUTE not in handle.root:
            return None
        return np.asarray(handle.root[CHAIN_ATTRIBUTE][:], dtype=np.int64)


def _write_frames(path: Path, topology, xyz, times, energies, chain) -> None:
    """Write frames and their chain index to an mdtraj HDF5 file, atomically."""
    with atomic_write_path(path) as tmp:
        frame_file = _FrameFile(tmp, topology, mode="w")
        try:
            frame_file.append(xyz, times, energies)
            frame_file.add_array(CHAIN_ATTRIBUTE, np.asarray(chain, dtype=np.int64))
        finally:
            frame_file.close()


def _bar_updater(bar, interval_ps: float):
    """Progress callback ``(n, resumed)``: advance ``bar``; show ns/day of new frames."""
    start, new = time.perf_counter(), [0]

    def update(n: int, resumed: bool = False) -> None:
        bar.update(n)
        if not resumed:
            new[0] += n
            speed = _ns_per_day(new[0] * interval_ps, time.perf_counter() - start)
            bar.set_postfix_str(f"{speed:.1f} ns/day", refresh=False)

    return update


def _run_chain(
    msys: MolecularSystem, temperature: float, n_frames: int, interval_ps: float, seed: int,
    equilibration_ps: float, timestep_ps: float, friction_per_ps: float, platform: str,
    output: Path | None, resume: bool, checkpoint_every: int, progress,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chain of :func:`simulate` (arguments already checked): ``(xyz, times, energies)``.

    ``progress(n, resumed)`` is called with the frames kept from a checkpoint
    (``resumed=True``) and then with each new frame."""
    steps_per_frame = _steps_per(interval_ps, timestep_ps, "interval_ps")
    settings = {
        "fingerprint": msys.fingerprint, "temperature": temperature, "interval_ps": interval_ps,
        "timestep_ps": timestep_ps, "friction_per_ps": friction_per_ps, "seed": seed,
        "equilibration_ps": equilibration_ps, "platform": platform,
    }
    checkpoint_path = None
    if output is not None:
        checkpoint_path = output.with_name(output.name + _CHECKPOINT_SUFFIX)

    integrator = openmm.LangevinMiddleIntegrator(
        temperature * unit.kelvin, friction_per_ps / unit.picosecond, timestep_ps * unit.picosecond
    )
    integrator.setRandomNumberSeed(_openmm_seed(seed))
    context = openmm.Context(msys.system, integrator, _platform(platform),
                             _platform_properties(platform))
    evaluator = _EnergyEvaluator(msys.system, platform)

    done_xyz, done_energies = np.zeros((0, msys.n_atoms, 3), np.float32), np.zeros(0)
    frame_file = None
    if checkpoint_path is not None and resume and checkpoint_path.exists():
        meta, blob = _read_checkpoint(checkpoint_path)
        changed = {k: (meta.get(k), v) for k, v in settings.items() if meta.get(k) != v}
        if changed:
            detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise CheckpointError(f"cannot resume {output}: settings differ ({detail})")
        n_done = int(meta["n_frames"])
        if n_done > n_frames:
            raise InputError(
                f"n_frames={n_frames} but {output} already holds {n_done} checkpointed frames"
            )
        frame_file = _FrameFile(output, mode="a")
        if len(frame_file) < n_done:
            frame_file.close()
            raise CheckpointError(
                f"{output} holds {len(frame_file)} frames but its checkpoint says {n_done}"
            )
        try:
            frame_file.truncate(n_done)
            topology, done_xyz = frame_file.frames()
            _check_atoms(topology, msys, str(output))
            done_energies = evaluator(done_xyz)
            try:
                context.loadCheckpoint(blob)
            except openmm.OpenMMException as err:
                raise CheckpointError(
                    f"cannot load the checkpoint {checkpoint_path}: {err}"
                ) from None
        except BaseException:
            frame_file.close()
            raise
    else:
        if output is not None and output.exists():
            _, old_xyz, _, _ = _read_frame_file(output)
            if len(old_xyz):
                raise CheckpointError(
                    f"{output} holds {len(old_xyz)} frames but has no checkpoint "
                    f"{checkpoint_path.name}; it cannot be resumed (move it away)"
                )
        context.setPositions(msys.positions)
        openmm.LocalEnergyMinimizer.minimize(context)
        context.setVelocitiesToTemperature(temperature * unit.kelvin, _openmm_seed(seed, 1))
        integrator.step(int(round(equilibration_ps / timestep_ps)))
        if output is not None:
            frame_file = _FrameFile(output, msys.mdtraj_topology, mode="w")
            _write_checkpoint(checkpoint_path, {**settings, "n_frames": 0},
                              context.createCheckpoint())
    n_done = len(done_xyz)
    if n_done:
        progress(n_done, True)

    xyz = np.empty((n_frames, msys.n_atoms, 3), np.float32)
    energies = np.empty(n_frames)
    xyz[:n_done], energies[:n_done] = done_xyz, done_energies
    times = interval_ps * np.arange(1, n_frames + 1)
    last_saved = n_done
    try:
        for i in range(n_done, n_frames):
            integrator.step(steps_per_frame)
            state = context.getState(getPositions=True)
            xyz[i] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            energies[i] = evaluator(xyz[i : i + 1])[0]
            if not math.isfinite(energies[i]):
                raise RuntimeError(
                    f"simulation of {msys.name!r} blew up at frame {i} (U = {energies[i]}); "
                    "use a smaller timestep_ps or check the system"
                )
            if frame_file is not None and (i + 1 - last_saved >= checkpoint_every
                                           or i + 1 == n_frames):
                frame_file.append(xyz[last_saved : i + 1], times[last_saved : i + 1],
                                  energies[last_saved : i + 1])
                _write_checkpoint(checkpoint_path, {**settings, "n_frames": i + 1},
                                  context.createCheckpoint())
                last_saved = i + 1
            progress(1)
    finally:
        if frame_file is not None:
            frame_file.close()
    return xyz, times, energies


#: Seconds between progress messages of a chain process.
_PROGRESS_EVERY_S = 0.5


def _run_chains(msys: MolecularSystem, jobs: list[dict], progress) -> list[tuple]:
    """Run :func:`_run_chain` for each job in its own child interpreter, in parallel.

    Children are ``python -c`` interpreters talking length-prefixed pickles over pipes
    (the :mod:`openmm_trade.worker_pool` protocol, and for the same reasons: no fork of a
    threaded process, no re-import of the caller's ``__main__``). A child that dies shows
    up as end-of-file on its pipe: the others are stopped and :class:`WorkerError` is
    raised. A child exits when its stdin closes, so none outlives this process.
    """
    from .worker_pool import _describe_exit, _read_message, _stop, _write_message, child_env

    code = "from openmm_trade.md import _chain_main; _chain_main()"
    processes = [
        subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, bufsize=0, env=child_env(),
                         start_new_session=True)  # Ctrl-C goes to this process
        for _ in jobs
    ]
    results: list[tuple | None] = [None] * len(jobs)
    try:
        for proc, job in zip(processes, jobs, strict=True):
            _write_message(proc.stdin.fileno(), (msys, job))
        pending = {proc.stdout.fileno(): c for c, proc in enumerate(processes)}
        while pending:
            ready, _, _ = select.select(list(pending), [], [])
            for fd in ready:
                chain = pending[fd]
                try:
                    kind, detail = _read_message(fd)
                except EOFError:
                    proc = processes[chain]
                    raise WorkerError(
                        f"MD chain {chain} (pid {proc.pid}) {_describe_exit(proc)}; the other "
                        "chains were stopped (resume=True continues from their checkpoints)"
                    ) from None
                if kind == "progress":
                    progress(*detail)
                elif kind == "done":
                    results[chain] = detail
                    del pending[fd]
                elif isinstance(detail, Exception):
                    raise detail
                else:
                    raise WorkerError(f"MD chain {chain} failed:\n{detail}")
    finally:
        _stop(processes, timeout=0.0 if None in results else 5.0)
    return results


def _chain_main() -> None:
    """Body of an MD chain process (see :func:`_run_chains`)."""
    from .worker_pool import _read_message, _write_message

    reply_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed by OpenMM goes to stderr, not the protocol
    msys, job = _read_message(0)

    def watch_parent() -> None:  # the parent closed our stdin or died: stop at once
        while os.read(0, 1 << 16):
            pass
        os._exit(1)

    threading.Thread(target=watch_parent, daemon=True).start()
    pending, last = [0, 0], [time.monotonic()]

    def progress(n: int, resumed: bool = False) -> None:
        if resumed:
            _write_message(reply_fd, ("progress", (n, True)))
            return
        pending[0] += n
        if time.monotonic() - last[0] >= _PROGRESS_EVERY_S:
            _write_message(reply_fd, ("progress", (pending[0], False)))
            pending[0], last[0] = 0, time.monotonic()

    try:
        result = _run_chain(msys, progress=progress, **job)
        if pending[0]:
            _write_message(reply_fd, ("progress", (pending[0], False)))
        _write_message(reply_fd, ("done", result))
    except Exception as err:  # noqa: BLE001 - reported to the parent
        try:
            _write_message(reply_fd, ("error", err))
        except Exception:  # noqa: BLE001 - not picklable
            _write_message(reply_fd, ("error", traceback.format_exc()))


# =============================================================================
# OpenMM reporter for the user's own Simulation
# =============================================================================
class BoundaryReporter:
    """OpenMM reporter that collects frames and potential energies for training.

    Append it to a ``openmm.app.Simulation``; every ``report_interval`` steps it stores
    the positions (not wrapped into a box) and ``U`` of the stored float32 coordinates,
    in memory and, with ``file``, appended and flushed to an mdtraj HDF5 file (time in
    ps, ``potentialEnergy`` in kJ/mol). The topology is taken from
    ``simulation.topology`` at the first report. While the reporter holds the file open,
    HDF5's file locking keeps other processes out unless they set
    ``HDF5_USE_FILE_LOCKING=FALSE``; every frame is on disk as soon as it is reported.

    Parameters
    ----------
    file : path, optional
        HDF5 file; frames are appended if it exists (its atoms must match).
    report_interval : int, default 500
        Steps between frames.

    Examples
    --------
    >>> import openmm
    >>> from openmm import app, unit
    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond,
    ...                                              0.002 * unit.picoseconds)
    >>> simulation = app.Simulation(msys.topology, msys.system, integrator,
    ...                             openmm.Platform.getPlatformByName("CPU"))
    >>> simulation.context.setPositions(msys.positions)
    >>> reporter = ot.md.BoundaryReporter(report_interval=10)
    >>> simulation.reporters.append(reporter)
    >>> simulation.step(30)
    >>> traj = reporter.trajectory(); traj.n_frames, traj.potential_energy.shape
    (3, (3,))
    """

    def __init__(self, file: PathLike | None = None, report_interval: int = 500):
        self._interval = _check_int(report_interval, "report_interval")
        self._path = None if file is None else _check_writable(file, "file")
        self._file = None
        self._topology = None
        self._evaluator = None
        self._xyz: list[np.ndarray] = []
        self._times: list[float] = []
        self._energies: list[float] = []

    @property
    def n_frames(self) -> int:
        """Frames collected so far by this reporter."""
        return len(self._xyz)

    def describeNextReport(self, simulation) -> dict:  # noqa: N802 (OpenMM API)
        """OpenMM reporter protocol: positions and energy, every ``report_interval`` steps."""
        steps = self._interval - simulation.currentStep % self._interval
        return {"steps": steps, "periodic": False, "include": ["positions", "energy"]}

    def _first_report(self, simulation) -> None:
        self._topology = mdtraj.Topology.from_openmm(simulation.topology)
        platform = simulation.context.getPlatform().getName()
        self._evaluator = _EnergyEvaluator(simulation.system, platform)
        if self._path is not None:
            existing = self._path.exists() and self._path.stat().st_size > 0
            if existing:
                topology, _, _, _ = _read_frame_file(self._path)
                if topology is None or [a.name for a in topology.atoms] != [
                        a.name for a in self._topology.atoms]:
                    raise InputError(
                        f"file {self._path} holds frames of other atoms than this simulation"
                    )
            self._file = _FrameFile(self._path, self._topology, mode="a" if existing else "w")

    def report(self, simulation, state) -> None:
        """OpenMM reporter protocol: store one frame."""
        if self._topology is None:
            self._first_report(simulation)
        xyz = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer).astype(np.float32)
        energy = float(self._evaluator(xyz[None])[0])
        now = state.getTime().value_in_unit(unit.picosecond)
        self._xyz.append(xyz)
        self._times.append(now)
        self._energies.append(energy)
        if self._file is not None:
            self._file.append(xyz[None], np.array([now]), np.array([energy]))

    def trajectory(self) -> mdtraj.Trajectory:
        """Frames collected by this reporter, with ``potential_energy`` attached."""
        if not self._xyz:
            raise InputError("the reporter has collected no frames yet (run the simulation)")
        traj = mdtraj.Trajectory(np.array(self._xyz), self._topology, time=np.array(self._times))
        return attach_energies(traj, self._energies)

    def close(self) -> None:
        """Close the HDF5 file (frames already written are safe on disk regardless)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


# =============================================================================
# boundary data from files
# =============================================================================
def _load_one(path: Path, msys: MolecularSystem, stride: int):
    """Load one file: ``(traj, stored energies or None)``, atoms checked."""
    if not path.is_file():
        raise InputError(f"trajectory file {path} not found: expected an existing file")
    if path.suffix.lower() in (".h5", ".hdf5"):
        topology, xyz, times, energies = _read_trajectory_file(path)
        if topology is None:
            raise InputError(f"trajectory file {path}: expected an mdtraj HDF5 file with a "
                             "topology, found none")
        _check_atoms(topology, msys, str(path))
        xyz, times = xyz[::stride], times[::stride]
        energies = None if energies is None else energies[::stride]
        return mdtraj.Trajectory(xyz, msys.mdtraj_topology, time=times), energies
    self_describing = path.suffix.lower() in (".pdb", ".gro", ".mol2", ".cif", ".pdbx")
    try:
        if self_describing:
            traj = mdtraj.load(str(path), stride=stride)
        else:
            traj = mdtraj.load(str(path), top=msys.mdtraj_topology, stride=stride)
    except (ValueError, OSError, TypeError, RuntimeError) as err:
        raise InputError(
            f"trajectory file {path}: expected a trajectory of {msys.name!r} ({msys.n_atoms} "
            f"atoms), found a file mdtraj cannot load ({one_line(err)})"
        ) from None
    _check_atoms(traj.topology, msys, str(path))
    return mdtraj.Trajectory(traj.xyz, msys.mdtraj_topology, time=traj.time), None


def _check_constraints(traj: mdtraj.Trajectory, msys: MolecularSystem, source: str) -> None:
    if not msys.constraint_lengths.size or not traj.n_frames:
        return
    distances = mdtraj.compute_distances(traj, msys.constrained_pairs, periodic=False)
    deviation = float(np.max(np.abs(distances - msys.constraint_lengths[None, :])))
    if deviation > _CONSTRAINT_TOLERANCE:
        warnings.warn(
            f"{source}: constrained bonds deviate from their constraint lengths by up to "
            f"{deviation:.4g} nm (> {_CONSTRAINT_TOLERANCE} nm); was it simulated with the "
            "same constraints as the system?",
            UserWarning, stacklevel=3,
        )


def load_boundary(
    paths: PathLike | Sequence[PathLike],
    msys: MolecularSystem,
    stride: int = 1,
    platform: str = "CPU",
) -> mdtraj.Trajectory:
    """Load MD frames from files as boundary data, checked against the system.

    Any format mdtraj reads (DCD, XTC, TRR, NetCDF, HDF5, PDB, ...); formats without a
    topology use ``msys.mdtraj_topology``. Atom count, names and order must match the
    system (checked where the file names its atoms). A warning reports the largest
    deviation of constrained bonds from their lengths if it exceeds 1e-3 nm. Potential
    energies are always recomputed with OpenMM for ``msys`` (float64); energies stored
    in an HDF5 file are compared and a warning is given if they disagree (a different
    force field or solvent model?).

    Parameters
    ----------
    paths : path or sequence of paths
        Trajectory files, joined in the order given.
    msys : MolecularSystem
        The system the frames belong to.
    stride : int, default 1
        Keep every ``stride``-th frame of each file.
    platform : str, default "CPU"
        OpenMM platform for the energies.

    Returns
    -------
    mdtraj.Trajectory
        With ``potential_energy`` attached.

    Examples
    --------
    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> traj = ot.md.simulate(msys, 300, n_frames=4, interval_ps=0.1, seed=0,
    ...                       equilibration_ps=0.2, quiet=True)
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "boundary.dcd")
    >>> traj.save_dcd(path)
    >>> ot.md.load_boundary(path, msys).n_frames
    4
    """
    _check_system(msys)
    stride = _check_int(stride, "stride")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p).expanduser() for p in paths]
    if not paths:
        raise InputError("paths must name at least one trajectory file, got none")
    evaluator = None
    pieces = []
    for path in paths:
        traj, stored = _load_one(path, msys, stride)
        if not traj.n_frames:
            raise InputError(f"trajectory file {path}: expected at least one frame, found none")
        finite = np.isfinite(traj.xyz).all(axis=(1, 2))
        if not finite.all():
            raise InputError(f"trajectory file {path}: expected finite coordinates, found NaN "
                             f"or infinite values in {np.count_nonzero(~finite)} frame(s), the "
                             f"first at index {np.flatnonzero(~finite)[0]}")
        _check_constraints(traj, msys, str(path))
        evaluator = evaluator or _EnergyEvaluator(msys.system, platform)
        energies = evaluator(traj.xyz)
        bad = np.flatnonzero(~np.isfinite(energies))
        if bad.size:
            raise InputError(f"{path}: frame {bad[0]} has a non-finite energy ({energies[bad[0]]})")
        if stored is not None:
            gap = float(np.max(np.abs(stored - energies), initial=0.0))
            if gap > 1e-4 * max(1.0, float(np.max(np.abs(energies), initial=0.0))):
                warnings.warn(
                    f"{path}: stored potential energies differ from those of {msys.name!r} by "
                    f"up to {gap:.4g} kJ/mol; using the recomputed ones",
                    UserWarning, stacklevel=2,
                )
        pieces.append(attach_energies(traj, energies))
    if len(pieces) == 1:
        return pieces[0]
    joined = mdtraj.join(pieces, check_topology=False)
    return attach_energies(joined, np.concatenate([p.potential_energy for p in pieces]))


# =============================================================================
# parallel tempering reference
# =============================================================================
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


def _seeded_move_class():
    """A LangevinDynamicsMove (LangevinMiddleIntegrator) with a set seed that redraws the
    velocities at the state's temperature before every integration, seeded as well.

    The redraw is what makes the swaps correct: openmmtools exchanges thermodynamic
    states but neither rescales nor (with ``reassign_velocities=False``) redraws the
    velocities, so a replica that moved from 300 K to 450 K would go on with 300 K
    velocities while the swap was accepted on potential energies alone; that biased ⟨U⟩
    low at the hot end and high at the cold end. openmmtools' own redraw
    (``reassign_velocities=True``) takes no seed, hence this one.
    """
    from openmmtools import mcmc

    class SeededLangevinDynamicsMove(mcmc.LangevinDynamicsMove):
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

    SeededLangevinDynamicsMove.__module__ = __name__
    SeededLangevinDynamicsMove.__qualname__ = "SeededLangevinDynamicsMove"
    return SeededLangevinDynamicsMove


def __getattr__(name: str):
    # openmmtools restores moves from storage by module and class name; build lazily so
    # that importing this module does not import openmmtools.
    if name == "SeededLangevinDynamicsMove":
        cls = _seeded_move_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _default_storage(msys, temperatures, steps, timestep_ps, seed) -> Path:
    key = json.dumps([msys.fingerprint, list(temperatures), steps, timestep_ps, seed])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "parallel_tempering" / f"{msys.name}-{digest}.nc"


def _check_temperatures(temperatures) -> np.ndarray:
    try:
        temps = np.asarray(temperatures, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            f"temperatures must be a sequence of numbers in K, got {temperatures!r}"
        ) from None
    if temps.ndim != 1 or temps.size < 2:
        raise InputError(f"temperatures must list >= 2 temperatures in K, got {temperatures!r}")
    check_temperature(temps, name="temperatures")
    if np.any(np.diff(temps) <= 0):
        raise InputError(f"temperatures must be strictly increasing, got {temps.tolist()}")
    return temps


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
    temps = _check_temperatures(temperatures)
    n_iterations = _check_int(n_iterations, "n_iterations")
    steps = _check_int(steps_per_iteration, "steps_per_iteration")
    timestep_ps = default_timestep_ps(msys) if timestep_ps is None else _check_float(
        timestep_ps, "timestep_ps")
    friction_per_ps = _check_float(friction_per_ps, "friction_per_ps", allow_zero=True)
    seed = None if seed is None else _check_seed(seed)
    openmm_platform = _platform(platform)
    if storage is None:
        storage = _default_storage(msys, temps.tolist(), steps, timestep_ps, seed)
    storage = _check_writable(storage, "storage")
    if storage.suffix != ".nc":
        raise InputError(f"storage must be a NetCDF path ending in .nc, got {storage}")
    checkpoint = storage.with_name(storage.stem + "_checkpoint.nc")
    if storage.exists() and not resume:
        raise InputError(f"storage {storage} exists; pass resume=True to continue it or "
                         "choose another path")

    with _quiet_openmmtools(quiet):
        return _run_parallel_tempering(msys, temps, n_iterations, steps, storage, checkpoint,
                                       timestep_ps, friction_per_ps, seed, platform,
                                       openmm_platform, quiet)


@contextlib.contextmanager
def _quiet_openmmtools(quiet: bool):
    """Silence openmmtools' log warnings (and citations, see below) when ``quiet``."""
    logger = logging.getLogger("openmmtools")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _run_parallel_tempering(msys, temps, n_iterations, steps, storage, checkpoint, timestep_ps,
                            friction_per_ps, seed, platform, openmm_platform, quiet):
    from openmmtools import cache, states
    from openmmtools.multistate import MultiStateReporter, ParallelTemperingSampler

    start = time.perf_counter()
    context_cache = cache.ContextCache(platform=openmm_platform,
                                       platform_properties=_platform_properties(platform))
    reporter = MultiStateReporter(str(storage), checkpoint_interval=1,
                                  checkpoint_storage=checkpoint.name)
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
        move_cls = __getattr__("SeededLangevinDynamicsMove")
        move = move_cls(
            random_seed=0, timestep=timestep_ps * unit.picosecond,
            collision_rate=friction_per_ps / unit.picosecond, n_steps=steps,
            reassign_velocities=False,
        )
        sampler = ParallelTemperingSampler(mcmc_moves=move, number_of_iterations=n_iterations,
                                           online_analysis_interval=None)
        sampler._global_citation_silence = quiet  # openmmtools prints citations to stdout
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
