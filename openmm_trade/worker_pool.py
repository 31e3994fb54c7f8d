"""OpenMM evaluation back ends used by :class:`openmm_trade.OpenMMEnergy`.

This module deliberately imports neither torch nor the rest of the package, so that a
worker process starts quickly (``python -m openmm_trade.worker_pool`` needs only numpy and
openmm) and executor tasks unpickle cheaply.

Three back ends share one interface, ``evaluate(positions, want_forces) -> BatchResult``
and ``close()``:

* :class:`LocalEvaluator` -- one ``Context`` in the calling process (no IPC);
* :class:`WorkerPool` -- ``n_workers`` child interpreters, each owning a ``Context``;
* :class:`ExecutorEvaluator` -- tasks on any ``concurrent.futures.Executor`` (a
  ``ProcessPoolExecutor``, a dask ``Client.get_executor()``, ...) running the
  module-level :func:`evaluate_task`, which caches its ``Context`` per thread keyed by
  the system fingerprint.

Why child interpreters started with :mod:`subprocess` (not ``fork``, not
``multiprocessing``): forking a process whose torch/OpenMP/OpenMM thread pools are
running can deadlock the child, so workers must start from a fresh interpreter. The
``spawn``/``forkserver`` start methods of :mod:`multiprocessing` do that but re-import
the caller's ``__main__``, which breaks scripts without an ``if __name__ == "__main__"``
guard. A ``python -m openmm_trade.worker_pool`` child talking length-prefixed pickles
over its stdin/stdout pipes has neither problem, and a dead worker shows up at once as
end-of-file on its pipe (so the caller raises ``WorkerError`` instead of waiting), while a
dead caller shows up in the worker as end-of-file on stdin (so workers never outlive
it).

Example
-------
>>> import numpy as np
>>> import openmm_trade as ot
>>> msys = ot.systems.load("alanine-dipeptide-vacuum")
>>> spec = ContextSpec.from_system(msys, "Reference")
>>> result = LocalEvaluator(spec).evaluate(msys.positions[None], want_forces=True)
>>> result.energies.shape, result.forces.shape, result.n_failed
((1,), (1, 22, 3), 0)
"""

from __future__ import annotations

import collections
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import weakref
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import openmm
from openmm import unit

_KJ_PER_MOL = unit.kilojoule_per_mole
_KJ_PER_MOL_NM = unit.kilojoule_per_mole / unit.nanometer
_HEADER = struct.Struct("<Q")
#: seconds a worker may take to import OpenMM and build its Context
START_TIMEOUT = 120.0
#: seconds given to workers to exit on their own at close() before they are killed
STOP_TIMEOUT = 2.0


def _worker_error(message: str) -> Exception:
    """``openmm_trade.errors.WorkerError`` (imported lazily: workers never need it)."""
    from .errors import WorkerError

    return WorkerError(message)


# --------------------------------------------------------------------------- kernel
@dataclass(frozen=True)
class ContextSpec:
    """Everything a process needs to build the same OpenMM ``Context`` (picklable).

    Attributes
    ----------
    system_xml : str
        The System serialized with ``openmm.XmlSerializer``.
    fingerprint : str
        ``MolecularSystem.fingerprint``; with the platform and its properties, the key
        under which executor processes cache their Context.
    platform : str
        OpenMM platform name (``"Reference"``, ``"CPU"``, ``"CUDA"``, ``"OpenCL"``).
    properties : tuple of (str, str)
        Platform properties, sorted.
    """

    system_xml: str
    fingerprint: str
    platform: str
    properties: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_system(cls, msys, platform: str, properties: dict | None = None) -> ContextSpec:
        """Spec for a ``MolecularSystem`` on ``platform`` with ``properties``."""
        props = tuple(sorted((str(k), str(v)) for k, v in (properties or {}).items()))
        return cls(msys.system_xml, msys.fingerprint, platform, props)

    @property
    def key(self) -> tuple:
        """Cache key: (fingerprint, platform, properties)."""
        return (self.fingerprint, self.platform, self.properties)

    def with_properties(self, **properties: str) -> ContextSpec:
        """A copy with some properties added or replaced."""
        merged = dict(self.properties) | {k: str(v) for k, v in properties.items()}
        return ContextSpec(self.system_xml, self.fingerprint, self.platform,
                           tuple(sorted(merged.items())))

    def create(self) -> openmm.Context:
        """Build the Context (the integrator is never stepped; it is kept alive by it)."""
        system = openmm.XmlSerializer.deserialize(self.system_xml)
        integrator = openmm.VerletIntegrator(0.001)
        platform = openmm.Platform.getPlatformByName(self.platform)
        context = openmm.Context(system, integrator, platform, dict(self.properties))
        context._trade_keepalive = (system, integrator)
        return context


