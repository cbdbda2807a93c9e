"""A collection's lifecycle: runs that change nothing write nothing, upgrades in place, failed first runs that leave
no trace, moved checkpoints and folders, copies and prune, queries never guessed, the writer lock and its waiting,
decode workers that die with their indexer, full disks and leftover temporary files. Real files, SQLite, faiss and
the tiny open_clip model throughout; each test failed before the change it covers."""

import http.server
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import imgsearch
from imgsearch.config import IndexingConfig
from imgsearch.errors import BadInputError, CollectionError, DiskFullError
from imgsearch.storage import vector_index as index_module
from imgsearch.storage.locking import LOCK_NAME, writer_lock
from imgsearch.storage.store import SCHEMA_VERSION

from conftest import COCO_MINI, TINY_MODEL, run_cli, tmpfs, write_image

DATA = Path(__file__).parent / "data"
FAST = IndexingConfig(workers=0)


def build_count(monkeypatch):
    calls = []
    real = index_module.VectorIndex.build.__func__
    monkeypatch.setattr(
        index_module.VectorIndex, "build", classmethod(lambda cls, *a, **k: calls.append(1) or real(cls, *a, **k))
    )
    return calls


# -- 1. lifecycle ----------------------------------------------------------------------------------------------


def test_a_no_change_run_loads_the_saved_index_and_writes_nothing(engine, photo_dir, monkeypatch):
    engine.index_folder(photo_dir, FAST)
    files = {p.name: p.stat().st_mtime_ns for p in engine.folder.iterdir() if "faiss" in p.name}
    generation = engine._store_for().generation("images")
    builds = build_count(monkeypatch)
    with imgsearch.open(engine.folder) as again:
        report = again.index_folder(photo_dir, FAST)
        assert report.unchanged == 10 and builds == [], "the saved index was rebuilt"
        assert {p.name: p.stat().st_mtime_ns for p in engine.folder.iterdir() if p.name in files} == files
        (photo_dir / "img0.jpg").unlink()
        changed = again.index_folder(photo_dir, FAST)
    assert changed.removed == 1 and builds == []  # a change is applied as a delta to the loaded index
    assert imgsearch.open(engine.folder)._store_for().generation("images") == generation + 1


def test_a_v1_collection_from_the_previous_release_is_upgraded_in_place(tmp_path, tiny_model):
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(DATA / "v1_collection.db", folder / "imgsearch.db")
    with sqlite3.connect(DATA / "v1_collection.db") as v1:
        old = {r[0]: (r[1], np.frombuffer(r[2], np.float32)) for r in v1.execute("SELECT id, path, vector FROM images")}
    with imgsearch.open(folder) as engine:  # a reader: upgrades once under the writer lock
        info = engine.info()
        assert (info.schema_version, info.images, info.texts, info.dim) == (SCHEMA_VERSION, 12, 3, 32)
        some_id, (path, vector) = next(iter(old.items()))
        hit = engine.search_vector(vector, k=1)[0]
        assert (hit.id, hit.path) == (some_id, path)
    with sqlite3.connect(folder / "imgsearch.db") as db:
        moved = {r[0]: np.frombuffer(r[1], np.float32) for r in db.execute("SELECT id, vector FROM image_vectors")}
        assert "vector" not in [r[1] for r in db.execute("PRAGMA table_info(images)")]
        assert db.execute("PRAGMA page_size").fetchone()[0] == 16384
    assert set(moved) == set(old) and all(np.array_equal(moved[i], old[i][1]) for i in old)


