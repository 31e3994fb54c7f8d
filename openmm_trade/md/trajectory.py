"""Trajectories with their potential energies: attributes, mdtraj HDF5 frame files,
checkpoint sidecars, :func:`save_trajectory`, :func:`load_trajectory` and the chain record
(:func:`frame_chains`)."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import mdtraj
import numpy as np

from .. import checks
from ..errors import CheckpointError, InputError
from ..files import atomic_write_path, write_bytes_atomic
from ..system import MolecularSystem
from .engine import PathLike, _check_system, _EnergyEvaluator

#: Name of the trajectory attribute that holds the potential energies (kJ/mol).
ENERGY_ATTRIBUTE = "potential_energy"
#: Name of the trajectory attribute (and HDF5 array) that holds each frame's MD chain.
CHAIN_ATTRIBUTE = "chain_index"


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
    path = checks.writable_file(path, "path")
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
        from .boundary import load_boundary  # boundary reads files with this module

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
