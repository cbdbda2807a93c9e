"""SQLite store: schema versions, atomic batches, generations."""

import sqlite3

import numpy as np
import pytest
import sqlalchemy as sa

from imgsearch.errors import CollectionError
from imgsearch.records import Changes, Moved, NewImage, Skip
from imgsearch.storage.store import SCHEMA_VERSION, Store


def _img(path, digest="h", value=1.0):
    return NewImage(path, 10, 1, digest, 4, 3, np.full(4, value, np.float32))


def test_new_database_is_at_current_schema_version(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    assert store.get("schema_version") == SCHEMA_VERSION
    assert store.generation("images") == 0


def test_newer_schema_is_refused_with_upgrade_advice(tmp_path):
    db = tmp_path / "db.sqlite"
    Store(db).put("schema_version", SCHEMA_VERSION + 1)
    with pytest.raises(CollectionError, match="upgrade imgsearch"):
        Store(db)


def test_apply_is_one_transaction_that_bumps_the_generation(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    ids, gen = store.apply(
        Changes(new=[_img("/a.jpg", "h1"), _img("/b.jpg", "h2", 2.0)], skipped=[Skip("/bad.jpg", 0, 0, "empty file")])
    )
    assert gen == 1 and len(ids) == 2
    _, gen = store.apply(Changes(moved=[Moved(ids[0], "/moved.jpg", 11, 5)], deleted=[ids[1]]))
    assert gen == 2
    assert set(store.image_states()) == {"/moved.jpg"}
    generation, got_ids, vectors = store.snapshot_vectors("images", 4)
    assert generation == 2
    assert got_ids.tolist() == [ids[0]] and vectors[0].tolist() == [1.0] * 4
    assert [s.reason for s in store.skipped()] == ["empty file"]


def test_failed_batch_leaves_nothing_behind(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    store.apply(Changes(new=[_img("/a.jpg")]))
    with pytest.raises(sa.exc.IntegrityError):
        store.apply(Changes(new=[_img("/b.jpg"), _img("/a.jpg")]))  # duplicate path: whole batch fails
    assert set(store.image_states()) == {"/a.jpg"} and store.generation("images") == 1


def test_prefix_filter_treats_like_wildcards_literally(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    store.apply(Changes(new=[_img("/x_1/a.jpg", "1"), _img("/xa1/b.jpg", "2")]))
    assert set(store.image_states("/x_1/")) == {"/x_1/a.jpg"}


def test_adding_a_skip_for_a_path_then_indexing_it_clears_the_skip(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    store.apply(Changes(skipped=[Skip("/a.jpg", 1, 1, "corrupt")]))
    store.apply(Changes(new=[_img("/a.jpg")]))
    assert store.skipped() == []
    assert sqlite3.connect(tmp_path / "db.sqlite").execute("pragma journal_mode").fetchone()[0] == "wal"


def _schema(path) -> dict:
    """Every table's columns (name, type, not null, default, key) and indexes (unique, columns), as SQLite sees
    them: what a migration must leave, whatever text created it."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        schema = {}
        for table in tables:
            columns = [tuple(r[1:]) for r in conn.execute(f"PRAGMA table_info({table})")]
            indexes = sorted(
                (bool(r[2]), tuple(c[2] for c in conn.execute(f"PRAGMA index_info('{r[1]}')")))
                for r in conn.execute(f"PRAGMA index_list({table})")
            )
            autoincrement = "AUTOINCREMENT" in (
                conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0] or ""
            )
            schema[table] = (columns, indexes, autoincrement)
        return schema
    finally:
        conn.close()


def test_a_fresh_schema_equals_an_upgraded_one(tmp_path):
    """Migrations are frozen DDL: replaying today's table definitions broke new collections once a step added a
    column the way v3 did."""
    import shutil
    from pathlib import Path

    data = Path(__file__).parent / "data"
    fresh = tmp_path / "fresh.db"
    Store(fresh).close()
    for old in (data / "v1_collection.db", data / "v2_collection" / "imgsearch.db"):
        upgraded = tmp_path / f"{old.parent.name}-{old.name}"
        shutil.copy(old, upgraded)
        Store(upgraded).close()
        assert _schema(upgraded) == _schema(fresh), old


def test_the_tables_the_store_reads_through_are_the_ones_the_migrations_make(tmp_path):
    """The store reads and writes through SQLAlchemy's table definitions, while migrations create the tables from
    frozen DDL: a column in one and not the other would fail only at the first write that names it."""
    from imgsearch.storage import tables

    Store(tmp_path / "fresh.db").close()
    made = _schema(tmp_path / "fresh.db")
    for table in tables._md.sorted_tables:
        columns, _, _ = made[table.name]
        assert [c[0] for c in columns] == [c.name for c in table.columns], table.name
        assert [bool(c[2]) for c in columns if not c[4]] == [not c.nullable for c in table.columns if not c.primary_key]


def test_a_foreign_database_is_refused_in_the_words_of_each_caller(tmp_path):
    """Library errors carry the facts; the command line's advice (`--collection`) is the CLI's, not Python's."""

    foreign = tmp_path / "other.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE contacts (name TEXT)")
    conn.close()
    with pytest.raises(CollectionError, match="another application") as caught:
        Store(foreign)
    assert "--" not in str(caught.value) and "--collection" in caught.value.for_cli()