@pytest.mark.e2e
def test_read_commands_never_write_and_foreign_databases_are_refused_untouched(tmp_path, engine, photo_dir):
    foreign = tmp_path / "other"
    foreign.mkdir()
    with sqlite3.connect(foreign / "imgsearch.db") as db:
        db.execute("CREATE TABLE notes (body TEXT)")
    before = (foreign / "imgsearch.db").read_bytes()
    proc = run_cli("info", "--index", foreign)
    assert proc.returncode == 1 and "another application" in proc.stderr and "Traceback" not in proc.stderr
    assert (foreign / "imgsearch.db").read_bytes() == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "imgsearch.db").write_bytes(b"not a database at all" * 100)
    proc = run_cli("query", "a dog", "--index", tmp_path / "junk")
    assert proc.returncode == 1 and "not an imgsearch collection" in proc.stderr and "sqlalchemy" not in proc.stderr
    engine.index_folder(photo_dir, FAST)
    engine.close()
    db = engine.folder / "imgsearch.db"
    stamp = (db.stat().st_mtime_ns, db.read_bytes())
    assert run_cli("info", "--index", engine.folder).returncode == 0
    assert (db.stat().st_mtime_ns, db.read_bytes()) == stamp


# -- 2. first run and the collection's life ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [["--model", "ViT-B-32-typo"], ["--pretrained", "/nowhere/ckpt.bin"], ["--device", "gpu"]]
)
@pytest.mark.e2e
def test_a_failed_first_run_leaves_no_stamp_and_the_corrected_command_works(tmp_path, photo_dir, bad):
    coll = tmp_path / "c"
    args = ["index", photo_dir, "--index", coll, "--model", TINY_MODEL, "--pretrained", "none"]
    failed = run_cli(*args[:4], *bad)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1
    if bad[0] == "--device":
        assert "no CUDA GPU" in failed.stderr or "unknown device" in failed.stderr
        assert "offline" not in failed.stderr and "--pretrained FILE" not in failed.stderr
    fixed = run_cli(*args)
    assert fixed.returncode == 0, fixed.stderr
    assert "10 added" in fixed.stdout and run_cli("info", "--index", coll).returncode == 0


def test_a_collection_stamped_by_a_failed_run_of_the_old_release_is_not_bricked(tmp_path, tiny_model, photo_dir):
    folder = tmp_path / "c"
    folder.mkdir()
    shutil.copy(DATA / "v1_collection.db", folder / "imgsearch.db")
    with sqlite3.connect(folder / "imgsearch.db") as db:  # what a failed first run used to leave: a stamp, no rows
        db.execute("DELETE FROM images")
        db.execute("DELETE FROM texts")
        db.execute('UPDATE meta SET value = \'{"name": "ViT-B-32-typo", "pretrained": null}\' WHERE key = \'model\'')
    with imgsearch.open(folder, model=tiny_model) as engine:
        assert engine.index_folder(photo_dir, FAST).added == 10


@pytest.mark.e2e
def test_the_default_model_offline_fails_fast_in_a_few_lines(tmp_path, photo_dir):
    for n, env in enumerate(({"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"})):  # cached only; no host
        started = time.monotonic()
        proc = run_cli("index", photo_dir, "--index", tmp_path / f"c{n}", env={"HF_HOME": str(tmp_path / "hf"), **env})
        assert proc.returncode == 1 and time.monotonic() - started < 30
        assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
        assert "--pretrained none" in proc.stderr and "--pretrained /path/to" in proc.stderr
        retry = run_cli(
            "index", photo_dir, "--index", tmp_path / f"c{n}", "--model", TINY_MODEL, "--pretrained", "none"
        )
        assert retry.returncode == 0 and "10 added" in retry.stdout, retry.stderr


