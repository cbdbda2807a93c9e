"""Metadata and vectors in SQLite, through SQLAlchemy (with ``tables``, the only modules that import it).

The database is the collection's source of truth (vectors included), so the
FAISS files are a cache that can always be rebuilt. Each batch of changes is one
transaction that also bumps a generation counter, which the FAISS side records
when it saves, to tell whether its file is current.

Layout (schema v3): image metadata in ``images`` (v3 added the filter fields ``format`` and ``taken_at``),
small rows packed many to a page so that the scan at the start of every run reads little; vectors in ``image_vectors``, keyed by the
same id. Each thread keeps one connection, and every ``with`` block is one snapshot.
"""

from __future__ import annotations

import contextlib
import functools
import json
import operator
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, cast

import numpy as np
import sqlalchemy as sa

from ..errors import CollectionError, DiskFullError
from ..records import Changes, FrameDelta, Frames, ImageRow, ImageState, Moved, NewImage, Skip
from . import sqlite as sqlite_policy
from .migrations import COMPACTING, MIGRATIONS
from .sqlite import PAGE_SIZE
from .tables import COUNTED, VECTOR_TABLES, frames_t, image_vectors_t, images_t, meta_t, skipped_t, texts_t

SCHEMA_VERSION = 4
_READ_CHUNK = 8192  # rows fetched at a time when reading every vector back
DB_NAME = "imgsearch.db"  # in the collection's folder
_IN_LIMIT = 900  # ids per "IN (...)" (SQLite allows 999 parameters in older builds)

_new_state = functools.partial(tuple.__new__, ImageState)  # ImageState from a row tuple, without Python frames


class Changed(NamedTuple):
    """A table as a reader catching up sees it (``Store.changes_since``)."""

    generation: int
    ids: np.ndarray  # every id now in the table
    written_ids: np.ndarray  # rows inserted or re-embedded at or after the asked time
    written_vectors: np.ndarray
    newest: float  # the newest row write: the next catch-up starts here


# The column each table stamps with the time a row's vector was written (a writer holds the lock, so stamps
# only grow from one commit to the next).
_STAMP_COLUMN = {"images": "indexed_at", "texts": "added_at", "frames": "indexed_at"}
_WRITTEN_SINCE_SQL = {
    "images": "SELECT i.id, v.vector FROM images i JOIN image_vectors v ON v.id = i.id WHERE i.indexed_at >= ?",
    "texts": "SELECT id, vector FROM texts WHERE added_at >= ?",
    "frames": "SELECT id, vector FROM frames WHERE indexed_at >= ?",
}
_ROW_COLUMNS = ", ".join(ImageRow._fields)


def _sqlite(conn: sa.Connection) -> sqlite3.Connection:
    """The pysqlite connection under SQLAlchemy's: the hot reads run on it directly (a third of Core's cost)."""
    return cast(sqlite3.Connection, conn.connection.driver_connection)


def _path_ranges(under: str, leaving_out: Sequence[str]) -> list[tuple[str, str]]:
    """[low, high) ranges of the paths under the folder ``under`` and under none of the folders ``leaving_out``
    (folders inside it, none inside another): a path is under a folder when it starts with it, so the paths under
    one lie between it and it followed by the last code point."""
    last = "\U0010ffff"
    ranges, low = [], under
    for folder in sorted(leaving_out):
        if folder > low:
            ranges.append((low, folder))
        low = max(low, folder + last)
    ranges.append((low, under + last))
    return ranges


def _on_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN")  # every `with` block is one snapshot (pysqlite would not begin reads)


