"""An OpenMM reporter that collects boundary frames from the user's own ``Simulation``."""

from __future__ import annotations

import mdtraj
import numpy as np
from openmm import unit

from .. import checks
from ..errors import InputError
from .engine import PathLike, _EnergyEvaluator
from .trajectory import _FrameFile, _read_frame_file, attach_energies


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
        self._interval = checks.integer(report_interval, "report_interval")
        self._path = None if file is None else checks.writable_file(file, "file")
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
