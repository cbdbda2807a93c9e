"""The writer lock: one writer per collection at a time; readers never take it.

It is a POSIX record lock (``fcntl.lockf``), not ``flock``: a record lock belongs to the process
that took it and is not inherited by children, so decode workers forked during a run can never
keep a collection locked after their parent is killed. Record locks do not exclude other threads
of the same process, so a per-process registry does that.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import CollectionError

LOCK_NAME = ".lock"  # the lock file in a collection's folder

_held: set[str] = set()
_held_guard = threading.Lock()


@contextlib.contextmanager
def writer_lock(path: Path, wait: float = 0.0, on_wait: Callable[[], None] | None = None):
    """Hold ``path`` (a lock file) exclusively.

    Held by another process: wait up to ``wait`` seconds (``math.inf``: until it is free), calling ``on_wait``
    once when waiting starts, then raise CollectionError. Held by this process: raise at once (waiting would
    never end)."""
    try:
        import fcntl  # noqa: F401  (only whether it exists; the lock below imports it again)
    except ImportError:  # Windows: no advisory locks; single-writer is then the user's job
        yield
        return
    key = str(path.resolve())
    with _held_guard:
        if key in _held:
            raise _busy(path)
        _held.add(key)
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:  # a read-only disk, a folder the user may not write
            raise CollectionError(
                f"cannot write to {path.parent}: {exc.strerror or exc}; only reading commands "
                "(query, info, skipped, serve) work there. Index into a collection on a writable "
                "disk, or fix the folder's permissions"
            ) from None
        try:
            _acquire(fd, path, wait, on_wait)
            yield
        finally:
            os.close(fd)  # closing releases the record lock
    finally:
        with _held_guard:
            _held.discard(key)


def _acquire(fd: int, path: Path, wait: float, on_wait) -> None:
    """Poll rather than block, so Ctrl-C and the deadline both work."""
    import fcntl

    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise _busy(path) from None
        if on_wait is not None:
            on_wait()
            on_wait = None
        time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def _busy(path: Path) -> CollectionError:
    return CollectionError(f"another imgsearch process is writing to {path.parent}; wait for it to finish")
