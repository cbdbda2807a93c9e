"""Files and disks: a collection on a read-only disk answers queries (and `index` there is one line), queries on a
full disk work, a link never decides which of two paths survives, and `index --rehash` finds content changed
under an unchanged size and time. Real tmpfs mounts (the tests run as root in CI)."""

from __future__ import annotations

import os
import subprocess

import pytest

import imgsearch

from conftest import TINY_MODEL, run_cli, tmpfs, write_image


@pytest.fixture
def disk(tmp_path):
    with tmpfs(tmp_path / "disk", "8m") as mount:
        yield mount


def _cli(*args, env=None):
    return run_cli(*args, env={"IMGSEARCH_SERVER": "off", **(env or {})})


def _build(collection, photos, n=6):
    for i in range(n):
        write_image(photos / f"p{i}.png", i)
    proc = _cli("index", photos, "--index", collection, "--model", TINY_MODEL, "--pretrained", "none", "-q")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.e2e
def test_a_collection_on_a_read_only_disk_answers_queries(disk, tmp_path):
    """0.1: every read command failed there ("unable to open database file": WAL needs its -shm file)."""
    _build(disk / "coll", tmp_path / "photos")
    assert subprocess.run(["mount", "-o", "remount,ro", str(disk)]).returncode == 0
    query = _cli("query", "a red square", "--index", disk / "coll", "--json")
    assert query.returncode == 0 and query.stdout.count('"path"') == 6, query.stderr
    info = _cli("info", "--index", disk / "coll")
    assert info.returncode == 0 and "images      6" in info.stdout, info.stderr
    index = _cli("index", tmp_path / "photos", "--index", disk / "coll", "-q")
    assert index.returncode == 1 and "Traceback" not in index.stderr
    assert len(index.stderr.strip().splitlines()) == 1 and "Read-only file system" in index.stderr


@pytest.mark.e2e
def test_unfinished_writes_on_a_read_only_disk_are_refused_with_a_reason(disk, tmp_path):
    """SQLite's immutable mode would ignore a write-ahead log: a writer's last commits, unseen. The folder was copied
    while a writer held commits in its log; on a read-only disk that is one line saying what to do, not a query
    over a past state."""
    import shutil
    import sqlite3

    _build(tmp_path / "coll", tmp_path / "photos")
    writer = sqlite3.connect(tmp_path / "coll" / "imgsearch.db")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO meta(key, value) VALUES ('unfinished', 'yes')")
    writer.commit()
    assert (tmp_path / "coll" / "imgsearch.db-wal").stat().st_size > 0
    shutil.copytree(tmp_path / "coll", disk / "coll")
    writer.close()
    assert subprocess.run(["mount", "-o", "remount,ro", str(disk)]).returncode == 0
    query = _cli("query", "a red square", "--index", disk / "coll", "--json")
    assert query.returncode == 1 and "Traceback" not in query.stderr, query.stderr
    assert "unfinished writes in imgsearch.db-wal" in query.stderr and "writable" in query.stderr


@pytest.mark.e2e
def test_queries_work_on_a_full_disk(disk, tmp_path):
    _build(disk / "coll", tmp_path / "photos")
    filler = disk / "filler"
    with open(filler, "wb") as fh:  # every free block taken
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    query = _cli("query", "a red square", "--index", disk / "coll", "--json")
    assert query.returncode == 0 and query.stdout.count('"path"') == 6, query.stderr
    assert _cli("info", "--index", disk / "coll").returncode == 0


@pytest.mark.parametrize("link_name", ["a-link.png", "z-link.png"])  # before and after the real name
def test_a_link_to_an_indexed_file_never_decides_which_path_survives(tmp_path, tiny_model, link_name):
    """0.1 kept whichever path came first by name: a link named before its target took the row, and the real
    file's row was removed."""
    photos = tmp_path / "photos"
    real = write_image(photos / "m-real.png", 1)
    other = write_image(photos / "other.png", 2)
    with imgsearch.open(tmp_path / "coll", model=tiny_model) as engine:
        engine.index_folder(photos)
        other.unlink()
        (photos / link_name).symlink_to(real)  # a file replaced by a link to another indexed file
        report = engine.index_folder(photos)
        assert sorted(h.path for h in engine.browse()) == [str(real)]
        assert report.removed == 1 and report.added == 0
    outside = write_image(tmp_path / "elsewhere" / "out.png", 3)
    (photos / "to-outside.png").symlink_to(outside)  # a link to a file outside the folder: indexed as the link
    with imgsearch.open(tmp_path / "coll") as engine:
        engine.index_folder(photos)
        assert sorted(h.path for h in engine.browse()) == sorted([str(real), str(photos / "to-outside.png")])


def test_a_link_to_a_folder_inside_is_walked_under_its_own_path(tmp_path, tiny_model):
    photos = tmp_path / "photos"
    write_image(photos / "z-real" / "x.png", 1)
    (photos / "a-link").symlink_to(photos / "z-real")
    with imgsearch.open(tmp_path / "coll", model=tiny_model) as engine:
        engine.index_folder(photos)
        assert [h.path for h in engine.browse()] == [str(photos / "z-real" / "x.png")]


def test_rehash_finds_new_content_under_the_old_size_and_time(tmp_path, tiny_model):
    photos = tmp_path / "photos"
    path = write_image(photos / "a.bmp", 1, (64, 48))  # a BMP's size depends on its dimensions alone
    with imgsearch.open(tmp_path / "coll", model=tiny_model) as engine:
        engine.index_folder(photos)
        before = os.stat(path)
        write_image(path, 2, (64, 48))  # another picture, the same number of bytes
        assert os.stat(path).st_size == before.st_size
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # `touch -r`: the same time
        assert engine.index_folder(photos).updated == 0  # by design: size and time say unchanged
        report = engine.index_folder(photos, rehash=True)
        assert report.updated == 1
