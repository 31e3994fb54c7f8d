"""Independent MD chains: one chain in this process (checkpointed, resumable) or several
in parallel child processes, for :func:`openmm_trade.md.simulate`."""

from __future__ import annotations

import math
import os
import select
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import openmm
from openmm import unit

from ..errors import CheckpointError, InputError, WorkerError
from ..system import MolecularSystem
from .engine import (
    PathLike,
    _EnergyEvaluator,
    _ns_per_day,
    _openmm_seed,
    _platform,
    _platform_properties,
    _steps_per,
    one_core,
)
from .trajectory import (
    _check_atoms,
    _FrameFile,
    _read_checkpoint,
    _read_frame_file,
    _write_checkpoint,
)

_CHECKPOINT_SUFFIX = ".chk"
_CHAINS_SUFFIX = ".chains"


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


def _resumed_chains(output: PathLike) -> int | None:
    """Number of chains of the run stored in ``output`` (None when there is none)."""
    output = Path(output).expanduser()
    if output.with_name(output.name + _CHECKPOINT_SUFFIX).exists():
        return 1
    folder = _chain_folder(output)
    found = len(list(folder.glob("chain-*.h5"))) if folder.is_dir() else 0
    return found or None


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


def _run_chain(msys: MolecularSystem, core: int | None = None, **options
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chain of :func:`simulate` on one CPU core (:func:`one_core`; ``None``: the idlest):
    ``(xyz, times, energies)``; ``options`` as :func:`_simulate_chain` takes them."""
    with one_core(core):
        return _simulate_chain(msys, **options)


def _simulate_chain(
    msys: MolecularSystem, temperature: float, n_frames: int, interval_ps: float, seed: int,
    equilibration_ps: float, timestep_ps: float, friction_per_ps: float, platform: str,
    output: Path | None, resume: bool, checkpoint_every: int, progress,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The body of :func:`_run_chain` (arguments already checked).

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

    if checkpoint_path is not None and resume and checkpoint_path.exists():
        frame_file, done_xyz, done_energies = _resume_chain(
            msys, output, checkpoint_path, settings, n_frames, context, evaluator)
    else:
        frame_file = _start_chain(msys, output, checkpoint_path, settings, context, integrator)
        done_xyz, done_energies = np.zeros((0, msys.n_atoms, 3), np.float32), np.zeros(0)
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


def _resume_chain(msys: MolecularSystem, output: Path, checkpoint_path: Path, settings: dict,
                  n_frames: int, context, evaluator) -> tuple:
    """Reopen ``output`` at its checkpoint: ``(frame_file, xyz, energies)`` of the frames
    kept, with ``context`` at the checkpointed state (settings must match)."""
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
    return frame_file, done_xyz, done_energies


def _start_chain(msys: MolecularSystem, output: Path | None, checkpoint_path: Path | None,
                 settings: dict, context, integrator):
    """Minimise, draw velocities, equilibrate; open a new frame file (``None`` without
    ``output``). An existing ``output`` with frames but no checkpoint is refused."""
    temperature, seed = settings["temperature"], settings["seed"]
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
    integrator.step(int(round(settings["equilibration_ps"] / settings["timestep_ps"])))
    if output is None:
        return None
    frame_file = _FrameFile(output, msys.mdtraj_topology, mode="w")
    _write_checkpoint(checkpoint_path, {**settings, "n_frames": 0}, context.createCheckpoint())
    return frame_file


def _run_chains(msys: MolecularSystem, jobs: list[dict], progress) -> list[tuple]:
    """Run :func:`_run_chain` for each job in its own child interpreter, in parallel.

    Children are ``python -c`` interpreters talking length-prefixed pickles over pipes
    (the :mod:`openmm_trade.worker_pool` protocol, and for the same reasons: no fork of a
    threaded process, no re-import of the caller's ``__main__``). A child that dies shows
    up as end-of-file on its pipe: the others are stopped and :class:`WorkerError` is
    raised. A child exits when its stdin closes, so none outlives this process.
    """
    from ..worker_pool import _describe_exit, _read_message, _stop, _write_message, child_env

    code = "from openmm_trade.md.chains import _chain_main; _chain_main()"
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
    from ..worker_pool import _read_message, _write_message

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
