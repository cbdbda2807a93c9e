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
from pathlib import Path

from .errors import CollectionError

_held: set[str] = set()
_held_guard = threading.Lock()


@contextlib.contextmanager
def writer_lock(path: Path):
    """Hold ``path`` (a lock file) exclusively, or raise CollectionError at once."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; single-writer is then the user's job
        yield
        return
    key = str(path.resolve())
    with _held_guard:
        if key in _held:
            raise _busy(path)
        _held.add(key)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise _busy(path) from None
            yield
        finally:
            os.close(fd)  # closing releases the record lock
    finally:
        with _held_guard:
            _held.discard(key)


def _busy(path: Path) -> CollectionError:
    return CollectionError(f"another imgsearch process is writing to {path.parent}; wait for it to finish")