class BatchResult(NamedTuple):
    """Energies (kJ/mol), forces (kJ/mol/nm, or ``None``) and failures of one batch.

    Failed samples have energy ``+inf`` and zero force; ``first_error`` describes the
    first failure (``None`` when ``n_failed == 0``).
    """

    energies: np.ndarray
    forces: np.ndarray | None
    n_failed: int
    first_error: str | None

    @classmethod
    def concatenate(cls, parts: list[BatchResult]) -> BatchResult:
        """Join the results of consecutive chunks, in order."""
        forces = None if parts[0].forces is None else np.concatenate([p.forces for p in parts])
        errors = [p.first_error for p in parts if p.first_error is not None]
        return cls(np.concatenate([p.energies for p in parts]), forces,
                   sum(p.n_failed for p in parts), errors[0] if errors else None)


def _forces_reader():
    """Fastest available ``(state, out) -> None`` copying forces (kJ/mol/nm) into ``out``.

    ``State._getVectorAsNumpy`` (used by ``State.getForces(asNumpy=True)`` itself) fills a
    preallocated array and skips ~20 us of unit handling per call; the public API is
    the fallback for OpenMM builds without it.
    """
    if hasattr(openmm.State, "_getVectorAsNumpy"):
        def read(state, out):
            state._getVectorAsNumpy(openmm.State.Forces, out)
    else:  # pragma: no cover - depends on the OpenMM build
        def read(state, out):
            out[...] = state.getForces(asNumpy=True).value_in_unit(_KJ_PER_MOL_NM)
    return read


_read_forces = _forces_reader()


def evaluate(context: openmm.Context, positions: np.ndarray, want_forces: bool = True
             ) -> BatchResult:
    """Energies and forces of each conformation with ``setPositions`` + ``getState``.

    Positions are used as given (constraints are not applied). A conformation with
    non-finite coordinates is not sent to OpenMM; one for which OpenMM raises, or whose
    energy or forces are not finite, gets energy ``+inf`` and zero force. The other
    conformations are unaffected.

    Parameters
    ----------
    context : openmm.Context
    positions : numpy.ndarray
        ``(B, N, 3)`` in nm.
    want_forces : bool
        Also return forces (``False`` skips their transfer).

    Examples
    --------
    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> context = ContextSpec.from_system(msys, "Reference").create()
    >>> x = np.stack([msys.positions, np.full((22, 3), np.nan)])
    >>> r = evaluate(context, x)
    >>> bool(np.isfinite(r.energies[0])), float(r.energies[1]), r.n_failed
    (True, inf, 1)
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    n = positions.shape[0]
    energies = np.full(n, np.inf)
    forces = np.zeros_like(positions) if want_forces else None
    finite_input = np.isfinite(positions).all(axis=(1, 2))
    first_error = None if finite_input.all() else "non-finite (NaN or inf) coordinates"
    for i in np.flatnonzero(finite_input):
        try:
            context.setPositions(positions[i])
            state = context.getState(getEnergy=True, getForces=want_forces)
            energies[i] = state.getPotentialEnergy().value_in_unit(_KJ_PER_MOL)
            if want_forces:
                _read_forces(state, forces[i])
        except Exception as err:  # OpenMMException, e.g. "Particle coordinate is NaN"
            energies[i] = np.inf
            first_error = first_error or f"OpenMM raised {type(err).__name__}: {err}"
    bad = ~np.isfinite(energies)
    if want_forces:
        bad |= ~np.isfinite(forces).all(axis=(1, 2))
        forces[bad] = 0.0
    if first_error is None and bad.any():
        first_error = "OpenMM returned a non-finite energy or force (overlapping atoms?)"
    energies[bad] = np.inf
    return BatchResult(energies, forces, int(bad.sum()), first_error)


def _split(positions: np.ndarray, n_chunks: int) -> list[np.ndarray]:
    """Consecutive, non-empty, nearly equal chunks of a batch."""
    return [c for c in np.array_split(positions, min(n_chunks, len(positions))) if len(c)]


# --------------------------------------------------------------------------- in-process
class LocalEvaluator:
    """One Context in the calling process: the fast path, no inter-process traffic."""

    def __init__(self, spec: ContextSpec):
        self._context = spec.create()

    def evaluate(self, positions: np.ndarray, want_forces: bool = True) -> BatchResult:
        """Evaluate a ``(B, N, 3)`` batch; see :func:`evaluate`."""
        return evaluate(self._context, positions, want_forces)

    def close(self) -> None:
        """Release the Context."""
        self._context = None


# --------------------------------------------------------------------------- executor
_TASK_CACHE = threading.local()
_TASK_CACHE_SIZE = 4


def _cached_context(spec: ContextSpec) -> openmm.Context:
    """This thread's Context for ``spec`` (built on first use; a small LRU cache)."""
    cache = getattr(_TASK_CACHE, "contexts", None)
    if cache is None:
        cache = _TASK_CACHE.contexts = collections.OrderedDict()
    key = spec.key
    if key in cache:
        cache.move_to_end(key)
    else:
        cache[key] = spec.create()
        while len(cache) > _TASK_CACHE_SIZE:
            cache.popitem(last=False)
    return cache[key]


