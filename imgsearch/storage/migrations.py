"""The schema's upgrades, step by step: ``MIGRATIONS[v]`` brings a database from version v-1 to v.

Each step is the DDL it ran on the day it shipped, frozen as text: never today's table definitions, which would make
a fresh collection and an upgraded one differ once a later step changes a table (tests/test_store.py checks that
they do not). A new version adds a step here and bumps ``store.SCHEMA_VERSION``; the steps before it never change.
"""

from __future__ import annotations

from typing import Protocol


class Connection(Protocol):
    """What a step needs of its connection (SQLAlchemy's, inside the upgrade's transaction)."""

    def exec_driver_sql(self, statement: str): ...


_V1_IMAGE_COLUMNS = ("id", "path", "size", "mtime_ns", "content_hash", "width", "height", "indexed_at")


def _migrate_to_1(conn: Connection) -> None:
    """Version 1: meta, images (vectors inline), texts, skipped."""
    for ddl in (
        'CREATE TABLE meta ("key" VARCHAR NOT NULL PRIMARY KEY, value TEXT)',
        "CREATE TABLE images (id INTEGER NOT NULL PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,"
        " mtime_ns INTEGER NOT NULL, content_hash VARCHAR(32) NOT NULL, width INTEGER, height INTEGER,"
        " indexed_at FLOAT NOT NULL, vector BLOB NOT NULL)",
        "CREATE INDEX ix_images_content_hash ON images (content_hash)",
        "CREATE TABLE texts (\n\tid INTEGER NOT NULL, \n\ttext TEXT NOT NULL, \n\tsource TEXT, \n\tadded_at FLOAT NOT NULL, "
        "\n\tvector BLOB NOT NULL, \n\tPRIMARY KEY (id)\n)",
        "CREATE TABLE skipped (\n\tpath TEXT NOT NULL, \n\tsize INTEGER, \n\tmtime_ns INTEGER, \n\treason TEXT NOT NULL, "
        "\n\tseen_at FLOAT NOT NULL, \n\tPRIMARY KEY (path)\n)",
    ):
        conn.exec_driver_sql(ddl)


def _migrate_to_2(conn: Connection) -> None:
    """Version 2: vectors move out of ``images`` into ``image_vectors``, ids kept, nothing re-embedded."""
    columns = ", ".join(_V1_IMAGE_COLUMNS)
    for ddl in (
        "DROP INDEX IF EXISTS ix_images_content_hash",
        "ALTER TABLE images RENAME TO images_v1",
        "CREATE TABLE images (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE,"
        " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, content_hash VARCHAR(32) NOT NULL, width INTEGER,"
        " height INTEGER, indexed_at FLOAT NOT NULL)",
        "CREATE INDEX ix_images_content_hash ON images (content_hash)",
        "CREATE TABLE image_vectors (\n\tid INTEGER NOT NULL, \n\tvector BLOB NOT NULL, \n\tPRIMARY KEY (id)\n)",
        f"INSERT INTO images ({columns}) SELECT {columns} FROM images_v1",
        "INSERT INTO image_vectors (id, vector) SELECT id, vector FROM images_v1",
        "DROP TABLE images_v1",
    ):
        conn.exec_driver_sql(ddl)


def _migrate_to_3(conn: Connection) -> None:
    """Version 3: filter fields. Adding columns rewrites nothing; the next index run reads them from file headers."""
    conn.exec_driver_sql("ALTER TABLE images ADD COLUMN format VARCHAR(8)")
    conn.exec_driver_sql("ALTER TABLE images ADD COLUMN taken_at FLOAT")


def _migrate_to_4(conn: Connection) -> None:
    """Version 4: videos. A video is one ``images`` row (its ``duration`` set; NULL for photos) whose vector is
    the mean of its frames'; each sampled frame is a ``frames`` row with its time and vector."""
    for ddl in (
        "ALTER TABLE images ADD COLUMN duration FLOAT",
        "CREATE TABLE frames (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, image_id INTEGER NOT NULL,"
        " time FLOAT NOT NULL, indexed_at FLOAT NOT NULL, vector BLOB NOT NULL)",
        "CREATE INDEX ix_frames_image_id ON frames (image_id)",
    ):
        conn.exec_driver_sql(ddl)


# Step-by-step upgrades: MIGRATIONS[v] brings a database from version v-1 to v.
MIGRATIONS = {1: _migrate_to_1, 2: _migrate_to_2, 3: _migrate_to_3, 4: _migrate_to_4}
# Upgrades that free pages (vectors moved out of a table): the database is compacted after them.
COMPACTING = {2}