@pytest.mark.e2e
def test_a_moved_checkpoint_is_recognised_by_content(tmp_path, photo_dir):
    import open_clip
    import torch

    from imgsearch.clip.models import register_extra_model_configs

    register_extra_model_configs()  # the tiny architecture, also when this test runs alone
    model = open_clip.create_model(TINY_MODEL, pretrained=None)
    checkpoint = tmp_path / "weights" / "tiny.pt"
    checkpoint.parent.mkdir()
    torch.save(model.state_dict(), checkpoint)
    coll = tmp_path / "c"
    assert (
        run_cli("index", photo_dir, "--index", coll, "--model", TINY_MODEL, "--pretrained", checkpoint).returncode == 0
    )
    moved = tmp_path / "elsewhere.pt"
    checkpoint.rename(moved)
    lost = run_cli("query", "a dog", "--index", coll)
    assert lost.returncode == 1 and "no longer there" in lost.stderr and "--pretrained PATH" in lost.stderr
    found = run_cli("query", "a dog", "--index", coll, "--pretrained", moved)
    assert found.returncode == 0 and found.stdout.count("\n") == 10, found.stderr
    again = run_cli("query", "a dog", "--index", coll)  # remembered, as `index` remembers it (0.1 forgot)
    assert again.returncode == 0 and again.stdout == found.stdout, again.stderr
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, tmp_path / "other.pt")
    other = run_cli("query", "a dog", "--index", coll, "--pretrained", tmp_path / "other.pt")
    assert other.returncode == 1 and "vectors of two models cannot be compared" in other.stderr
    moved.rename(tmp_path / "gone.pt")  # the remembered file gone too: another file is not taken for it
    other = run_cli("query", "a dog", "--index", coll, "--pretrained", tmp_path / "other.pt")
    assert other.returncode == 1 and "contents differ" in other.stderr


def test_a_renamed_folder_is_followed_collection_wide_without_re_embedding(engine, tmp_path, photo_dir):
    engine.index_folder(photo_dir, FAST)
    ids = {Path(p).name: i for i, p in engine._store_for().all_paths()}
    renamed = tmp_path / "renamed"
    photo_dir.rename(renamed)
    report = engine.index_folder(renamed, FAST)
    assert (report.moved, report.embedded, report.added) == (10, 0, 0)
    paths = engine._store_for().all_paths()
    assert len(paths) == 10 and all(p.startswith(str(renamed)) for _, p in paths)
    assert {Path(p).name: i for i, p in paths} == ids


def test_copies_reuse_stored_vectors_and_prune_drops_rows_of_deleted_folders(engine, tmp_path, photo_dir):
    engine.index_folder(photo_dir, FAST)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(photo_dir / "img0.jpg", other / "copy.jpg")
    write_image(other / "fresh.png", seed=99)
    report = engine.index_folder(other, FAST)
    assert (report.added, report.reused, report.embedded) == (2, 1, 1)
    store = engine._store_for()
    by_path = {p: i for i, p in store.all_paths()}
    vectors = store.vectors("images", [by_path[str(other / "copy.jpg")], by_path[str(photo_dir / "img0.jpg")]])
    a, b = vectors.values()
    assert np.array_equal(a, b)
    shutil.rmtree(other)
    assert sorted(engine.prune(dry_run=True)) == [str(other / "copy.jpg"), str(other / "fresh.png")]
    assert engine.info().images == 12
    engine.prune()
    assert engine.info().images == 10 and len(engine.search_vector(a, k=50)) == 10


def test_excludes_and_symlinked_folders(engine, tmp_path, photo_dir):
    write_image(photo_dir / "@eaDir" / "thumb.jpg", seed=50)
    write_image(photo_dir / "raw" / "x.png", seed=51)
    outside = tmp_path / "outside"
    write_image(outside / "linked.jpg", seed=52)
    (photo_dir / "link").symlink_to(outside, target_is_directory=True)
    (photo_dir / "loop").symlink_to(photo_dir, target_is_directory=True)  # a cycle: walked once
    report = engine.index_folder(photo_dir, FAST, excludes=("@eaDir", "raw/*"))
    paths = {p for _, p in engine._store_for().all_paths()}
    assert report.added == 11 and str(photo_dir / "link" / "linked.jpg") in paths
    assert not any("@eaDir" in p or "/raw/" in p or "/loop/" in p for p in paths)


def test_text_and_image_queries_are_never_guessed(engine, photo_dir):
    engine.index_folder(photo_dir, FAST)
    with pytest.raises(BadInputError, match="query image not found: beach.jpg.*search_text"):
        engine.search("beach.jpg")  # a typo in a path is never a text search
    assert len(engine.search_text("beach.jpg", k=3)) == 3
    assert len(engine.search("a sunny beach", k=3)) == 3
    proc = run_cli("query", photo_dir / "img0.jpg", "--index", engine.folder)  # even an existing file: use --image
    assert proc.returncode == 2 and "--image" in proc.stderr