def evaluate_task(spec: ContextSpec, positions: np.ndarray, want_forces: bool = True
                  ) -> BatchResult:
    """Executor task: evaluate a chunk with this process's cached Context for ``spec``.

    Module-level and picklable by reference, so any ``concurrent.futures.Executor`` can
    run it. The Context is built once per executor thread and system fingerprint, then
    reused.

    Examples
    --------
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> spec = ContextSpec.from_system(msys, "Reference")
    >>> with ThreadPoolExecutor(1) as pool:
    ...     pool.submit(evaluate_task, spec, msys.positions[None]).result().n_failed
    0
    """
    return evaluate(_cached_context(spec), positions, want_forces)


class ExecutorEvaluator:
    """Split each batch into ``n_chunks`` :func:`evaluate_task` calls on ``executor``."""

    def __init__(self, spec: ContextSpec, executor: Executor, n_chunks: int):
        self._spec, self._executor, self._n_chunks = spec, executor, n_chunks

    def evaluate(self, positions: np.ndarray, want_forces: bool = True) -> BatchResult:
        """Evaluate a ``(B, N, 3)`` batch; executor failures raise ``WorkerError``."""
        chunks = _split(positions, self._n_chunks)
        try:
            futures = [self._executor.submit(evaluate_task, self._spec, c, want_forces)
                       for c in chunks]
            return BatchResult.concatenate([f.result() for f in futures])
        except Exception as err:
            raise _worker_error(
                f"an executor task evaluating OpenMM energies failed "
                f"({type(err).__name__}: {err}); if an executor worker died, the executor "
                "may need to be restarted"
            ) from err

    def close(self) -> None:
        """Nothing to release: the executor belongs to the caller."""


