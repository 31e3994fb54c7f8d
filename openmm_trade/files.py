"""Atomic file writing: a file is either its old version or the complete new one.

Every file openmm_trade writes (models, checkpoints, trajectories, tables, reports) goes
through a temporary file in the same folder and ``os.replace``, so a run killed at any
moment never leaves a half-written file behind.

Example
-------
>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
>>> write_text_atomic(target, "hello")
>>> target.read_text()
'hello'
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_write_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary file keeps the suffix of ``path`` (libraries choose formats by it) and
    is removed if the block raises.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_write_path(target) as tmp:
    ...     _ = tmp.write_text("hello")
    >>> target.read_text()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename."""
    with atomic_write_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def exclusive_lock(path: PathLike, what: str = "run") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block, so that one process at a time
    writes it and its companions (checkpoints, chain files).

    The lock is a POSIX ``flock`` on ``<path>.lock``: the operating system drops it when
    the process ends, however it ends, so a crashed run never leaves ``path`` locked. A
    second process asking for it prints once that it waits, then waits until the first
    releases it (and, with ``resume``, continues or reads what the first wrote). Where
    ``fcntl`` does not exist (Windows) nothing is locked.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "md.h5"
    >>> with exclusive_lock(target):
    ...     _ = target.write_text("frames")
    >>> target.read_text()
    'frames'
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that is writing the {what} {path} ...",
                  file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def unreadable_torch_file(path: PathLike, error: BaseException) -> str:
    """What was found in a file ``torch.load`` failed on, in words, for an error message.

    >>> import tempfile, pathlib
    >>> junk = pathlib.Path(tempfile.mkdtemp()) / "junk.pt"
    >>> _ = junk.write_bytes(b"hello")
    >>> unreadable_torch_file(junk, RuntimeError("174812789"))
    '5 bytes that are not a torch file (random bytes, or a truncated file)'
    """
    import zipfile

    path = Path(path)
    if not path.is_file():
        return "no such file"
    if not zipfile.is_zipfile(path):
        return (f"{path.stat().st_size} bytes that are not a torch file "
                "(random bytes, or a truncated file)")
    if "weights only load failed" in str(error).lower():
        return "a torch file with other content (a training checkpoint?)"
    return f"a damaged torch file ({type(error).__name__})"