def test_image_queries_by_url_with_a_size_limit(engine, photo_dir, monkeypatch):
    engine.index_folder(photo_dir, FAST)
    photo = next(COCO_MINI.rglob("*.jpg"))
    handler = type("H", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(photo.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert len(engine.search(f"{base}/{photo.name}", k=3)) == 3
        with pytest.raises(BadInputError, match="HTTP 404"):
            engine.search_image(f"{base}/missing.jpg")
        monkeypatch.setattr("imgsearch.fetch.MAX_BYTES", 1000)
        monkeypatch.setattr("imgsearch.fetch.fetch.__defaults__", (1000, 10.0))
        with pytest.raises(BadInputError, match="limit"):
            engine.search_image(f"{base}/{photo.name}")
    finally:
        server.shutdown()


@pytest.mark.e2e
def test_commands_other_than_index_refuse_a_missing_collection(tmp_path):
    for args in (["texts", "clear"], ["texts", "add", __file__], ["info"], ["prune"]):
        proc = run_cli(*args, "--index", tmp_path / "typo")
        assert proc.returncode == 1 and "no collection at" in proc.stderr, args
    assert not (tmp_path / "typo").exists()


@pytest.mark.e2e
def test_help_keeps_its_defaults_and_no_bar_is_drawn_without_a_terminal(tmp_path, photo_dir):
    help_text = run_cli("index", "--help").stdout
    assert "[default: ViT-B-32]" in help_text and "<bool>" not in help_text
    proc = run_cli("index", photo_dir, "--index", tmp_path / "c", "--model", TINY_MODEL, "--pretrained", "none")
    assert proc.returncode == 0 and proc.stderr == ""


# -- 3. killed runs, full disks and leftovers ---------------------------------------------------------------------


def test_the_writer_lock_is_not_inherited_by_children(tmp_path):
    """A child forked while the lock is held (a decode worker) must not keep it once its parent is gone."""
    script = (
        "import os, sys, time; from pathlib import Path; from imgsearch.storage.locking import writer_lock\n"
        "with writer_lock(Path(sys.argv[1])):\n"
        "    if os.fork() == 0: time.sleep(30); os._exit(0)\n"
        "    print('locked', flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        from imgsearch.storage.locking import writer_lock

        with pytest.raises(CollectionError, match="another imgsearch process"):
            with writer_lock(tmp_path / ".lock"):
                pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with writer_lock(tmp_path / ".lock"):  # the orphaned child still runs, but holds nothing
            pass
    finally:
        proc.kill()


@pytest.mark.e2e
def test_decode_workers_die_with_a_killed_indexer(tmp_path):
    folder = tmp_path / "many"
    for i in range(300):
        write_image(folder / f"{i}.png", seed=i, size=(256, 256))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imgsearch.cli",
            "index",
            str(folder),
            "--index",
            str(tmp_path / "c"),
            "--model",
            TINY_MODEL,
            "--pretrained",
            "none",
            "--workers",
            "2",
            "--batch-size",
            "8",
            "--backend",
            "torch",
        ],  # the torch pipeline's worker processes (the export's: threads)
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[int] = []
    deadline = time.monotonic() + 60
    while len(children) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        children = (
            [int(c) for t in Path(f"/proc/{proc.pid}/task").glob("*") for c in (t / "children").read_text().split()]
            if proc.poll() is None
            else []
        )
    assert len(children) >= 2, "no decode workers seen"
    proc.kill()
    proc.wait()

    def alive() -> list[int]:
        found = []
        for child in children:
            try:
                if "Z" not in Path(f"/proc/{child}/stat").read_text().split()[2]:
                    found.append(child)
            except OSError:  # gone
                pass
        return found

    deadline = time.monotonic() + 30  # they notice their parent's death on their own: wait for that, not a guess
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive() == []


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "600k") as mount:
        yield mount


def test_a_full_disk_is_a_one_line_error_and_reads_keep_working(small_disk, tmp_path):
    folder = tmp_path / "photos"
    for i in range(400):
        write_image(folder / f"{i:03d}.png", seed=i)
    coll = small_disk / "c"
    proc = run_cli(
        "index", folder, "--index", coll, "--model", TINY_MODEL, "--pretrained", "none", "--batch-size", "16"
    )
    assert proc.returncode == 1 and "space" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert not list(coll.glob("*.tmp"))
    info = run_cli("info", "--index", coll, "--json")
    assert info.returncode == 0, info.stderr
    query = run_cli("query", "a dog", "--index", coll)
    assert query.returncode == 0 and query.stdout.strip(), query.stderr


def test_leftover_temporary_files_are_removed_by_the_next_writer(engine, photo_dir):
    engine.index_folder(photo_dir, FAST)
    leftover = engine.folder / "images.faiss.12345.tmp"
    leftover.write_bytes(b"x" * 1000)
    engine.index_folder(photo_dir, FAST)
    assert not leftover.exists()


def test_a_failed_save_removes_its_temporary_file(engine, photo_dir, monkeypatch):
    engine.index_folder(photo_dir, FAST)

    def full(index, path):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("Error in faiss::write_index: fwrite failed: No space left on device")

    monkeypatch.setattr(index_module.faiss, "write_index", full)
    (photo_dir / "img0.jpg").unlink()
    with pytest.raises(DiskFullError, match="no space left"):
        engine.index_folder(photo_dir, FAST)
    assert not list(engine.folder.glob("*.tmp"))


@pytest.mark.e2e
def test_a_second_writer_waits_with_a_message_or_fails_at_once_with_no_wait(tmp_path, photo_dir):
    """Scheduled runs that collide: the CLI waits for the first writer by default; --no-wait fails fast."""
    coll = tmp_path / "c"
    coll.mkdir()
    # The holder keeps the lock until told to let go (a line on its stdin): every step waits on an event.
    holder = (
        "import sys; from pathlib import Path; from imgsearch.storage.locking import writer_lock\n"
        "with writer_lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True); sys.stdin.readline()\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "imgsearch",
        "index",
        str(photo_dir),
        "--index",
        str(coll),
        "--model",
        TINY_MODEL,
        "--pretrained",
        "none",
        "-q",
    ]

    def hold():
        held = subprocess.Popen(
            [sys.executable, "-c", holder, str(coll / ".lock")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert held.stdout.readline().strip() == "locked"
        return held

    proc = hold()
    try:
        fast = subprocess.run([*cmd, "--no-wait"], capture_output=True, text=True, timeout=120)
        assert fast.returncode == 1 and "another imgsearch process is writing" in fast.stderr
    finally:
        proc.kill()
        proc.wait()
    proc = hold()
    try:
        writer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = writer.stderr.readline()  # it says it waits, and waits: the lock is still held
        assert "waiting for it to finish" in said and writer.poll() is None, said
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = writer.communicate(timeout=120)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert writer.returncode == 0, err
    assert "10 added" in out


def test_a_no_change_run_does_not_even_read_the_index_file(tmp_path, tiny_model, photo_dir, monkeypatch):
    with imgsearch.open(tmp_path / "c", model=tiny_model) as engine:
        engine.index_folder(photo_dir)
    loads = []
    real_load = index_module.VectorIndex.load_verified.__func__
    monkeypatch.setattr(
        index_module.VectorIndex,
        "load_verified",
        classmethod(lambda cls, *a, **k: loads.append(a) or real_load(cls, *a, **k)),
    )
    with imgsearch.open(tmp_path / "c") as engine:
        assert engine.index_folder(photo_dir).unchanged == 10
    assert loads == []
    os.remove(next(photo_dir.rglob("*.png")))
    with imgsearch.open(tmp_path / "c") as engine:  # a change loads it, applies the delta, and searches stay right
        assert engine.index_folder(photo_dir).removed == 1
        assert len(loads) == 1 and engine.info().images == 9
        assert len(engine.search_text("anything", k=20)) == 9


def test_a_no_change_run_still_repairs_a_stale_index_file(tmp_path, tiny_model, photo_dir):
    """After a crash the stamp lags the store: the next index run (even with nothing to do) rebuilds and saves."""
    with imgsearch.open(tmp_path / "c", model=tiny_model) as engine:
        engine.index_folder(photo_dir)
    (tmp_path / "c" / "images.faiss").unlink()
    with imgsearch.open(tmp_path / "c") as engine:
        assert engine.index_folder(photo_dir).unchanged == 10
    assert (tmp_path / "c" / "images.faiss").exists()


_HOLDER = (
    "import sys; from pathlib import Path; from imgsearch.storage.locking import writer_lock\n"
    "with writer_lock(Path(sys.argv[1]), float('inf'), lambda: print('waiting', flush=True)):\n"
    "    print('locked', flush=True); sys.stdin.readline()\n"
)


def _holder(lock: Path) -> subprocess.Popen:
    """Another process taking the writer lock (waiting for it if need be); it says 'waiting' and 'locked' on its
    stdout, and lets go at a line on its stdin."""
    return subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def test_a_process_waiting_on_a_lock_its_holder_removed_locks_the_file_that_has_the_name(tmp_path):
    """A failed first run removes what it made, its lock included: a process that waited on the removed file must
    not believe it holds the lock while a third locks the new file."""

    lock = tmp_path / "c" / LOCK_NAME
    lock.parent.mkdir()
    with writer_lock(lock):
        waiter = _holder(lock)
        try:
            assert waiter.stdout.readline().strip() == "waiting"
            lock.unlink()  # as Collection._discard_new does, under the lock
        except BaseException:
            waiter.kill()
            raise
    try:
        assert waiter.stdout.readline().strip() == "locked"
        with pytest.raises(CollectionError, match="another imgsearch process is writing"):
            with writer_lock(lock):
                pass
    finally:
        waiter.communicate("\n", timeout=60)


def test_a_query_while_the_first_index_runs_says_so(tmp_path):
    """0.1 said "no images yet; add some with imgsearch index DIR" while that very command was running."""
    from imgsearch.errors import EmptyCollectionError
    from imgsearch.storage.store import Store

    coll = tmp_path / "c"
    coll.mkdir()
    Store(coll / "imgsearch.db").close()  # what a first run has made before its first batch is stored
    with imgsearch.open(coll) as collection, pytest.raises(EmptyCollectionError, match="no images") as idle:
        collection.search("a dog")
    assert "index_folder" in str(idle.value) and "adding" not in str(idle.value)
    writer = _holder(coll / LOCK_NAME)
    try:
        assert writer.stdout.readline().strip() == "locked"
        with imgsearch.open(coll) as collection, pytest.raises(EmptyCollectionError) as busy:
            collection.search("a dog")
        assert "another process is adding the first ones now" in str(busy.value)
        assert "imgsearch index" in busy.value.for_cli()
    finally:
        writer.communicate("\n", timeout=60)


def test_a_reader_meeting_a_first_run_mid_creation_sees_no_collection_yet(tmp_path, tiny_model, photo_dir):
    """A first run makes the database file a moment before it commits the schema. A reader in that moment (the
    server, a search in a loop) took the blank file for an outdated collection, tried to upgrade it under the lock
    the first run holds, and failed with "another imgsearch process is writing"."""
    from imgsearch.errors import CollectionNotFoundError

    coll = tmp_path / "coll"
    coll.mkdir()
    sqlite3.connect(coll / "imgsearch.db").close()  # the file, its schema not yet committed
    with writer_lock(coll / LOCK_NAME):  # the first run holds the lock meanwhile
        reader = imgsearch.open(coll)
        assert not reader.exists and len(reader) == 0
        with pytest.raises(CollectionNotFoundError, match="no collection at"):
            reader.search_text("a photo", k=1)
        reader.close()
    # The same blank file, left by a first run killed in that moment: the next run makes the collection in it.
    with imgsearch.open(coll, model=tiny_model) as engine:
        assert engine.index_folder(photo_dir, FAST).added == 10
    assert imgsearch.open(coll).exists
