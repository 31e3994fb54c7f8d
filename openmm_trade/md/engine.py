"""OpenMM plumbing of the MD modules: argument checks, platforms, seeds, the time step,
progress bars and an energy evaluator."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from pathlib import Path

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


#: Seconds over which :func:`cores_by_idleness` watches the cores.
IDLENESS_WINDOW_S = 0.1


def _cpu_busy_ticks(stat_text: str) -> dict[int, int]:
    """Busy clock ticks per core (everything but idle and iowait) from ``/proc/stat`` text.

    >>> _cpu_busy_ticks(f"cpu  9 0 9 9 0{chr(10)}cpu0 5 0 1 100 3{chr(10)}cpu1 1 0 0 90 0 0")
    {0: 6, 1: 1}
    """
    busy = {}
    for line in stat_text.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(f) for f in fields]
            busy[int(name[3:])] = sum(ticks) - sum(ticks[3:5])  # fields 4, 5: idle, iowait
    return busy


def order_by_idleness(cores, busy_before: dict[int, int], busy_after: dict[int, int]
                      ) -> list[int]:
    """``cores`` sorted by the busy ticks each gained between two readings, idlest first
    (ties, and cores missing from a reading, keep their order).

    >>> order_by_idleness([0, 1, 2], {0: 0, 1: 0, 2: 0}, {0: 9, 1: 0, 2: 4})
    [1, 2, 0]
    """
    def gained(core: int) -> float:
        if core in busy_before and core in busy_after:
            return busy_after[core] - busy_before[core]
        return math.inf

    return sorted(cores, key=gained)  # sorted() is stable: ties keep their order


def cores_by_idleness(window_s: float = IDLENESS_WINDOW_S) -> list[int]:
    """The cores this process may use, idlest first over the next ``window_s`` seconds.

    Read from ``/proc/stat`` (Linux); elsewhere, or when it cannot be read, the cores in
    their own order. MD pins each chain to one of these (:func:`one_core`), so that a
    second job on the same machine takes the core the first one leaves free instead of
    sharing it.

    >>> cores = cores_by_idleness(0.0)
    >>> len(cores) == len(set(cores)) >= 1
    True
    """
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    if len(allowed) < 2:
        return allowed
    try:
        before = _cpu_busy_ticks(Path("/proc/stat").read_text())
        time.sleep(window_s)
        after = _cpu_busy_ticks(Path("/proc/stat").read_text())
    except (OSError, ValueError, IndexError):
        return allowed
    return order_by_idleness(allowed, before, after)


@contextlib.contextmanager
def one_core(core: int | None = None):
    """Keep the calling thread, and the OpenMM threads it starts, on one CPU core.

    On the CPU platform a Context hands every step to a worker thread and waits for it; on
    virtual machines a wake-up across cores is slow, so an MD run whose threads sit on
    different cores spends most of its time waiting (measured: 1,040 steps/s unpinned,
    6,380 pinned, implicit alanine dipeptide on a 2-core VM). ``core`` is a core number
    (one this process may not use is taken modulo the allowed ones); ``None`` takes the
    idlest core now (:func:`cores_by_idleness`), so that two jobs started one after the
    other do not share one core. Linux only; elsewhere nothing changes.

    >>> with one_core():
    ...     pass
    """
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    allowed = sorted(os.sched_getaffinity(0))
    if core is None:
        core = cores_by_idleness()[0]
    elif core not in allowed:
        core = allowed[core % len(allowed)]
    os.sched_setaffinity(0, {core})  # 0: the calling thread
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
