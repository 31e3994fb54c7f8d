"""Boundary data from trajectory files, checked against the system (:func:`load_boundary`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import mdtraj
import numpy as np

from .. import checks
from ..errors import InputError, one_line
from ..system import MolecularSystem
from .engine import PathLike, _check_system, _EnergyEvaluator
from .trajectory import _check_atoms, _read_trajectory_file, attach_energies

#: Constraint deviation (nm) above which boundary data is reported.
_CONSTRAINT_TOLERANCE = 1e-3


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
    stride = checks.integer(stride, "stride")
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