class Store:
    """One collection's database. ``read_only``: no schema work and no writes (read commands)."""

    def __init__(self, db_path: str | Path, read_only: bool = False):
        self.path = Path(db_path)
        self.read_only = read_only
        if not read_only and self.path.exists():
            Store(self.path, read_only=True).close()  # refuse a foreign database before writing to it
        try:
            self._open(sqlite_policy.immutable(self.path) if read_only else "")
        except DiskFullError:
            # A reader on a full disk: SQLite could not make the shared-memory file a WAL database is read through
            # (0.1 failed every query there). With no write-ahead log left, the file is all there is, and no writer
            # can change it without space: it is read as immutable.
            if not read_only or sqlite_policy.unfinished_wal(self.path):
                raise
            self._open("&immutable=1")

    def _open(self, flags: str) -> None:
        url = (
            f"sqlite:///{self.path}"
            if not self.read_only
            else f"sqlite:///{sqlite_policy.read_only_uri(self.path, flags)}&uri=true"
        )
        # One connection per thread, kept open: opening one per call cost 2.5x on small lookups.
        self.engine = sa.create_engine(url, poolclass=sa.pool.SingletonThreadPool, pool_size=32)
        sa.event.listen(
            self.engine, "connect", sqlite_policy.on_connect_read_only if self.read_only else sqlite_policy.on_connect
        )
        sa.event.listen(self.engine, "begin", _on_begin)
        try:
            self._check_schema()
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ---------------------------------------------------------------------------------
    def _check_schema(self) -> None:
        with self._guard():
            with self.engine.begin() as conn:
                version = self._schema_version(conn)
                if version > SCHEMA_VERSION:
                    raise CollectionError(
                        f"{self.path} has schema version {version}, newer than this imgsearch "
                        f"understands ({SCHEMA_VERSION}); upgrade imgsearch"
                    )
                self.schema_version = version
                if self.read_only:
                    return
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[step](conn)
                    self._put(conn, "schema_version", step)
                self.schema_version = SCHEMA_VERSION
                if self._get(conn, "collection_id") is None:  # new, or made before collections had one
                    self._put(conn, "collection_id", uuid.uuid4().hex)
            if version and COMPACTING & set(range(version + 1, SCHEMA_VERSION + 1)):
                self._compact()  # an upgrade freed the old pages: give them back, with the new page size

    @property
    def collection_id(self) -> str | None:
        """This collection's identity (made with it; a copy shares it): what its derived files are stamped with.
        None for a collection made before there were ids, until a writer opens it."""
        return self.get("collection_id")

    @property
    def outdated(self) -> bool:
        """An older schema, opened read-only: a writer must upgrade it before it can be read."""
        return self.schema_version < SCHEMA_VERSION

    def _schema_version(self, conn: sa.Connection) -> int:
        tables = set(sa.inspect(conn).get_table_names())
        if not tables:
            return 0
        row = (
            conn.execute(sa.select(meta_t.c.value).where(meta_t.c.key == "schema_version")).first()
            if ("meta" in tables)
            else None
        )
        if row is None:
            raise CollectionError(
                f"{self.path} is a SQLite database of another application (tables: {', '.join(sorted(tables)[:5])}), "
                "not an imgsearch collection; it was left untouched",
                cli_hint="pass --collection with a new or existing imgsearch collection folder",
                api_hint="open a new or existing imgsearch collection folder",
            )
        return json.loads(row[0])

    def _compact(self) -> None:
        """VACUUM with the new page size; skipped (harmlessly) if another process has the file open."""
        raw = self.engine.raw_connection()
        try:
            for statement in (
                "PRAGMA journal_mode=DELETE",
                f"PRAGMA page_size={PAGE_SIZE}",
                "VACUUM",
                "PRAGMA journal_mode=WAL",
            ):
                cast(sqlite3.Connection, raw.driver_connection).execute(statement)
        except sqlite3.OperationalError:
            cast(sqlite3.Connection, raw.driver_connection).execute("PRAGMA journal_mode=WAL")
        finally:
            raw.close()

    def _guard(self):
        return sqlite_policy.translated_errors(self.path)

    # -- key/value meta -------------------------------------------------------------------------
    @staticmethod
    def _put(conn: sa.Connection, key: str, value) -> None:
        conn.execute(sa.delete(meta_t).where(meta_t.c.key == key))
        conn.execute(sa.insert(meta_t).values(key=key, value=json.dumps(value)))

    @staticmethod
    def _get(conn: sa.Connection, key: str, default=None):
        row = conn.execute(sa.select(meta_t.c.value).where(meta_t.c.key == key)).first()
        return json.loads(row[0]) if row else default

    def get(self, key: str, default=None):
        with self._guard(), self.engine.connect() as conn:
            return self._get(conn, key, default)

    def put(self, key: str, value) -> None:
        with self._guard(), self.engine.begin() as conn:
            self._put(conn, key, value)

    def delete(self, key: str) -> None:
        with self._guard(), self.engine.begin() as conn:
            conn.execute(sa.delete(meta_t).where(meta_t.c.key == key))

    def generation(self, table: str) -> int:
        return self.get(f"{table}_generation", 0)

    def _bump(self, conn: sa.Connection, table: str) -> int:
        gen = self._get(conn, f"{table}_generation", 0) + 1
        self._put(conn, f"{table}_generation", gen)
        return gen

    # -- images ---------------------------------------------------------------------------------
    def image_states(self, under: str | None = None, leaving_out: Sequence[str] = ()) -> dict[str, ImageState]:
        """The stored rows' states by path; ``under``: only those under this folder (a path ending in a separator),
        and not under any of the folders ``leaving_out`` (each planned on its own, ``parallel_plan``)."""
        sql = "SELECT id, path, size, mtime_ns, content_hash FROM images"
        # Ranges on the unique path index: no LIKE, no escaping.
        ranges = _path_ranges(under, leaving_out) if under is not None else []
        with self._guard(), self.engine.connect() as conn, sqlite_policy.gc_paused():
            # The raw sqlite3 cursor and C-level construction: 1M states in ~1.5 s instead of ~4 s through Row objects
            # and a Python loop (measured, docs/performance.md); the collector has nothing to find in fresh tuples.
            cursor = _sqlite(conn)
            if not ranges:
                rows = cursor.execute(sql).fetchall()
            else:
                rows = []
                for low_high in ranges:
                    rows += cursor.execute(sql + " WHERE path >= ? AND path < ?", low_high).fetchall()
            return dict(zip(map(operator.itemgetter(1), rows), map(_new_state, rows)))

    def count_under(self, under: str) -> int:
        """How many stored images are under this folder (a path ending in a separator)."""
        with self._guard(), self.engine.connect() as conn:
            sql = "SELECT count(*) FROM images WHERE path >= ? AND path < ?"
            return _sqlite(conn).execute(sql, _path_ranges(under, ())[0]).fetchone()[0]

    def skipped_states(self, under: str | None = None) -> dict[str, Skip]:
        query = sa.select(skipped_t.c.path, skipped_t.c.size, skipped_t.c.mtime_ns, skipped_t.c.reason)
        if under is not None:
            query = query.where(skipped_t.c.path.startswith(under, autoescape=True))
        with self._guard(), self.engine.connect() as conn:
            return {r.path: Skip(*r) for r in conn.execute(query)}

    def known_sizes(self) -> set[int]:
        """Every stored file size: only new files of one of these sizes can be a copy or a move."""
        with self._guard(), self.engine.connect() as conn:
            return {r[0] for r in conn.exec_driver_sql("SELECT DISTINCT size FROM images")}

    def states_by_hash(self, hashes: Iterable[str]) -> dict[str, list[ImageState]]:
        """Rows anywhere in the collection with one of these content hashes."""
        found: dict[str, list[ImageState]] = {}
        hashes = sorted(set(hashes))
        cols = [images_t.c.id, images_t.c.path, images_t.c.size, images_t.c.mtime_ns, images_t.c.content_hash]
        with self._guard(), self.engine.connect() as conn:
            for start in range(0, len(hashes), 500):
                query = sa.select(*cols).where(images_t.c.content_hash.in_(hashes[start : start + 500]))
                for r in conn.execute(query):
                    found.setdefault(r.content_hash, []).append(ImageState(*r))
        return found

    def apply(self, changes: Changes) -> tuple[list[int], int]:
        """Apply one batch atomically; returns (ids of the new rows, image generation after it).

        An empty batch writes nothing, so a run that changes nothing leaves the saved index current.
        """
        new_ids, generation, _ = self.apply_with_frames(changes)
        return new_ids, generation

    def apply_with_frames(self, changes: Changes) -> tuple[list[int], int, FrameDelta | None]:
        """``apply``, and what the batch did to the videos' frames (None: nothing), in the same transaction: a
        video's row and its frames are stored, replaced and deleted together."""
        if not changes:
            return [], self.generation("images"), None
        now = time.time()
        with self._guard(), self.engine.begin() as conn:
            for key, value in changes.manifest.items():
                self._put(conn, key, value)
            self._forget_skips(
                conn, [c.path for c in changes.new] + [m.path for m in changes.moved] + changes.unskipped
            )
            new_ids = self._insert_images(conn, changes.new, now)
            self._replace_images(conn, changes.replaced, now)
            self._move_images(conn, changes.moved)
            removed = self._frame_ids(conn, list(changes.replaced) + list(changes.deleted))
            self._delete_images(conn, changes.deleted)
            self._record_skips(conn, changes.skipped, now)
            generation = (
                self._bump(conn, "images") if changes.touches_images else self._get(conn, "images_generation", 0)
            )
            videos = [(i, c.frames) for i, c in zip(new_ids, changes.new) if c.frames is not None]
            videos += [(i, c.frames) for i, c in changes.replaced.items() if c.frames is not None]
            frames = self._write_frames(conn, videos, removed, now)
            return new_ids, generation, frames

    @staticmethod
    def _frame_ids(conn: sa.Connection, image_ids: Sequence[int]) -> list[int]:
        found: list[int] = []
        for start in range(0, len(image_ids), _IN_LIMIT):
            chunk = [int(i) for i in image_ids[start : start + _IN_LIMIT]]
            sql = f"SELECT id FROM frames WHERE image_id IN ({','.join('?' * len(chunk))})"
            found += [r[0] for r in _sqlite(conn).execute(sql, chunk)]
        return found

    def _write_frames(
        self, conn: sa.Connection, videos: list[tuple[int, Frames]], removed: list[int], now: float
    ) -> FrameDelta | None:
        """Drop the ``removed`` frame rows and store each video's new frames; None when neither happened."""
        if not videos and not removed:
            return None
        for start in range(0, len(removed), 500):
            conn.execute(sa.delete(frames_t).where(frames_t.c.id.in_(removed[start : start + 500])))
        seq = conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'frames'").first()
        top = conn.exec_driver_sql("SELECT max(id) FROM frames").scalar()
        first = max(seq[0] if seq else 0, top or 0) + 1
        rows = [(image_id, float(t), v) for image_id, frames in videos for t, v in zip(frames.times, frames.vectors)]
        ids = np.arange(first, first + len(rows), dtype=np.int64)
        if rows:
            conn.execute(
                sa.insert(frames_t),
                [
                    {"id": int(i), "image_id": image_id, "time": t, "indexed_at": now, "vector": sqlite_policy.blob(v)}
                    for i, (image_id, t, v) in zip(ids, rows)
                ],
            )
        vectors = np.array([v for _, _, v in rows], np.float32) if rows else np.zeros((0, 0), np.float32)
        return FrameDelta(self._bump(conn, "frames"), ids, vectors, removed)

    def frames_of(self, image_ids: Sequence[int]) -> dict[int, Frames]:
        """{image id: its frames in time order} for the videos among ``image_ids``."""
        found: dict[int, list[tuple[float, bytes]]] = {}
        ids = [int(i) for i in image_ids]
        with self._guard(), self.engine.connect() as conn:
            for start in range(0, len(ids), _IN_LIMIT):
                chunk = ids[start : start + _IN_LIMIT]
                sql = (
                    f"SELECT image_id, time, vector FROM frames WHERE image_id IN ({','.join('?' * len(chunk))})"
                    " ORDER BY image_id, time"
                )
                for image_id, t, blob in _sqlite(conn).execute(sql, chunk):
                    found.setdefault(image_id, []).append((t, blob))
        return {
            i: Frames(np.array([t for t, _ in rows]), np.stack([np.frombuffer(b, np.float32) for _, b in rows]))
            for i, rows in found.items()
        }

    def frame_rows(self, frame_ids: Sequence[int]) -> dict[int, tuple[int, float]]:
        """{frame id: (its video's image id, its time)}."""
        ids = [int(i) for i in frame_ids]
        found: dict[int, tuple[int, float]] = {}
        with self._guard(), self.engine.connect() as conn:
            for start in range(0, len(ids), _IN_LIMIT):
                chunk = ids[start : start + _IN_LIMIT]
                sql = f"SELECT id, image_id, time FROM frames WHERE id IN ({','.join('?' * len(chunk))})"
                found.update((r[0], (r[1], r[2])) for r in _sqlite(conn).execute(sql, chunk))
        return found

    def _insert_images(self, conn: sa.Connection, images: Sequence[NewImage], now: float) -> list[int]:
        if not images:
            return []
        first = self._next_image_id(conn)
        ids = list(range(first, first + len(images)))
        conn.execute(sa.insert(images_t), [dict(_image_values(img, now), id=i) for i, img in zip(ids, images)])
        conn.execute(
            sa.insert(image_vectors_t),
            [{"id": i, "vector": sqlite_policy.blob(img.vector)} for i, img in zip(ids, images)],
        )
        return ids

    @staticmethod
    def _next_image_id(conn: sa.Connection) -> int:
        seq = conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'images'").first()
        top = conn.exec_driver_sql("SELECT max(id) FROM images").scalar()
        return max(seq[0] if seq else 0, top or 0) + 1

    @staticmethod
    def _replace_images(conn: sa.Connection, replaced: dict[int, NewImage], now: float) -> None:
        if not replaced:
            return
        by_id = images_t.c.id == sa.bindparam("b_id")
        values: dict[str, sa.BindParameter] = {
            k: sa.bindparam(k)
            for k in (
                "path",
                "size",
                "mtime_ns",
                "content_hash",
                "width",
                "height",
                "indexed_at",
                "format",
                "taken_at",
                "duration",
            )
        }
        conn.execute(
            sa.update(images_t).where(by_id).values(values),
            [dict(_image_values(img, now), b_id=i) for i, img in replaced.items()],
        )
        conn.execute(
            sa.update(image_vectors_t)
            .where(image_vectors_t.c.id == sa.bindparam("b_id"))
            .values(vector=sa.bindparam("vector")),
            [{"b_id": i, "vector": sqlite_policy.blob(img.vector)} for i, img in replaced.items()],
        )

    @staticmethod
    def _move_images(conn: sa.Connection, moved: Sequence[Moved]) -> None:
        if moved:
            query = (
                sa.update(images_t)
                .where(images_t.c.id == sa.bindparam("b_id"))
                .values(path=sa.bindparam("path"), size=sa.bindparam("size"), mtime_ns=sa.bindparam("mtime_ns"))
            )
            conn.execute(query, [{"b_id": m.id, "path": m.path, "size": m.size, "mtime_ns": m.mtime_ns} for m in moved])

    @staticmethod
    def _delete_images(conn: sa.Connection, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            conn.execute(sa.delete(images_t).where(images_t.c.id.in_(chunk)))
            conn.execute(sa.delete(image_vectors_t).where(image_vectors_t.c.id.in_(chunk)))

    @staticmethod
    def _forget_skips(conn: sa.Connection, paths: Sequence[str]) -> None:
        paths = list(paths)
        for start in range(0, len(paths), 500):
            conn.execute(sa.delete(skipped_t).where(skipped_t.c.path.in_(paths[start : start + 500])))

    @staticmethod
    def _record_skips(conn: sa.Connection, skips: Sequence[Skip], now: float) -> None:
        if skips:
            conn.execute(
                sa.insert(skipped_t).prefix_with("OR REPLACE"),
                [dict(path=s.path, size=s.size, mtime_ns=s.mtime_ns, reason=s.reason, seen_at=now) for s in skips],
            )

    def images_by_id(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        ids = list(ids)
        found: dict[int, ImageRow] = {}
        with self._guard(), self.engine.connect() as conn:
            cursor = _sqlite(conn)  # raw: this runs once per search, ~0.3 ms less than Core
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                sql = f"SELECT {_ROW_COLUMNS} FROM images WHERE id IN ({','.join('?' * len(chunk))})"
                found.update((r[0], ImageRow(*r)) for r in cursor.execute(sql, chunk))
        return found

    def filter_rows(self) -> tuple[tuple, list[tuple]]:
        """(version, rows of (id, path, width, height, taken, format)) for every image, from one snapshot;
        taken is EXIF DateTimeOriginal, else mtime. The version changes whenever any of these fields does."""
        sql = "SELECT id, path, width, height, COALESCE(taken_at, mtime_ns * 1e-9), format FROM images ORDER BY id"
        with self._guard(), self.engine.connect() as conn, sqlite_policy.gc_paused():
            raw = _sqlite(conn)
            return sqlite_policy.filter_version(raw), raw.execute(sql).fetchall()

    def duplicate_rows(self) -> list[tuple]:
        """(id, path, size, width, height, content_hash, is a video) of every image."""
        sql = "SELECT id, path, size, width, height, content_hash, duration IS NOT NULL FROM images"
        with self._guard(), self.engine.connect() as conn:
            return _sqlite(conn).execute(sql).fetchall()

    def filter_version(self) -> tuple:
        """Changes whenever an image's filter fields may have: checked before every filtered search."""
        with self._guard(), self.engine.connect() as conn:
            return sqlite_policy.filter_version(_sqlite(conn))

    def missing_details(self, under: str | None = None) -> list[tuple[int, str]]:
        """(id, path) of rows whose format and date were never read (stored before schema v3)."""
        sql, params = "SELECT id, path FROM images WHERE format IS NULL", cast(tuple[str, ...], ())
        if under is not None:
            sql, params = sql + " AND path >= ? AND path < ?", (under, under + "\U0010ffff")
        with self._guard(), self.engine.connect() as conn:
            return _sqlite(conn).execute(sql, params).fetchall()

    def set_details(self, details: Sequence[tuple[int, str, float | None]]) -> None:
        """Store (id, format, taken_at) read from files, without touching vectors or the index's generation."""
        if not details:
            return
        with self._guard(), self.engine.begin() as conn:
            conn.execute(
                sa.update(images_t)
                .where(images_t.c.id == sa.bindparam("b_id"))
                .values(format=sa.bindparam("format"), taken_at=sa.bindparam("taken_at")),
                [{"b_id": i, "format": f, "taken_at": t} for i, f, t in details],
            )
            self._bump(conn, "details")

    def vectors(self, table: str, ids: Sequence[int] | np.ndarray) -> dict[int, np.ndarray]:
        """{id: vector} of the given images or texts; ids not stored are left out."""
        t = VECTOR_TABLES[table]
        with self._guard(), self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.id, t.c.vector).where(t.c.id.in_([int(i) for i in ids])))
            return {r[0]: np.frombuffer(r[1], np.float32) for r in rows}

    def all_paths(self) -> list[tuple[int, str]]:
        with self._guard(), self.engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql("SELECT id, path FROM images ORDER BY path")]

    def skipped(self) -> list[Skip]:
        with self._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(skipped_t.c.path, skipped_t.c.size, skipped_t.c.mtime_ns, skipped_t.c.reason).order_by(
                    skipped_t.c.path
                )
            )
            return [Skip(*r) for r in rows]

    def delete_rows(self, table: str, ids: Sequence[int]) -> int:
        """Remove images (and their vectors) or texts by id, as one batch; returns the table's new generation."""
        if table == "images":
            return self.apply(Changes(deleted=list(ids)))[1]
        if table != "texts":
            raise ValueError(f"rows of {table} are removed with their video's (delete_rows('images', ...))")
        with self._guard(), self.engine.begin() as conn:
            for start in range(0, len(ids), 500):
                conn.execute(sa.delete(texts_t).where(texts_t.c.id.in_(list(ids[start : start + 500]))))
            return self._bump(conn, "texts")

    def ids_written_before(self, table: str, before: float) -> set[int]:
        """Ids of images (or texts) whose vectors were written before ``before`` (epoch seconds)."""
        sql = f"SELECT id FROM {table} WHERE {_STAMP_COLUMN[table]} < ?"
        with self._guard(), self.engine.connect() as conn:
            return {r[0] for r in _sqlite(conn).execute(sql, (before,))}

    def count_written_before(self, table: str, before: float) -> int:
        sql = f"SELECT count(*) FROM {table} WHERE {_STAMP_COLUMN[table]} < ?"
        with self._guard(), self.engine.connect() as conn:
            return _sqlite(conn).execute(sql, (before,)).fetchone()[0]

    # -- texts ----------------------------------------------------------------------------------
    def add_texts(
        self, texts: Sequence[str], vectors: np.ndarray, source: str | None, manifest: dict | None = None
    ) -> tuple[list[int], int]:
        now = time.time()
        with self._guard(), self.engine.begin() as conn:
            for key, value in (manifest or {}).items():
                self._put(conn, key, value)
            first = (conn.exec_driver_sql("SELECT max(id) FROM texts").scalar() or 0) + 1
            ids = list(range(first, first + len(texts)))
            if ids:
                conn.execute(
                    sa.insert(texts_t),
                    [
                        dict(id=i, text=t, source=source, added_at=now, vector=sqlite_policy.blob(v))
                        for i, t, v in zip(ids, texts, vectors)
                    ],
                )
            return ids, self._bump(conn, "texts")

    def texts_written_before(self, before: float) -> list[tuple[int, str]]:
        """(id, text) of texts whose vectors were written before ``before``."""
        with self._guard(), self.engine.connect() as conn:
            sql = "SELECT id, text FROM texts WHERE added_at < ? ORDER BY id"
            return [tuple(r) for r in _sqlite(conn).execute(sql, (before,))]

    def replace_text_vectors(self, ids: Sequence[int], vectors: np.ndarray) -> int:
        """New vectors for stored texts (same ids), stamped now; returns the texts' generation after it."""
        now = time.time()
        with self._guard(), self.engine.begin() as conn:
            conn.execute(
                sa.update(texts_t)
                .where(texts_t.c.id == sa.bindparam("b_id"))
                .values(vector=sa.bindparam("vector"), added_at=now),
                [{"b_id": int(i), "vector": sqlite_policy.blob(v)} for i, v in zip(ids, vectors)],
            )
            return self._bump(conn, "texts")

    def texts_by_id(self, ids: Sequence[int]) -> dict[int, sa.Row]:
        cols = [texts_t.c.id, texts_t.c.text, texts_t.c.source]
        with self._guard(), self.engine.connect() as conn:
            return {r.id: r for r in conn.execute(sa.select(*cols).where(texts_t.c.id.in_(list(ids))))}

    def clear_texts(self, source: str | None = None) -> int:
        query = sa.delete(texts_t)
        if source is not None:
            query = query.where(texts_t.c.source == source)
        with self._guard(), self.engine.begin() as conn:
            removed = conn.execute(query).rowcount
            self._bump(conn, "texts")
            return removed

    # -- shared ---------------------------------------------------------------------------------
    def is_empty(self) -> bool:
        """No image, text or skip record: a collection that stores nothing yet."""
        return not any(self.has_rows(table) for table in COUNTED)

    def count(self, table: str) -> int:
        with self._guard(), self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(COUNTED[table])).scalar_one()

    def count_videos(self) -> int:
        with self._guard(), self.engine.connect() as conn:
            return conn.exec_driver_sql("SELECT count(*) FROM images WHERE duration IS NOT NULL").scalar_one()

    def has_rows(self, table: str) -> bool:
        with self._guard(), self.engine.connect() as conn:
            return conn.execute(sa.select(COUNTED[table]).limit(1)).first() is not None

    def first_vector_size(self, table: str) -> int | None:
        """Dimension of the stored vectors (without loading the model), or None when there are none."""
        t = VECTOR_TABLES[table]
        with self._guard(), self.engine.connect() as conn:
            size = conn.execute(sa.select(sa.func.length(t.c.vector)).limit(1)).scalar()
        return size // 4 if size else None

    def snapshot_vectors(self, table: str, dim: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(generation, ids, vectors) of every image or text, all from one snapshot.

        Read in chunks into one preallocated array: peak memory is the vectors plus one chunk.
        """
        t = VECTOR_TABLES[table]
        with self._guard(), self.engine.connect() as conn:
            generation = self._get(conn, f"{table}_generation", 0)
            n = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            ids, vectors = np.empty(n, np.int64), np.empty((n, dim), np.float32)
            result = conn.execution_options(yield_per=_READ_CHUNK).execute(
                sa.select(t.c.id, t.c.vector).order_by(t.c.id)
            )
            flat = memoryview(vectors.reshape(-1)).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers
            row_bytes = dim * 4
            for i, (row_id, blob) in enumerate(result):
                ids[i] = row_id
                flat[i * row_bytes : (i + 1) * row_bytes] = blob
        return generation, ids, vectors

    @contextlib.contextmanager
    def vector_stream(self, table: str, dim: int, sample_size: int, seed: int = 1234):
        """For building an index too large to hold as float32 (a compact one), from one snapshot: yields
        (generation, count, a random sample of ``sample_size`` vectors, an iterator of (ids, vectors) chunks in
        id order). The chunks must be consumed inside the ``with``."""
        name = VECTOR_TABLES[table].name
        with self._guard(), self.engine.connect() as conn:
            generation = self._get(conn, f"{table}_generation", 0)
            raw = _sqlite(conn)
            ids = np.fromiter((r[0] for r in raw.execute(f"SELECT id FROM {name} ORDER BY id")), np.int64)
            picked = (
                ids
                if sample_size >= len(ids)
                else np.sort(np.random.default_rng(seed).choice(ids, sample_size, replace=False))
            )
            sample = np.empty((len(picked), dim), np.float32)
            for start in range(0, len(picked), _IN_LIMIT):
                part = picked[start : start + _IN_LIMIT].tolist()
                rows = raw.execute(
                    f"SELECT vector FROM {name} WHERE id IN ({','.join('?' * len(part))}) ORDER BY id", part
                ).fetchall()
                sample[start : start + len(rows)] = sqlite_policy.vectors_of(rows, dim)
            yield (
                generation,
                len(ids),
                sample,
                sqlite_policy.chunks(raw.execute(f"SELECT id, vector FROM {name} ORDER BY id"), dim),
            )

    def changes_since(self, table: str, dim: int, since: float) -> Changed:
        """What a long-lived reader needs to catch up, from one snapshot: the generation, every id, and the
        (id, vector) of rows written at or after ``since`` (new or re-embedded; see ``Changed``)."""
        with self._guard(), self.engine.connect() as conn, sqlite_policy.gc_paused():
            generation, newest = self._newest_write(conn, table)
            raw = _sqlite(conn)
            ids = np.fromiter((r[0] for r in raw.execute(f"SELECT id FROM {table}")), np.int64)
            rows = raw.execute(_WRITTEN_SINCE_SQL[table], (since,)).fetchall()
        vectors = sqlite_policy.vectors_of(rows, dim)
        return Changed(
            generation, ids, np.array([r[0] for r in rows], np.int64), vectors, since if newest is None else newest
        )

    def newest_write(self, table: str) -> tuple[int, float]:
        """(generation, time of the newest row write) from one snapshot: where a reader's catch-up starts."""
        with self._guard(), self.engine.connect() as conn:
            generation, newest = self._newest_write(conn, table)
        return generation, newest or 0.0

    def _newest_write(self, conn: sa.Connection, table: str) -> tuple[int, float | None]:
        newest = conn.exec_driver_sql(f"SELECT max({_STAMP_COLUMN[table]}) FROM {table}").scalar()
        return self._get(conn, f"{table}_generation", 0), None if newest is None else float(newest)


def _image_values(img: NewImage, now: float) -> dict:
    return dict(
        path=img.path,
        size=img.size,
        mtime_ns=img.mtime_ns,
        content_hash=img.content_hash,
        width=img.width,
        height=img.height,
        indexed_at=now,
        format=img.format,
        taken_at=img.taken_at,
        duration=img.duration,
    )
