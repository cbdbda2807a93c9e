"""How imgsearch talks to SQLite beneath SQLAlchemy: the pragmas each connection gets, opening on a read-only disk,
the SQLite failures a user can meet (as ImgsearchErrors with a fix), and the raw row decoding the hot reads use."""

from __future__ import annotations

import contextlib
import gc
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..errors import CollectionDamagedError, CollectionError, DiskFullError

# New databases use 16 KiB pages: a 2 KiB vector row then wastes ~10% of a page instead of half.
PAGE_SIZE = 16384
STREAM_CHUNK = 65536  # rows per chunk when streaming every vector into an index
FILTER_VERSION_SQL = "SELECT key, value FROM meta WHERE key IN ('images_generation', 'details_generation')"


@contextlib.contextmanager
def gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def blob(vector: np.ndarray) -> bytes:
    vector = np.ascontiguousarray(vector, dtype=np.float32)
    if not np.isfinite(vector).all():  # callers filter these out (indexing.batch_changes): a bug if one gets here
        raise ValueError("refusing to store a vector with NaN or infinite values")
    return vector.tobytes()


def on_connect(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" hook below issues BEGIN itself
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA page_size={PAGE_SIZE}")  # no effect once the database holds a table
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the indexer
    cur.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; safe with WAL
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def unfinished_wal(path: Path) -> bool:
    """Whether the database has a write-ahead log with commits not yet in the file."""
    wal = path.with_name(path.name + "-wal")
    return wal.exists() and wal.stat().st_size > 0


def immutable(path: Path) -> str:
    """``&immutable=1`` for a database on a read-only file system, where no one can write it and SQLite could not
    make the shared-memory file WAL mode reads through ("unable to open database file" in 0.1). A write-ahead log
    left with commits in it would then be ignored, so that is refused instead of read wrongly."""
    try:
        read_only_disk = bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return ""
    if not read_only_disk:
        return ""
    if unfinished_wal(path):
        raise CollectionError(
            f"{path} is on a read-only disk with unfinished writes in {path.name}-wal, which SQLite cannot read there; "
            "open the collection once where its folder can be written (or copy the folder to a writable disk)"
        )
    return "&immutable=1"


def read_only_uri(path: Path, flags: str = "") -> str:
    """The SQLite URI that opens ``path`` read-only (``flags``: more query parameters, e.g. ``immutable``)."""
    return f"file:{quote(str(path.absolute()))}?mode=ro{flags}"


def has_schema(path: Path) -> bool:
    """Whether the database at ``path`` holds a table. A first run makes the file a moment before it commits the
    schema (and a run killed in that moment leaves the file so): until then readers see no collection, not an
    outdated one that they would try to upgrade under a lock its writer holds."""
    try:
        conn = sqlite3.connect(read_only_uri(path, immutable(path)), uri=True, timeout=10)
        try:
            return conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None
        finally:
            conn.close()
    except (sqlite3.Error, CollectionError, OSError):
        return True  # unreadable here: opening the store says why, in its words


def on_connect_read_only(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None
    dbapi_conn.execute("PRAGMA busy_timeout=10000")


def vectors_of(rows: Sequence[tuple], dim: int) -> np.ndarray:
    """Rows whose last column is a vector blob, as one (n, dim) float32 array."""
    return np.frombuffer(b"".join(r[-1] for r in rows), np.float32).reshape(len(rows), dim)


def chunks(cursor: sqlite3.Cursor, dim: int):
    while rows := cursor.fetchmany(STREAM_CHUNK):
        yield np.fromiter((r[0] for r in rows), np.int64, len(rows)), vectors_of(rows, dim)


def filter_version(raw: sqlite3.Connection) -> tuple[int, int]:
    found = dict(raw.execute(FILTER_VERSION_SQL).fetchall())
    return int(found.get("images_generation", 0)), int(found.get("details_generation", 0))


class translated_errors:
    """SQLite failures a user can cause or meet become ImgsearchErrors with a fix."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(getattr(exc, "orig", exc), sqlite3.Error):  # SQLAlchemy wraps as .orig
            return False
        text = str(getattr(exc, "orig", exc))
        if "disk is full" in text or "disk I/O error" in text:
            cause = "no space left" if "full" in text else "a disk error (is the disk full?)"
            raise DiskFullError(
                f"{cause} writing {self.path} (SQLite: {text}); free some space and run the command again: "
                "what was saved before is intact"
            ) from None
        if "malformed" in text:
            raise CollectionDamagedError(
                f"{self.path} is damaged (SQLite: {text})",
                cli_hint="`imgsearch check` says what can be repaired, and `imgsearch check --repair` rebuilds what can "
                "be rebuilt (or move the file away and index again)",
                api_hint="Collection.check() says what can be repaired, and check(repair=True) rebuilds what can be "
                "rebuilt (or move the file away and index again)",
            ) from None
        if "not a database" in text:
            raise CollectionError(
                f"{self.path} is not an imgsearch collection (not a SQLite database: {text})",
                cli_hint="pass --collection with a collection folder, or move this file away",
                api_hint="open a collection folder, or move this file away",
            ) from None
        if "readonly" in text or "unable to open" in text:
            raise CollectionError(f"cannot open {self.path}: {text}; check the folder's permissions") from None
        return False
