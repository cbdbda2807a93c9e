"""Keeps a FAISS index file in step with the SQLite store that holds the truth.

The file is saved atomically with a stamp beside it (JSON): the store generation it reflects, the time of the
newest row write it holds, the collection it belongs to, and the file's size and CRC-32. A file is believed only
when all of these agree: another collection's file, or one with a damaged block, is rebuilt from the store. A stamp
behind the store (a crash, a kill between two checkpoints) means the saved index is caught up with the rows written
since; one that cannot be (no file, an old stamp, a count that does not add up) is rebuilt. Either way, a reader that
had to do that work saves it for the next one when no writer is running.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import VectorIndexConfig
from ..errors import CollectionError, DiskFullError
from .halfvectors import HalfVectors
from .locking import LOCK_NAME, writer_lock
from .store import Changed, Store
from .vector_index import VectorIndex, structure_for, training_size


class Stamp(NamedTuple):
    generation: int
    since: float | None  # the newest row write the saved index holds; None in files from before it was recorded
    collection: str | None = None  # the store's collection_id
    size: int | None = None  # the index file's size and CRC-32 when it was saved (None: a stamp from before 0.2,
    crc: int | None = None  # which proves nothing about the file: it is rebuilt)

    def text(self) -> str:
        return json.dumps(self._asdict())

    def same_state(self, other: Stamp | None) -> bool:
        """Whether both describe the same saved state of the same collection (the float16 rows' stamp against
        the index's)."""
        return other is not None and self[:3] == other[:3]


class SyncedIndex:
    """The FAISS index of one table ("images" or "texts") of a collection."""

    def __init__(self, store: Store, table: str, folder: Path, dim: int, config: VectorIndexConfig, live: bool = False):
        """``live``: will ``catch_up`` (a long-lived reader); costs one more read when the index opens."""
        self.store, self.table, self.dim, self.config, self.live = store, table, dim, config, live
        self.file = folder / f"{table}.faiss"
        self.stamp = folder / f"{table}.faiss.generation"
        self._index: VectorIndex | None = None
        self._generation = -1  # the store generation the in-memory index reflects
        self._saved_generation = -1
        self._last_save = time.monotonic()
        self._since = 0.0  # for catch_up: the index has every row written before this store time
        # A compact index re-ranks with full vectors from the float16 file beside it (a real 10M collection: 5.9 ms
        # p50 per query against 15.4 ms from SQLite, docs/scale.md), trusted only for rows it is known to hold
        # current: _half_ok says the file has every row of the in-memory index, except the ids in _overlay (caught
        # up from the store since), which are read from SQLite.
        self.half = HalfVectors(folder / f"{table}.f16", dim)
        self._half_ok = False
        self._overlay: set[int] = set()

    @property
    def generation(self) -> int:
        """The store generation the in-memory index reflects (-1 before it is loaded)."""
        return self._generation

    @property
    def index(self) -> VectorIndex:
        if self._index is None:
            self._open()
        return self._held()

    def _held(self) -> VectorIndex:
        """The in-memory index, which the caller knows is loaded."""
        assert self._index is not None, "the index is loaded first"
        return self._index

    def _open(self) -> None:
        current, since = self._current()
        stamp = self._stamp()
        loaded = self._load_file(stamp) if stamp is not None and stamp.generation <= current else None
        taken = False
        if loaded is not None and stamp is not None:
            self._adopt(loaded, stamp)
            if stamp.generation == current:
                self._index, self._generation, self._saved_generation, self._since = loaded, current, current, since
                taken = True
            else:
                taken = stamp.since is not None and self._recovered(loaded, stamp, stamp.since)
        if not taken:
            self.rebuild()
            self._since = since
        if self.store.read_only:
            self.save_if_free()

    def _adopt(self, loaded: VectorIndex, stamp: Stamp) -> None:
        """Taking a saved index: its float16 rows are trusted when their stamp is the index's (written first); each
        row is still checked against its checksum when it is read (halfvectors.py)."""
        self._half_ok = loaded.kind == "compact" and stamp.same_state(_parse_stamp(self.half.read_stamp()))
        self._overlay = set()

    def _recovered(self, loaded: VectorIndex, stamp: Stamp, since: float) -> bool:
        """Bring a saved index from before a crash up to the store: rows written since its stamp are (re)added,
        deleted ones removed. False when the result cannot be trusted or no longer fits its structure."""
        self._index, self._generation, self._saved_generation = loaded, stamp.generation, stamp.generation
        changed = self.store.changes_since(self.table, self.dim, since)
        self._apply(changed)
        # A count that does not add up means a row was written with an older time than the stamp (a clock set back).
        return loaded.ntotal == len(changed.ids) and not loaded.needs_rebuild()

    def _current(self) -> tuple[int, float]:
        """(store generation, where a catch-up starts): read before loading, since a catch-up that starts
        earlier than it needs to is only slower."""
        return self.store.newest_write(self.table) if self.live else (self.store.generation(self.table), 0.0)

    def _saved(self, generation: int) -> tuple[VectorIndex, Stamp] | None:
        """The saved index and its stamp when the stamp says ``generation`` and it loads; else None (the store has
        every vector). Writers hold the lock, so no save replaces the file under them; for a live reader, a file
        replaced by a newer save in between is fine too: its catch-up from the older stamp re-reads a few rows."""
        stamp = self._stamp()
        loaded = self._load_file(stamp) if stamp is not None and stamp.generation == generation else None
        return None if loaded is None or stamp is None else (loaded, stamp)

    def _load_file(self, stamp: Stamp) -> VectorIndex | None:
        """The saved index, only if its stamp vouches for it: this collection's, and the file's size and CRC-32 as
        saved (a damaged block gave scores like 4.8e37 in 0.1, and wrong images with them)."""
        if stamp.crc is None or stamp.size is None or stamp.collection != self.store.collection_id:
            return None
        try:
            loaded = VectorIndex.load_verified(self.file, stamp.size, stamp.crc, self.config, self._exact)
        except (OSError, RuntimeError):  # gone, unreadable, or damaged past what faiss can parse
            return None
        return loaded if loaded is not None and loaded.dim == self.dim else None

    def saved_is_current(self) -> bool:
        """Whether the file on disk matches the store, by its stamp (cheap: the file itself is checked when loaded)."""
        stamp = self._stamp()
        return (
            stamp is not None
            and stamp.crc is not None
            and stamp.generation == self.store.generation(self.table)
            and stamp.collection == self.store.collection_id
            and self.file.exists()
        )

    def _stamp(self) -> Stamp | None:
        try:
            return _parse_stamp(self.stamp.read_text())
        except OSError:
            return None

    def rebuild(self) -> None:
        """A new index from every vector in the store. A compact one is streamed (trained on a sample, then
        filled chunk by chunk): its vectors as float32 may not fit in memory."""
        n = self.store.count(self.table)
        self._half_ok, self._overlay = False, set()
        if structure_for(n, self.config) != "compact":
            generation, ids, vectors = self.store.snapshot_vectors(self.table, self.dim)
            self._index = VectorIndex.build(self.dim, ids, vectors, self.config, self._exact)
        else:
            # Only a process holding the writer lock writes float16 rows: the store cannot change under it.
            writing = not self.store.read_only
            with self.store.vector_stream(self.table, self.dim, training_size(n, self.config)) as streamed:
                generation, count, sample, chunks = streamed
                chunks = self._to_half(chunks) if writing else chunks
                self._index = VectorIndex.build_from(self.dim, count, sample, chunks, self.config, self._exact)
            self._half_ok = writing
        self._generation = generation

    def _to_half(self, chunks):
        for ids, vectors in chunks:
            with _disk_errors(self.half.path):
                self.half.write(ids, vectors)
            yield ids, vectors

    def _exact(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        """Full vectors for a compact index's re-ranking: float16 rows where they are trusted, else the store."""
        if not self._half_ok:
            return self.store.vectors(self.table, ids)
        ids = np.asarray(ids, np.int64)
        fresh = np.fromiter((i in self._overlay for i in ids.tolist()), bool, len(ids))
        found, vectors = self.half.read(ids[~fresh])
        out = dict(zip(found.tolist(), vectors))
        missing = [i for i in ids.tolist() if i not in out]
        if missing:
            out.update(self.store.vectors(self.table, missing))
        return out

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
        self._apply(changed, lock)
        if self._index.needs_rebuild():
            self._load_saved(lock)
        return True

    def _apply(self, changed: Changed, lock=contextlib.nullcontext()) -> None:
        """Make the index hold exactly ``changed.ids``, with the vectors written since re-read; the index is
        changed under ``lock`` (the reads happen before)."""
        index = self._held()
        held = index.ids()
        gone = np.setdiff1d(held, changed.ids, assume_unique=True)
        rewritten = np.intersect1d(changed.written_ids, held, assume_unique=True)
        with lock:
            index.remove(np.concatenate([gone, rewritten]))
            index.add(changed.written_ids, changed.written_vectors)
            self._generation, self._since = changed.generation, changed.newest
            if self._half_ok:
                self._overlay.update(changed.written_ids.tolist())

    def _load_saved(self, lock) -> bool:
        generation, since = self._current()
        saved = self._saved(generation)
        if saved is None:
            return False
        with lock:
            self._index, self._generation, self._saved_generation, self._since = saved[0], generation, generation, since
            self._adopt(*saved)
        return True

    def update(self, generation: int, add_ids=(), add_vectors=None, remove_ids=()) -> None:
        """Mirror a committed store change; the caller passes the generation it produced."""
        index = self.index  # opening now may rebuild from a store that already holds the change
        if self._generation >= generation:
            return
        index.remove(remove_ids)
        if len(add_ids):
            index.add(np.asarray(add_ids, np.int64), add_vectors)
            if self._half_ok:  # a writer: the vectors it just committed are current
                with _disk_errors(self.half.path):
                    self.half.write(np.asarray(add_ids, np.int64), add_vectors)
        self._generation = generation

    def save(self, at_most_every: float = 0.0) -> None:
        """Write the index if it changed and at least ``at_most_every`` seconds passed since the last write.
        Only a writer (holding the collection's lock) calls this."""
        if self._index is None or self._generation == self._saved_generation:
            return
        if time.monotonic() - self._last_save < at_most_every:
            return
        if self._index.needs_rebuild():
            self.rebuild()
        self._write()

    def _write_half(self, stamp: Stamp) -> None:
        self._complete_half()
        self.half.sync()
        _write_atomically(self.half.stamp, stamp.text())

    def _complete_half(self) -> None:
        """Make the float16 rows hold every vector of the in-memory index, current (the lock is held, so the store
        is at its generation): the rows caught up since the last save, or all of them when they were not trusted."""
        if self._half_ok:
            self.half.write(*_as_arrays(self.store.vectors(self.table, sorted(self._overlay)), self.dim))
        else:
            with self.store.vector_stream(self.table, self.dim, 0) as (_, _, _, chunks):
                for ids, vectors in chunks:
                    self.half.write(ids, vectors)
        self._half_ok, self._overlay = True, set()

    def force_save(self) -> None:
        """Write the in-memory index, its float16 rows and stamps now, whatever the saved state (a repair); the
        caller holds the writer lock."""
        self._half_ok, self._overlay = False, set()
        self._saved_generation = -2
        self._write()

    def save_if_free(self) -> bool:
        """Save an index this reader rebuilt or caught up, so the next process loads it instead of doing the same
        work: only when no writer runs (the lock is taken without waiting) and the store has not moved on since.
        Also makes a current compact index's float16 rows trusted again (after a crash between their stamp and the
        index's). Busy, a read-only folder or a full disk: nothing is saved, and the next reader tries again."""
        if self._index is None:
            return False
        stale_index = self._generation != self._saved_generation
        if not stale_index and (self._half_ok or self._index.kind != "compact"):
            return False
        try:
            with writer_lock(self.file.parent / LOCK_NAME, wait=0):
                if self.store.generation(self.table) != self._generation:
                    return False
                stamp = self._stamp()
                if stale_index or stamp is None:
                    self._write()
                else:  # the saved index is current, only its float16 rows are not trusted
                    with _disk_errors(self.half.path):
                        self._write_half(stamp)
                return True
        except (CollectionError, DiskFullError, OSError):
            return False

    def _write(self) -> None:
        """Under the writer lock: the float16 rows (made complete, synced and stamped first), then the index and
        its stamp. A crash in between leaves stamps that differ: the rows are then not trusted, never wrong."""
        generation, newest = self.store.newest_write(self.table)
        state = Stamp(self._generation, newest if generation == self._generation else None, self.store.collection_id)
        index = self._held()
        with _disk_errors(self.file):
            if index.kind == "compact":
                self._write_half(state)
            size, crc = index.save(self.file)
            _write_atomically(self.stamp, state._replace(size=size, crc=crc).text())
        self._saved_generation = self._generation
        self._last_save = time.monotonic()


def _parse_stamp(text: str | None) -> Stamp | None:
    """A stamp as written since 0.2 (JSON), or as before ("GENERATION [NEWEST]": parsed, but it vouches for no file)."""
    if text is None:
        return None
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            return Stamp(
                int(data["generation"]), data.get("since"), data.get("collection"), data.get("size"), data.get("crc")
            )
    except (ValueError, KeyError, TypeError):
        pass
    try:
        fields = text.split()
        return Stamp(int(fields[0]), float(fields[1]) if len(fields) > 1 else None)
    except (AttributeError, ValueError, IndexError):
        return None


def remove_leftovers(folder: Path) -> list[Path]:
    """Temporary files of saves that were killed or failed; call only while holding the writer lock."""
    removed = []
    for leftover in [*folder.glob("*.faiss*.tmp"), *folder.glob("*.f16*.tmp")]:
        with contextlib.suppress(OSError):
            leftover.unlink()
            removed.append(leftover)
    return removed


def _as_arrays(vectors: dict[int, np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array(list(vectors), np.int64)
    return ids, np.array(list(vectors.values()), np.float32).reshape(len(ids), dim)


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