# --------------------------------------------------------------------------- pipes
def _write_message(fd: int, obj) -> None:
    """Send one length-prefixed pickle over a file descriptor."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, remaining = [], n
    while remaining:
        if deadline is not None:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_message(fd: int, deadline: float | None = None):
    """Receive one length-prefixed pickle; ``EOFError`` when the writer is gone."""
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size, deadline))
    return pickle.loads(_read_exactly(fd, size, deadline))


def _worker_main() -> None:
    """Body of ``python -m openmm_trade.worker_pool``: serve requests until stdin closes."""
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed by OpenMM or plugins goes to stderr, not the protocol
    try:
        spec = _read_message(0)
        try:
            context = spec.create()
        except Exception:
            _write_message(reply_fd, ("error", traceback.format_exc()))
            return
        _write_message(reply_fd, ("ready", context.getPlatform().getName()))
        while True:
            positions, want_forces = _read_message(0)
            try:
                reply = ("ok", evaluate(context, positions, want_forces))
            except Exception:
                reply = ("error", traceback.format_exc())
            _write_message(reply_fd, reply)
    except (EOFError, BrokenPipeError):  # the parent closed the pool or died
        return


# --------------------------------------------------------------------------- pool
def _describe_exit(proc: subprocess.Popen) -> str:
    try:
        code = proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        return "closed its pipe"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def child_env() -> dict[str, str]:
    """Environment of a child interpreter: this one's, with this package importable."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _stop(processes: list[subprocess.Popen], timeout: float = STOP_TIMEOUT) -> None:
    """Close the workers' stdin (they exit on EOF); kill whoever is still alive after
    ``timeout`` seconds. Idempotent; safe at interpreter exit."""
    for proc in processes:
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
    deadline = time.monotonic() + timeout
    for proc in processes:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class WorkerPool:
    """``n_workers`` worker interpreters, each owning a Context built from ``spec``.

    A batch is split into ``n_workers`` consecutive chunks, sent to all workers, and the
    results are joined in order. A worker that dies (or a protocol failure) shuts the
    whole pool down and raises ``WorkerError``; so does any later call. Workers are
    stopped by :meth:`close`, when the pool is garbage collected, and at interpreter exit
    (``weakref.finalize``); they also exit by themselves when the parent process dies.

    Parameters
    ----------
    spec : ContextSpec
        What each worker builds (its properties should already split CPU threads).
    n_workers : int
    start_timeout : float
        Seconds to wait for every worker to report its Context is ready.
    """

    def __init__(self, spec: ContextSpec, n_workers: int, start_timeout: float = START_TIMEOUT):
        self.n_workers = n_workers
        self._broken: str | None = None
        env = child_env()
        self._processes = [
            subprocess.Popen(
                [sys.executable, "-m", "openmm_trade.worker_pool"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env,
                start_new_session=True,  # Ctrl-C goes to the caller, which stops the pool
            )
            for _ in range(n_workers)
        ]
        self._finalizer = weakref.finalize(self, _stop, self._processes)
        try:
            for proc in self._processes:
                _write_message(proc.stdin.fileno(), spec)
            deadline = time.monotonic() + start_timeout
            for index, proc in enumerate(self._processes):
                status, detail = self._receive(index, proc, deadline)
                if status != "ready":
                    raise _worker_error(
                        f"OpenMM worker {index} could not build its Context on platform "
                        f"{spec.platform!r} with properties {dict(spec.properties)}:\n{detail}"
                    )
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [proc.pid for proc in self._processes]

    def _fail(self, message: str) -> Exception:
        """Mark the pool broken, kill every worker at once, return the error to raise."""
        self._broken = message
        if self._finalizer.detach() is not None:
            _stop(self._processes, timeout=0.0)
        return _worker_error(message)

    def _receive(self, index: int, proc: subprocess.Popen, deadline: float | None = None):
        try:
            return _read_message(proc.stdout.fileno(), deadline)
        except EOFError:
            raise self._fail(
                f"OpenMM worker {index} (pid {proc.pid}) {_describe_exit(proc)}; the worker "
                "pool has been shut down. Create a new OpenMMEnergy to continue."
            ) from None
        except TimeoutError:
            raise self._fail(
                f"OpenMM worker {index} (pid {proc.pid}) did not start within the timeout"
            ) from None

    def evaluate(self, positions: np.ndarray, want_forces: bool = True) -> BatchResult:
        """Evaluate a ``(B, N, 3)`` batch on the workers; see :func:`evaluate`."""
        if self._broken is not None:
            raise _worker_error(f"the worker pool is unusable: {self._broken}")
        chunks = _split(positions, self.n_workers)
        busy = list(enumerate(self._processes))[: len(chunks)]
        replies = []
        try:
            for (index, proc), chunk in zip(busy, chunks, strict=True):
                try:
                    _write_message(proc.stdin.fileno(), (chunk, want_forces))
                except (BrokenPipeError, ValueError):
                    raise self._fail(
                        f"OpenMM worker {index} (pid {proc.pid}) {_describe_exit(proc)}; the "
                        "worker pool has been shut down. Create a new OpenMMEnergy to continue."
                    ) from None
            replies = [self._receive(index, proc) for index, proc in busy]
        except BaseException as err:  # e.g. KeyboardInterrupt: replies are out of step now
            if self._broken is None:
                self._fail(f"an evaluation was interrupted ({type(err).__name__})")
            raise
        errors = [detail for status, detail in replies if status != "ok"]
        if errors:
            raise _worker_error(f"an OpenMM worker failed unexpectedly:\n{errors[0]}")
        return BatchResult.concatenate([detail for _, detail in replies])

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        self._broken = self._broken or "the pool was closed"
        self._finalizer()


if __name__ == "__main__":
    # Run the copy imported under its real name, so that pickles name
    # ``openmm_trade.worker_pool.BatchResult`` and not ``__main__.BatchResult``.
    from openmm_trade.worker_pool import _worker_main as main

    main()
