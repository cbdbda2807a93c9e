"""Keeps a FAISS index file in step with the SQLite store that holds the truth.

The file is saved atomically with a generation stamp beside it. A stamp that does
not match the store's generation (a crash, a kill, an old file) means the index
is rebuilt from the vectors in the store: slower to open once, never wrong.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

import numpy as np

from .config import IndexConfig
from .errors import DiskFullError
from .index import VectorIndex
from .store import Store


class SyncedIndex:
    """The FAISS index of one table ("images" or "texts") of a collection."""

    def __init__(self, store: Store, table: str, folder: Path, dim: int, config: IndexConfig, live: bool = False):
        """``live``: will ``catch_up`` (a long-lived reader); costs one more read when the index opens."""
        self.store, self.table, self.dim, self.config, self.live = store, table, dim, config, live
        self.file = folder / f"{table}.faiss"
        self.stamp = folder / f"{table}.faiss.generation"
        self._index: VectorIndex | None = None
        self._generation = -1  # the store generation the in-memory index reflects
        self._saved_generation = -1
        self._last_save = time.monotonic()
        self._since = 0.0  # for catch_up: the index has every row written before this store time

    @property
    def index(self) -> VectorIndex:
        if self._index is None:
            self._open()
        return self._index

    def _open(self) -> None:
        current, since = self._current()
        saved = self._saved(current)
        if saved is not None:
            self._index, self._generation, self._saved_generation = saved, current, current
        else:
            self.rebuild()
        self._since = since

    def _current(self) -> tuple[int, float]:
        """(store generation, where a catch-up starts): read before loading, since a catch-up that starts
        earlier than it needs to is only slower."""
        return self.store.newest_write(self.table) if self.live else (self.store.generation(self.table), 0.0)

    def _saved(self, generation: int) -> VectorIndex | None:
        """The saved index when its stamp says ``generation`` and it loads; else None (the store has every vector).
        Writers hold the lock, so no save replaces the file under them; for a live reader, a file replaced by a
        newer save in between is fine too: its catch-up from the older stamp re-reads a few rows."""
        if self._stamp() != generation or not self.file.exists():
            return None
        try:
            loaded = VectorIndex.load(self.file, self.config)
        except RuntimeError:  # unreadable, or being replaced at this moment
            return None
        return loaded if loaded.dim == self.dim else None

    def saved_is_current(self) -> bool:
        """Whether the file on disk matches the store (cheap: the stamp, not the index, is read)."""
        return self._stamp() == self.store.generation(self.table) and self.file.exists()

    def _stamp(self) -> int | None:
        try:
            return int(self.stamp.read_text())
        except (OSError, ValueError):
            return None

    def rebuild(self) -> None:
        generation, ids, vectors = self.store.snapshot_vectors(self.table, self.dim)
        self._index = VectorIndex.build(self.dim, ids, vectors, self.config)
        self._generation = generation

    def catch_up(self, lock=contextlib.nullcontext()) -> bool:
        """Bring a loaded index up to what other processes committed since (a long-lived reader such as
        the server): rows added or re-embedded are (re)added, deleted ones removed. Reads the store without
        ``lock``, then changes the index holding it, so searches under the same lock never see it half-done.
        Returns whether anything changed. Cheap when nothing did: one small read.

        An index grown out of its structure (Flat past the IVF threshold, IVF lists for another size) is swapped
        for the writer's saved one, retrained, as soon as that file matches the store."""
        if not self.live:
            raise RuntimeError("catch_up needs a SyncedIndex opened with live=True")
        if self._index is None:
            return False
        if self._index.needs_rebuild() and self._load_saved(lock):
            return True
        if self.store.generation(self.table) == self._generation:
            return False
        changed = self.store.changes_since(self.table, self.dim, self._since)
        if changed.generation == self._generation:
            return False
        held = self._index.ids()
        gone = np.setdiff1d(held, changed.ids, assume_unique=True)
        rewritten = np.intersect1d(changed.written_ids, held, assume_unique=True)
        with lock:
            self._index.remove(np.concatenate([gone, rewritten]))
            self._index.add(changed.written_ids, changed.written_vectors)
            self._generation, self._since = changed.generation, changed.newest
        if self._index.needs_rebuild():
            self._load_saved(lock)
        return True

    def _load_saved(self, lock) -> bool:
        generation, since = self._current()
        loaded = self._saved(generation)
        if loaded is None:
            return False
        with lock:
            self._index, self._generation, self._saved_generation, self._since = loaded, generation, generation, since
        return True

    def update(self, generation: int, add_ids=(), add_vectors=None, remove_ids=()) -> None:
        """Mirror a committed store change; the caller passes the generation it produced."""
        index = self.index  # opening now may rebuild from a store that already holds the change
        if self._generation >= generation:
            return
        index.remove(remove_ids)
        if len(add_ids):
            index.add(np.asarray(add_ids, np.int64), add_vectors)
        self._generation = generation

    def save(self, at_most_every: float = 0.0) -> None:
        """Write the index if it changed and at least ``at_most_every`` seconds passed since the last write."""
        if self._index is None or self._generation == self._saved_generation:
            return
        if time.monotonic() - self._last_save < at_most_every:
            return
        if self._index.needs_rebuild():
            self.rebuild()
        with _disk_errors(self.file):
            self._index.save(self.file)
            _write_atomically(self.stamp, str(self._generation))
        self._saved_generation = self._generation
        self._last_save = time.monotonic()


def remove_leftovers(folder: Path) -> list[Path]:
    """Temporary files of saves that were killed or failed; call only while holding the writer lock."""
    removed = []
    for leftover in folder.glob("*.faiss*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()
            removed.append(leftover)
    return removed


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _disk_errors(path: Path):
    """faiss reports a full disk as a RuntimeError naming errno; both become DiskFullError."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        text = str(exc)
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text:
            raise DiskFullError(
                f"no space left writing {path}; free some space and run the command again: "
                "the database holds every vector, so nothing indexed is lost"
            ) from None
        raise
