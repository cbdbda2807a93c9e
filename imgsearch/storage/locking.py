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
PROBE_GRACE = 0.1  # seconds a writer looks again before calling the lock busy (see _acquire)

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
        while True:
            fd = _open(path)
            try:
                _acquire(fd, path, wait, on_wait)
            except BaseException:
                os.close(fd)
                raise
            if _still_named(fd, path):
                break
            # Its holder removed the file while this process waited (a failed first run leaves nothing behind):
            # a lock on the removed file excludes no one, so lock the file that now has the name.
            os.close(fd)
            on_wait = None
        try:
            yield
        finally:
            os.close(fd)  # closing releases the record lock
    finally:
        with _held_guard:
            _held.discard(key)


def _open(path: Path) -> int:
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the folder went with a failed first run while this process waited
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:  # a read-only disk, a folder the user may not write
        raise CollectionError(
            f"cannot write to {path.parent}: {exc.strerror or exc}; only reading commands "
            "(query, info, skipped, serve) work there. Index into a collection on a writable "
            "disk, or fix the folder's permissions"
        ) from None


def _still_named(fd: int, path: Path) -> bool:
    """Whether the locked file is still the one at ``path``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def held(path: Path) -> bool:
    """Whether any process, this one included, holds the writer lock now (the answer can change at once)."""
    with _held_guard:
        if str(path.resolve()) in _held:
            return True
    return held_elsewhere(path)


def held_elsewhere(path: Path) -> bool:
    """Whether another process holds the writer lock now (a question for messages: the answer can change at once)."""
    with _held_guard:
        if str(path.resolve()) in _held:
            return False  # this process holds it; and closing any descriptor of the file would release its lock
    try:
        import fcntl

        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except (ImportError, OSError):
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock at once


def _acquire(fd: int, path: Path, wait: float, on_wait) -> None:
    """Poll rather than block, so Ctrl-C and the deadline both work. Even ``wait=0`` looks again for
    ``PROBE_GRACE`` s: a reader asking ``held`` takes the lock for an instant, and must not fail a writer."""
    import fcntl

    deadline = time.monotonic() + max(wait, PROBE_GRACE)
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise _busy(path) from None
        if on_wait is not None and wait > 0:  # told when a real wait starts, not for the grace
            on_wait()
            on_wait = None
        time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def _busy(path: Path) -> CollectionError:
    return CollectionError(f"another imgsearch process is writing to {path.parent}; wait for it to finish")
