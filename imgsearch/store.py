"""Metadata and vectors in SQLite: the only module that imports SQLAlchemy.

The database is the collection's source of truth (vectors included), so the
FAISS files are a cache that can always be rebuilt. Each batch of changes is one
transaction that also bumps a generation counter, which the FAISS side records
when it saves, to tell whether its file is current.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import sqlalchemy as sa

from .errors import CollectionError

SCHEMA_VERSION = 1

_md = sa.MetaData()
meta_t = sa.Table(
    "meta", _md, sa.Column("key", sa.String, primary_key=True), sa.Column("value", sa.Text)
)
images_t = sa.Table(
    "images",
    _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("path", sa.Text, nullable=False, unique=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("mtime_ns", sa.Integer, nullable=False),
    sa.Column("content_hash", sa.String(32), nullable=False, index=True),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("indexed_at", sa.Float, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
)
texts_t = sa.Table(
    "texts",
    _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("source", sa.Text),
    sa.Column("added_at", sa.Float, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
)
skipped_t = sa.Table(
    "skipped",
    _md,
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("size", sa.Integer),
    sa.Column("mtime_ns", sa.Integer),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("seen_at", sa.Float, nullable=False),
)
TABLES = {"images": images_t, "texts": texts_t}


def _migrate_to_1(conn: sa.Connection) -> None:
    """Version 1: meta, images, texts, skipped."""
    _md.create_all(conn)


# Step-by-step upgrades: MIGRATIONS[v] brings a database from version v-1 to v.
MIGRATIONS = {1: _migrate_to_1}


@dataclass(frozen=True)
class ImageState:
    id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str


@dataclass(frozen=True)
class NewImage:
    path: str
    size: int
    mtime_ns: int
    content_hash: str
    width: int | None
    height: int | None
    vector: np.ndarray


@dataclass(frozen=True)
class Moved:
    id: int
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skip:
    path: str
    size: int | None
    mtime_ns: int | None
    reason: str


@dataclass
class Changes:
    """One atomic batch: rows to insert, rows to re-embed in place, renames, deletions, skips."""

    new: list[NewImage] = field(default_factory=list)
    replaced: dict[int, NewImage] = field(default_factory=dict)  # id -> new content
    moved: list[Moved] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    unskipped: list[str] = field(default_factory=list)  # paths to drop from the skipped list


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the indexer
    cur.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; safe with WAL
    cur.close()


class Store:
    def __init__(self, db_path: str | Path):
        self.path = Path(db_path)
        self.engine = sa.create_engine(f"sqlite:///{self.path}", poolclass=sa.pool.NullPool)
        sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._upgrade()

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ---------------------------------------------------------------------------------
    def _upgrade(self) -> None:
        with self.engine.begin() as conn:
            version = self._schema_version(conn)
            if version > SCHEMA_VERSION:
                raise CollectionError(
                    f"{self.path} has schema version {version}, newer than this imgsearch "
                    f"understands ({SCHEMA_VERSION}); upgrade imgsearch"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[step](conn)
                self._put(conn, "schema_version", step)

    def _schema_version(self, conn: sa.Connection) -> int:
        if not sa.inspect(conn).has_table("meta"):
            return 0
        value = conn.execute(sa.select(meta_t.c.value).where(meta_t.c.key == "schema_version"))
        row = value.first()
        return json.loads(row[0]) if row else 0

    # -- key/value meta -------------------------------------------------------------------------
    @staticmethod
    def _put(conn: sa.Connection, key: str, value) -> None:
        conn.execute(sa.delete(meta_t).where(meta_t.c.key == key))
        conn.execute(sa.insert(meta_t).values(key=key, value=json.dumps(value)))

    def get(self, key: str, default=None):
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(meta_t.c.value).where(meta_t.c.key == key)).first()
        return json.loads(row[0]) if row else default

    def put(self, key: str, value) -> None:
        with self.engine.begin() as conn:
            self._put(conn, key, value)

    def generation(self, table: str) -> int:
        return self.get(f"{table}_generation", 0)

    def _bump(self, conn: sa.Connection, table: str) -> int:
        row = conn.execute(sa.select(meta_t.c.value).where(meta_t.c.key == f"{table}_generation"))
        first = row.first()
        gen = (json.loads(first[0]) if first else 0) + 1
        self._put(conn, f"{table}_generation", gen)
        return gen

    # -- images ---------------------------------------------------------------------------------
    def image_states(self, under: str | None = None) -> dict[str, ImageState]:
        query = sa.select(
            images_t.c.id, images_t.c.path, images_t.c.size, images_t.c.mtime_ns,
            images_t.c.content_hash,
        )
        if under is not None:
            query = query.where(images_t.c.path.startswith(under, autoescape=True))
        with self.engine.connect() as conn:
            return {r.path: ImageState(*r) for r in conn.execute(query)}

    def skipped_states(self, under: str | None = None) -> dict[str, Skip]:
        query = sa.select(skipped_t.c.path, skipped_t.c.size, skipped_t.c.mtime_ns, skipped_t.c.reason)
        if under is not None:
            query = query.where(skipped_t.c.path.startswith(under, autoescape=True))
        with self.engine.connect() as conn:
            return {r.path: Skip(*r) for r in conn.execute(query)}

    def apply(self, changes: Changes) -> tuple[list[int], int]:
        """Apply one batch atomically; returns (ids of the new rows, new image generation)."""
        now = time.time()
        with self.engine.begin() as conn:
            self._forget_skips(conn, [c.path for c in changes.new] + [m.path for m in changes.moved]
                               + changes.unskipped)
            new_ids = [self._insert_image(conn, img, now) for img in changes.new]
            for image_id, img in changes.replaced.items():
                conn.execute(sa.update(images_t).where(images_t.c.id == image_id).values(
                    **_image_values(img, now)))
            for m in changes.moved:
                conn.execute(sa.update(images_t).where(images_t.c.id == m.id).values(
                    path=m.path, size=m.size, mtime_ns=m.mtime_ns))
            if changes.deleted:
                conn.execute(sa.delete(images_t).where(images_t.c.id.in_(changes.deleted)))
            self._record_skips(conn, changes.skipped, now)
            return new_ids, self._bump(conn, "images")

    @staticmethod
    def _insert_image(conn: sa.Connection, img: NewImage, now: float) -> int:
        return conn.execute(sa.insert(images_t).values(**_image_values(img, now))).inserted_primary_key[0]

    @staticmethod
    def _forget_skips(conn: sa.Connection, paths: Sequence[str]) -> None:
        if paths:
            conn.execute(sa.delete(skipped_t).where(skipped_t.c.path.in_(list(paths))))

    @staticmethod
    def _record_skips(conn: sa.Connection, skips: Sequence[Skip], now: float) -> None:
        for s in skips:
            conn.execute(sa.delete(skipped_t).where(skipped_t.c.path == s.path))
            conn.execute(sa.insert(skipped_t).values(
                path=s.path, size=s.size, mtime_ns=s.mtime_ns, reason=s.reason, seen_at=now))

    def forget_skipped(self, paths: Iterable[str]) -> None:
        with self.engine.begin() as conn:
            self._forget_skips(conn, list(paths))

    def images_by_id(self, ids: Sequence[int]) -> dict[int, sa.Row]:
        cols = [images_t.c.id, images_t.c.path, images_t.c.width, images_t.c.height]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*cols).where(images_t.c.id.in_(list(ids))))
            return {r.id: r for r in rows}

    def vectors_by_hash(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        hashes = list(set(hashes))
        query = sa.select(images_t.c.content_hash, images_t.c.vector)
        with self.engine.connect() as conn:
            rows = conn.execute(query.where(images_t.c.content_hash.in_(hashes))) if hashes else []
            return {r[0]: np.frombuffer(r[1], np.float32) for r in rows}

    def skipped(self) -> list[Skip]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(skipped_t.c.path, skipped_t.c.size, skipped_t.c.mtime_ns,
                                          skipped_t.c.reason).order_by(skipped_t.c.path))
            return [Skip(*r) for r in rows]

    # -- texts ----------------------------------------------------------------------------------
    def add_texts(self, texts: Sequence[str], vectors: np.ndarray, source: str | None) -> tuple[list[int], int]:
        now = time.time()
        with self.engine.begin() as conn:
            ids = [
                conn.execute(sa.insert(texts_t).values(
                    text=t, source=source, added_at=now, vector=_blob(v))).inserted_primary_key[0]
                for t, v in zip(texts, vectors)
            ]
            return ids, self._bump(conn, "texts")

    def texts_by_id(self, ids: Sequence[int]) -> dict[int, sa.Row]:
        cols = [texts_t.c.id, texts_t.c.text, texts_t.c.source]
        with self.engine.connect() as conn:
            return {r.id: r for r in conn.execute(sa.select(*cols).where(texts_t.c.id.in_(list(ids))))}

    def clear_texts(self, source: str | None = None) -> int:
        query = sa.delete(texts_t)
        if source is not None:
            query = query.where(texts_t.c.source == source)
        with self.engine.begin() as conn:
            removed = conn.execute(query).rowcount
            self._bump(conn, "texts")
            return removed

    # -- shared ---------------------------------------------------------------------------------
    def count(self, table: str) -> int:
        t = TABLES.get(table, skipped_t if table == "skipped" else None)
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()

    def all_vectors(self, table: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, vector) of images or texts, for rebuilding a FAISS index."""
        t = TABLES[table]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.id, t.c.vector).order_by(t.c.id)).all()
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), dim)
        return ids, vectors


def _image_values(img: NewImage, now: float) -> dict:
    return dict(
        path=img.path, size=img.size, mtime_ns=img.mtime_ns, content_hash=img.content_hash,
        width=img.width, height=img.height, indexed_at=now, vector=_blob(img.vector),
    )
