"""OpenMM plumbing of the MD modules: argument checks, platforms, seeds, the time step,
progress bars and an energy evaluator."""

from __future__ import annotations

import contextlib
import hashlib
import os

import numpy as np
import openmm

from ..errors import InputError
from ..progress import shown
from ..system import MolecularSystem

PathLike = str | os.PathLike


#: Relative tolerance for "the interval is a whole number of time steps".
_STEP_TOLERANCE = 1e-6


def _check_system(msys) -> MolecularSystem:
    if not isinstance(msys, MolecularSystem):
        raise InputError(f"msys must be an openmm_trade.MolecularSystem, got {type(msys).__name__}")
    return msys


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


@contextlib.contextmanager
def one_core(index: int = 0):
    """Keep the calling thread, and the OpenMM threads it starts, on one CPU core.

    On the CPU platform a Context hands every step to a worker thread and waits for it; on
    virtual machines a wake-up across cores is slow, so an MD run whose threads sit on
    different cores spends most of its time waiting (measured: 1,040 steps/s unpinned,
    6,380 pinned, implicit alanine dipeptide on a 2-core VM). ``index`` picks the core
    among those this process may use (modulo their number), so parallel chains get
    different cores. Linux only; elsewhere nothing changes.

    >>> with one_core(0):
    ...     pass
    """
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {allowed[index % len(allowed)]})  # 0: the calling thread
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def _platform(name: str) -> openmm.Platform:
    count = openmm.Platform.getNumPlatforms()
    names = [openmm.Platform.getPlatform(i).getName() for i in range(count)]
    if name not in names:
        raise InputError(f"platform must be one of {names}, got {name!r}")
    return openmm.Platform.getPlatformByName(name)


def _progress(total: int, quiet: bool, desc: str, initial: int = 0, what: str = "frame"):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=what, dynamic_ncols=True,
                disable=not shown(quiet))


def _ns_per_day(simulated_ps: float, seconds: float) -> float:
    return simulated_ps * 1e-3 * 86400.0 / max(seconds, 1e-9)


class _EnergyEvaluator:
    """Potential energies of frames (float64, kJ/mol; ``+inf`` where OpenMM fails):
    :class:`~openmm_trade.worker_pool.LocalEvaluator` on this System and platform."""

    def __init__(self, system: openmm.System, platform: str = "CPU"):
        from ..worker_pool import ContextSpec, LocalEvaluator

        _platform(platform)  # a clear InputError for an unknown name
        properties = tuple(sorted(_platform_properties(platform).items()))
        spec = ContextSpec(openmm.XmlSerializer.serialize(system), "", platform, properties)
        self._evaluator = LocalEvaluator(spec)

    def __call__(self, xyz: np.ndarray) -> np.ndarray:
        return self._evaluator.evaluate(np.asarray(xyz), want_forces=False).energies
