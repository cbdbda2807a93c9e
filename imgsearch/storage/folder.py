"""A collection's folder on disk: its database, opened read-only for reading or, under the writer lock, for writing;
made by the first write, and removed again when that write stored nothing (a first run that failed or was stopped
leaves nothing behind, as the README says)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import CollectionError, DiskFullError
from . import sqlite as sqlite_policy
from .locking import LOCK_NAME, writer_lock
from .store import DB_NAME, Store
from .synced import remove_leftovers


class CollectionFolder:
    """``missing``: the error for a folder that holds no collection (its wording is the caller's); ``wait`` and
    ``on_wait``: how a write waits for another process's (``locking.writer_lock``); ``on_writer``: told the store
    when a writer replaces the reader's (the caller's FAISS indexes follow it)."""

    def __init__(
        self,
        path: Path,
        missing: Callable[[], Exception],
        wait: float = 0.0,
        on_wait: Callable[[], None] | None = None,
        on_writer: Callable[[Store], None] = lambda store: None,
    ):
        self.path, self.missing, self.wait, self.on_wait, self.on_writer = path, missing, wait, on_wait, on_writer
        self._store: Store | None = None

    @property
    def exists(self) -> bool:
        """A database with its schema: a file a first run has made but not yet filled is no collection yet."""
        db = self.path / DB_NAME
        return db.exists() and (self._store is not None or sqlite_policy.has_schema(db))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def reader(self) -> Store:
        """The store for reading: opened read-only (no schema work, no writes) unless a writer has it."""
        if self._store is None:
            if not self.exists:
                raise self.missing()
            store = Store(self.path / DB_NAME, read_only=True)
            if store.outdated:  # an older collection: upgrade it once, under the writer lock
                store.close()
                with self.writing() as upgraded:
                    return upgraded
            self._store = store
        return self._store

    @contextlib.contextmanager
    def writing(self, create: bool = False) -> Iterator[Store]:
        """The store for writing, one writer at a time per collection (readers are never blocked); ``create``:
        make the collection when there is none."""
        if not create and not self.exists:
            raise self.missing()
        made = [p for p in (self.path, *self.path.parents) if not p.exists()]  # what mkdir makes, deepest first
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            with writer_lock(self.path / LOCK_NAME, self.wait, self.on_wait):
                new = not self.exists
                store = self._writer()
                remove_leftovers(self.path)  # only a writer saves, so any temporary file is a dead save's
                try:
                    yield store
                except BaseException:
                    if new and store.is_empty():
                        self._discard_new()  # a first run that failed (or was stopped) before storing anything
                    raise
        finally:
            if made and not self.exists:
                with contextlib.suppress(OSError):
                    for folder in made:
                        folder.rmdir()  # only while empty: nothing of anyone else's goes

    def write_if_free(self, write: Callable[[Store], None]) -> bool:
        """``write`` under the writer lock when no one else holds it and the disk can be written; False (nothing
        written) otherwise: for what a reader notes in passing, which the next reader can note again."""
        try:
            with writer_lock(self.path / LOCK_NAME, 0.0):
                store = Store(self.path / DB_NAME)
                try:
                    write(store)
                finally:
                    store.close()
        except (CollectionError, DiskFullError):
            return False
        return True

    def _writer(self) -> Store:
        if self._store is None or self._store.read_only:
            self.close()
            self._store = Store(self.path / DB_NAME)
            self.on_writer(self._store)
        return self._store

    def _discard_new(self) -> None:
        """Remove the database and lock a failed first run made, under the lock (a process waiting for it locks the
        file that next has its name: ``locking.writer_lock``)."""
        self.close()
        for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", LOCK_NAME):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
