"""Energies: the common ``Energy`` interface and ``OpenMMEnergy``, the OpenMM bridge.

An ``Energy`` maps a batch of samples ``x`` of shape ``(B, *event_shape)`` to potential
energies ``U(x)`` of shape ``(B,)`` in kJ/mol (float64), differentiable with autograd.
A failed or non-finite evaluation is ``+inf`` and is counted in ``n_failed``.

Example
-------
>>> import torch
>>> from openmm_trade.toys import HarmonicOscillator
>>> energy = HarmonicOscillator(spring_constant=100.0)
>>> energy(torch.zeros(3, 1)).tolist()
[0.0, 0.0, 0.0]
"""

from __future__ import annotations

import abc
import logging
import os
import threading
from concurrent.futures import Executor

import numpy as np
import openmm
import torch

from .errors import InputError, WorkerError
from .system import MolecularSystem
from .units import KB, check_temperature
from .worker_pool import BatchResult, ContextSpec, ExecutorEvaluator, LocalEvaluator, WorkerPool

logger = logging.getLogger(__name__)


class Energy(abc.ABC):
    """Base class of batched potential energies ``U(x)`` in kJ/mol.

    Subclasses set ``event_shape`` (shape of one sample, e.g. ``(N, 3)``) and implement
    :meth:`_energy` on a validated tensor. Counters: ``n_evaluations`` (samples
    evaluated) and ``n_failed`` (samples whose energy was not finite, returned as +inf).
    """

    event_shape: tuple[int, ...] = ()

    def __init__(self) -> None:
        self.n_evaluations = 0
        self.n_failed = 0

    @abc.abstractmethod
    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        """Energies ``(B,)`` float64 for a validated ``x`` of shape ``(B, *event_shape)``."""

    def check_input(self, x, name: str = "x") -> torch.Tensor:
        """Validate a batch: a tensor of shape ``(B, *event_shape)``; returns it."""
        if not isinstance(x, torch.Tensor):
            shape = ", ".join(map(str, self.event_shape))
            raise InputError(
                f"{name} must be a torch.Tensor of shape (B, {shape}), got {type(x).__name__}"
            )
        if x.dim() != 1 + len(self.event_shape) or tuple(x.shape[1:]) != tuple(self.event_shape):
            expected = "(B, " + ", ".join(map(str, self.event_shape)) + ")"
            raise InputError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Potential energies ``(B,)`` in kJ/mol, float64; ``+inf`` where evaluation failed."""
        x = self.check_input(x)
        energies = self._energy(x)
        bad = ~torch.isfinite(energies.detach())
        if bad.any():
            energies = torch.where(bad, torch.full_like(energies, float("inf")), energies)
        self.n_evaluations += x.shape[0]
        self.n_failed += int(bad.sum())
        return energies

    def reduced(self, x: torch.Tensor, temperature) -> torch.Tensor:
        """Reduced energies ``U / (k_B T)``; ``temperature`` a float or ``(B,)`` tensor in K."""
        x = self.check_input(x)
        check_temperature(temperature, batch_size=x.shape[0])
        if isinstance(temperature, torch.Tensor):
            temperature = temperature.to(torch.float64)
        return self(x) / (KB * temperature)


class _OpenMMEnergyFunction(torch.autograd.Function):
    """``U(x)`` from OpenMM; the backward pass multiplies the stored ``-F`` by the
    incoming gradient (no finite differences, no cache)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, energy: OpenMMEnergy) -> torch.Tensor:
        result = energy._evaluate(_float64_numpy(x), want_forces=True)
        ctx.save_for_backward(torch.from_numpy(-result.forces))
        ctx.input_dtype, ctx.input_device = x.dtype, x.device
        return torch.from_numpy(result.energies).to(x.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (gradient,) = ctx.saved_tensors
        grad_x = grad_output.to("cpu", torch.float64)[:, None, None] * gradient
        return grad_x.to(device=ctx.input_device, dtype=ctx.input_dtype), None


def _float64_numpy(x: torch.Tensor) -> np.ndarray:
    """Positions as a float64 numpy array on the CPU (a view when already so)."""
    return x.detach().to(device="cpu", dtype=torch.float64).numpy()


def _cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _platform_name(platform) -> str:
    """Validate an OpenMM platform given by name (or ``openmm.Platform``)."""
    if isinstance(platform, openmm.Platform):
        return platform.getName()
    names = [openmm.Platform.getPlatform(i).getName()
             for i in range(openmm.Platform.getNumPlatforms())]
    if not isinstance(platform, str) or platform not in names:
        raise InputError(f"platform must be one of {names}, got {platform!r}")
    return platform


class OpenMMEnergy(Energy):
    """Batched, differentiable potential energies of a :class:`MolecularSystem` via OpenMM.

    ``energy(x)`` maps positions ``x`` ``(B, N, 3)`` in nm (a torch tensor of any
    floating dtype, on any device, or a numpy array) to energies ``(B,)`` in kJ/mol (float64); the
    gradient of ``U`` is ``-F`` with ``F`` the OpenMM forces, returned in ``x``'s dtype.
    Positions are evaluated as given: constraints are not applied. A conformation with
    non-finite coordinates, or one for which OpenMM fails or returns a non-finite
    energy or force, gets energy ``+inf`` and zero force, is counted in ``n_failed``
    and is reported by one logging warning per instance; the rest of the batch is
    unaffected.

    Parameters
    ----------
    msys : MolecularSystem
        The system; workers rebuild it from ``msys.system_xml``.
    platform : str, optional
        OpenMM platform: ``"Reference"``, ``"CPU"`` (default), ``"CUDA"`` or ``"OpenCL"``
        when present.
    n_workers : int, optional
        Without ``executor``: number of worker processes, each owning one Context; the
        default 1 evaluates in this process (no inter-process traffic). With
        ``executor``: number of tasks each batch is split into (set it to the number of
        executor workers).
    executor : concurrent.futures.Executor, optional
        Run chunks as tasks on this executor instead of the built-in pool (e.g.
        ``ProcessPoolExecutor`` or ``dask.distributed.Client.get_executor()``). Each
        executor thread builds and caches its own Context, keyed by
        ``msys.fingerprint``. The executor is not shut down by :meth:`close`.
    platform_properties : dict, optional
        OpenMM platform properties. Defaults: on CPU with ``n_workers > 1`` or an
        executor, ``Threads`` = CPUs // ``n_workers`` so that workers share the cores;
        in-process ``Threads=1`` (bitwise repeatable, and fastest for small
        molecules; pass ``{"Threads": "2"}`` for a larger one); on CUDA/OpenCL,
        ``Precision="mixed"`` (energies accumulated in double precision). With more
        than one thread the CPU platform's forces vary from run to run in the last
        digits (~1e-7 relative, summation order); ``{"Threads": "1"}`` makes them
        bitwise repeatable and, for molecules as small as alanine dipeptide, is
        often faster too.

    Attributes
    ----------
    n_evaluations, n_failed : int
        Samples evaluated, and those that failed (energy ``+inf``).

    Notes
    -----
    Workers are fresh interpreters (``python -m openmm_trade.worker_pool``) talking over
    pipes, never forks of this process, so they are safe to start after torch's thread
    pools are up and need no ``if __name__ == "__main__"`` guard. A worker that dies
    raises :class:`~openmm_trade.errors.WorkerError` at once; workers are stopped by
    :meth:`close`, the ``with`` statement, garbage collection and interpreter exit. Cores:
    on a machine with C cores, use ``n_workers`` = C for OpenMM-bound work and
    ``torch.set_num_threads`` for the flow; both run one after the other, not at once.

    Examples
    --------
    >>> import torch
    >>> import openmm_trade as ot
    >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
    >>> x = torch.tensor(msys.positions[None], requires_grad=True)
    >>> with ot.OpenMMEnergy(msys, platform="Reference") as energy:
    ...     u = energy(x)
    ...     u.sum().backward()
    ...     forces = energy.forces(msys.positions[None])
    >>> u.shape, u.dtype, bool(torch.allclose(x.grad, -torch.from_numpy(forces)))
    (torch.Size([1]), torch.float64, True)
    """

    def __init__(
        self,
        msys: MolecularSystem,
        platform: str = "CPU",
        n_workers: int = 1,
        executor: Executor | None = None,
        platform_properties: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self._backend = None
        self._warned = False
        self._lock = threading.Lock()
        self._pid = os.getpid()
        if not isinstance(msys, MolecularSystem):
            raise InputError(
                f"msys must be an openmm_trade.MolecularSystem, got {type(msys).__name__}"
            )
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise InputError(f"n_workers must be an integer >= 1, got {n_workers!r}")
        if executor is not None and not callable(getattr(executor, "submit", None)):
            raise InputError(
                "executor must be a concurrent.futures.Executor (with a submit method), "
                f"got {type(executor).__name__}"
            )
        if platform_properties is not None and not isinstance(platform_properties, dict):
            raise InputError(
                f"platform_properties must be a dict, got {type(platform_properties).__name__}"
            )
        self.system = msys
        self.platform = _platform_name(platform)
        self.n_workers = n_workers
        self.event_shape = (msys.n_atoms, 3)
        properties = dict(platform_properties or {})
        if self.platform == "CPU":
            shared = n_workers > 1 or executor is not None
            properties.setdefault("Threads", max(1, _cpu_count() // n_workers) if shared else 1)
        if self.platform in ("CUDA", "OpenCL"):
            properties.setdefault("Precision", "mixed")
        allowed = openmm.Platform.getPlatformByName(self.platform).getPropertyNames()
        unknown = sorted(set(properties) - set(allowed))
        if unknown:
            raise InputError(
                f"platform_properties for platform {self.platform!r} must be among "
                f"{list(allowed)}, got {unknown}"
            )
        spec = ContextSpec.from_system(msys, self.platform, properties)
        self.platform_properties = dict(spec.properties)
        if executor is not None:
            self._backend = ExecutorEvaluator(spec, executor, n_workers)
        elif n_workers == 1:
            self._backend = LocalEvaluator(spec)
        else:
            self._backend = WorkerPool(spec, n_workers)

    # ------------------------------------------------------------------ evaluation
    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _OpenMMEnergyFunction.apply(x, self)
        result = self._evaluate(_float64_numpy(x), want_forces=False)  # no forces needed
        return torch.from_numpy(result.energies).to(x.device)

    def _evaluate(self, positions: np.ndarray, want_forces: bool) -> BatchResult:
        """Run a float64 ``(B, N, 3)`` batch on the back end; warn once about failures."""
        if self._backend is None:
            raise WorkerError("this OpenMMEnergy has been closed")
        if os.getpid() != self._pid:
            raise WorkerError(
                "this OpenMMEnergy was created in another process (inherited through fork); "
                "create a new OpenMMEnergy in this process"
            )
        with self._lock:  # one Context / one pipe protocol: one batch at a time
            result = self._backend.evaluate(positions, want_forces)
        if result.n_failed and not self._warned:
            self._warned = True
            logger.warning(
                "OpenMMEnergy(%s): %d of %d conformations failed (first: %s); their energy "
                "is +inf and their force 0. Failures are counted in n_failed; this warning "
                "is shown once per OpenMMEnergy.",
                self.system.name, result.n_failed, len(positions), result.first_error,
            )
        return result

    def check_input(self, x, name: str = "x") -> torch.Tensor:
        """Validate positions: a floating-point ``(B, N, 3)`` tensor (or numpy array)."""
        if not isinstance(x, torch.Tensor | np.ndarray):
            raise InputError(
                f"{name} must be a torch.Tensor or numpy array of shape (B, "
                f"{', '.join(map(str, self.event_shape))}) in nm, got {type(x).__name__}"
            )
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in "fiu":
                raise InputError(f"{name} must hold real numbers (nm), got dtype {x.dtype}")
            x = torch.from_numpy(np.asarray(x, dtype=np.float64))
        x = super().check_input(x, name)
        if not x.is_floating_point():
            raise InputError(f"{name} must be a floating-point tensor (nm), got {x.dtype}")
        return x

    def energies_and_forces(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Energies ``(B,)`` in kJ/mol and forces ``(B, N, 3)`` in kJ/mol/nm as numpy.

        ``x`` is a ``(B, N, 3)`` numpy array or tensor in nm. Failed samples have
        energy ``+inf`` and zero force and are counted in ``n_failed``.

        >>> import openmm_trade as ot
        >>> msys = ot.systems.load("alanine-dipeptide-vacuum")
        >>> with ot.OpenMMEnergy(msys, platform="Reference") as energy:
        ...     u, f = energy.energies_and_forces(msys.positions[None])
        >>> u.shape, f.shape
        ((1,), (1, 22, 3))
        """
        x = self.check_input(x)
        result = self._evaluate(_float64_numpy(x), want_forces=True)
        self.n_evaluations += len(result.energies)
        self.n_failed += result.n_failed
        return result.energies, result.forces

    def forces(self, x) -> np.ndarray:
        """Forces ``(B, N, 3)`` in kJ/mol/nm (numpy float64); see :meth:`energies_and_forces`."""
        return self.energies_and_forces(x)[1]

    # ------------------------------------------------------------------ lifetime
    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the built-in worker pool (empty in-process or with an executor)."""
        return self._backend.pids if isinstance(self._backend, WorkerPool) else []

    def close(self) -> None:
        """Stop the workers / release the Context (idempotent; executors are left alone)."""
        backend, self._backend = getattr(self, "_backend", None), None
        if backend is not None:
            backend.close()

    def __enter__(self) -> OpenMMEnergy:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the pool's finalizer stops the workers
            pass

    def __repr__(self) -> str:
        kind = type(self._backend).__name__ if self._backend is not None else "closed"
        return (f"OpenMMEnergy(system={self.system.name!r}, platform={self.platform!r}, "
                f"n_workers={self.n_workers}, backend={kind})")
