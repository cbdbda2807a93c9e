"""The collection's tables as SQLAlchemy Core sees them today (schema v4). New databases and upgrades are made by
``migrations`` from frozen DDL, never from these definitions; ``tests/test_store.py`` checks that the two agree."""

from __future__ import annotations

import sqlalchemy as sa

_md = sa.MetaData()
meta_t = sa.Table("meta", _md, sa.Column("key", sa.String, primary_key=True), sa.Column("value", sa.Text))
images_t = sa.Table(
    "images",
    _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("path", sa.Text, nullable=False, unique=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("mtime_ns", sa.Integer, nullable=False),
    sa.Column("content_hash", sa.String(32), nullable=False, index=True),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("indexed_at", sa.Float, nullable=False),
    # v3: Pillow's format name ("jpeg", "png"...), NULL until read (rows from before v3 are back-filled by
    # the next index run, from the file's header); EXIF DateTimeOriginal in epoch seconds, NULL without one.
    sa.Column("format", sa.String(8)),
    sa.Column("taken_at", sa.Float),
    # v4: a video's length in seconds; NULL for a photo (what tells the two apart).
    sa.Column("duration", sa.Float),
    sqlite_autoincrement=True,  # ids are never reused: a deleted image's id never names another
)
image_vectors_t = sa.Table(
    "image_vectors",
    _md,
    sa.Column("id", sa.Integer, primary_key=True),  # = images.id
    sa.Column("vector", sa.LargeBinary, nullable=False),
)
# v4: the sampled frames of each video (images.duration set), with their time from the start in seconds.
frames_t = sa.Table(
    "frames",
    _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("image_id", sa.Integer, nullable=False, index=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("indexed_at", sa.Float, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
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
# Where each table's vectors live: (table holding them, id column).
VECTOR_TABLES = {"images": image_vectors_t, "texts": texts_t, "frames": frames_t}
COUNTED = {"images": images_t, "texts": texts_t, "skipped": skipped_t, "frames": frames_t}
