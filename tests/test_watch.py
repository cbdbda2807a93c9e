"""Live folders (imgsearch/watching.py): real files, a real watchdog observer (inotify here), a real collection.

Every test waits on the watcher's own runs (``Watcher.wait_for``, woken after each run) and reads the store;
none sleeps to let something happen.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest

from imgsearch.config import WatchConfig
from imgsearch.watching import Watcher

from conftest import write_image

FAST = WatchConfig(settle=0.3, rescan=0.0)
TIMEOUT = 120.0


def _ids(collection, root: Path) -> dict[str, int]:
    if not collection.exists:  # before the first run's first commit
        return {}
    return {Path(h.path).relative_to(root).as_posix(): h.id for h in collection.browse(limit=10_000)}


def _paths(collection, root: Path) -> set[str]:
    return set(_ids(collection, root))


@pytest.fixture
def watched(tmp_path, engine):
    root = tmp_path / "photos"
    write_image(root / "a" / "first.jpg", seed=1)
    watcher = Watcher(engine, [root], config=FAST)
    with watcher:
        assert watcher.wait_for(lambda: len(watcher.runs) >= 1, TIMEOUT), "the start-up scan never ran"
        yield watcher, root


def _until(watcher: Watcher, root: Path, wanted: set[str]) -> None:
    ok = watcher.wait_for(lambda: _paths(watcher.collection, root) == wanted, TIMEOUT)
    assert ok, f"the collection holds {_paths(watcher.collection, root)}, expected {wanted}; runs: {watcher.runs}"


def test_the_start_up_scan_indexes_what_is_there(watched):
    watcher, root = watched
    assert watcher.runs[0].reason == "start" and watcher.runs[0].report.added == 1
    assert _paths(watcher.collection, root) == {"a/first.jpg"}


def test_create_overwrite_rename_move_delete_and_folders_follow_the_files(watched, tmp_path):
    watcher, root = watched
    write_image(root / "a" / "new.png", seed=2)
    _until(watcher, root, {"a/first.jpg", "a/new.png"})
    before = _ids(watcher.collection, root)

    write_image(root / "a" / "new.png", seed=3)  # overwritten in place: re-embedded, same entry
    assert watcher.wait_for(lambda: any(r.report and r.report.updated for r in watcher.runs), TIMEOUT)
    assert _ids(watcher.collection, root)["a/new.png"] == before["a/new.png"]

    os.rename(root / "a" / "new.png", root / "a" / "renamed.png")
    _until(watcher, root, {"a/first.jpg", "a/renamed.png"})
    (root / "b").mkdir()
    os.rename(root / "a" / "renamed.png", root / "b" / "renamed.png")  # to another watched folder
    _until(watcher, root, {"a/first.jpg", "b/renamed.png"})
    assert _ids(watcher.collection, root)["b/renamed.png"] == before["a/new.png"]  # followed, not re-added

    os.rename(root / "b", root / "c")  # a folder renamed
    _until(watcher, root, {"a/first.jpg", "c/renamed.png"})
    assert _ids(watcher.collection, root)["c/renamed.png"] == before["a/new.png"]

    (root / "a" / "first.jpg").unlink()
    _until(watcher, root, {"c/renamed.png"})
    shutil.rmtree(root / "c")  # a folder deleted
    _until(watcher, root, set())
    moved = sum(r.report.moved for r in watcher.runs if r.report)
    added = sum(r.report.added for r in watcher.runs if r.report)
    assert (moved, added) == (3, 2)  # rename, move, folder rename followed by content; only 2 files embedded


def test_a_file_written_slowly_is_read_once_whole(watched):
    watcher, root = watched
    source = write_image(root.parent / "outside" / "slow.jpg", seed=9, size=(400, 300))
    data = source.read_bytes()
    with open(root / "slow.jpg", "wb") as out:
        for start in range(0, len(data), len(data) // 8 + 1):
            out.write(data[start : start + len(data) // 8 + 1])
            out.flush()
            time.sleep(FAST.settle / 3)  # the writer's pace (a slow copy), well inside the settle time
    _until(watcher, root, {"a/first.jpg", "slow.jpg"})
    assert not any(r.report.skipped for r in watcher.runs if r.report), "a half-written file was read"
    assert [h for h in watcher.collection.skipped()] == []


def test_a_burst_is_indexed_in_few_runs_each_file_once(watched, tmp_path):
    watcher, root = watched
    staging = tmp_path / "staging"
    for i in range(500):
        write_image(staging / f"p{i:03}.png", seed=100 + i, size=(32, 32))
    (root / "burst").mkdir()
    for path in sorted(staging.iterdir()):
        shutil.copyfile(path, root / "burst" / path.name)  # a real copy: create, writes, close
    wanted = {"a/first.jpg"} | {f"burst/p{i:03}.png" for i in range(500)}
    _until(watcher, root, wanted)
    runs = [r for r in watcher.runs if r.reason == "events"]
    assert sum(r.report.added for r in runs) == 500
    assert len(runs) <= 10, f"{len(runs)} runs for one burst"


def test_temporary_hidden_and_excluded_names_are_not_watched(watched):
    watcher, root = watched
    matters = lambda rel, folder=False: watcher._matters(str(root / rel), folder)  # noqa: E731
    assert matters("x.jpg") and matters("deep/down/x.HEIC") and matters("a", True)
    for rel in ("x.jpg.part", "x.jpg.crdownload", ".syncthing.x.jpg.tmp", "~$x.jpg", "._x.jpg", "x.tmp"):
        assert not matters(rel), rel
    assert not matters("notes.txt") and not matters(".hidden/x.jpg") and not matters("@eaDir/x.jpg")
    assert not matters("@eaDir", True)
    inside = Watcher(watcher.collection, [watcher.collection.folder.parent])  # a collection in a watched folder
    assert not inside._matters(str(watcher.collection.folder / "imgsearch.db"), False)
    assert not inside._matters(str(watcher.collection.folder / "x.jpg"), False)
    # A download finishing: written under a temporary name, then renamed: indexed once, under its real name
    (root / "dl.jpg.part").write_bytes(write_image(root.parent / "outside" / "dl.jpg", seed=5).read_bytes())
    os.rename(root / "dl.jpg.part", root / "dl.jpg")
    _until(watcher, root, {"a/first.jpg", "dl.jpg"})


def test_changes_while_no_one_watched_are_found_at_start(tmp_path, engine):
    """Lost events: the observer is stopped while files change; the next watcher's start-up scan finds them."""
    root = tmp_path / "photos"
    write_image(root / "kept.jpg", seed=1)
    write_image(root / "gone.jpg", seed=2)
    with Watcher(engine, [root], config=FAST) as watcher:
        _until(watcher, root, {"kept.jpg", "gone.jpg"})
    (root / "gone.jpg").unlink()
    write_image(root / "sub" / "arrived.jpg", seed=3)
    with Watcher(engine, [root], config=FAST) as watcher:
        _until(watcher, root, {"kept.jpg", "sub/arrived.jpg"})
        start = watcher.runs[0].report
        assert (start.added, start.removed, start.unchanged) == (1, 1, 1)


def test_a_periodic_rescan_catches_what_no_event_reported(tmp_path, engine):
    root = tmp_path / "photos"
    root.mkdir()
    unwatched = tmp_path / "elsewhere"
    write_image(unwatched / "x.jpg", seed=4)
    with Watcher(engine, [root], config=WatchConfig(settle=0.3, rescan=0.5)) as watcher:
        watcher.wait_for(lambda: len(watcher.runs) >= 1, TIMEOUT)
        watcher._observer.stop()  # events are lost from here on
        watcher._observer.join()
        shutil.move(unwatched / "x.jpg", root / "x.jpg")
        _until(watcher, root, {"x.jpg"})
        assert watcher.runs[-1].reason == "rescan"


def test_a_folder_that_cannot_be_watched_is_scanned_instead_and_said(tmp_path, engine):
    """The fallback, for real: the folder vanishes between the check and the observer's start, so inotify cannot
    add its watch. The watcher says so, scans every ``poll`` seconds, and finds the photos once the folder is back."""
    root = tmp_path / "photos"
    root.mkdir()
    notices: list[str] = []
    watcher = Watcher(engine, [root], config=WatchConfig(settle=0.3, rescan=0.0, poll=0.2), on_notice=notices.append)
    root.rmdir()
    with watcher:
        assert watcher.polled == [root.resolve()] and watcher._observer is None
        assert notices[0] == f"cannot watch {root.resolve()} (No such file or directory); scanning it every 0.2 s"
        # the start-up run finishes while the folder is still gone: only a poll can find what comes back
        assert watcher.wait_for(lambda: len(watcher.runs) >= 1, TIMEOUT)
        assert watcher.runs[0].reason == "start" and watcher.runs[0].error is not None
        write_image(root / "back.jpg", seed=6)
        _until(watcher, root, {"back.jpg"})
        assert watcher.runs[-1].reason == "poll" and {r.reason for r in watcher.runs} <= {"start", "poll"}


def test_with_events_off_every_folder_is_scanned(tmp_path, engine):
    """``--scan-every``: a network share that sends no events is followed by scans alone."""
    root = tmp_path / "share"
    write_image(root / "one.jpg", seed=1)
    notices: list[str] = []
    config = WatchConfig(settle=0.3, rescan=0.0, poll=0.2, events=False)
    with Watcher(engine, [root], config=config, on_notice=notices.append) as watcher:
        _until(watcher, root, {"one.jpg"})
        assert watcher._observer is None and notices == ["not following file events: scanning every 0.2 s"]
        write_image(root / "two.jpg", seed=2)
        (root / "one.jpg").unlink()
        _until(watcher, root, {"two.jpg"})
        assert {r.reason for r in watcher.runs} == {"start", "poll"}


def test_an_event_storm_under_query_load(tmp_path, engine, tiny_model):
    """Files created, renamed, overwritten and deleted as fast as Python can while another handle searches
    without pause: no search fails, and the collection ends exactly as the folder is, each file once."""
    import imgsearch

    root = tmp_path / "photos"
    root.mkdir()
    watcher = Watcher(engine, [root], config=FAST)
    reader = imgsearch.open(engine.folder, model=tiny_model, live=True)
    stop, searched, failures = threading.Event(), [], []

    def query_load() -> None:
        while not stop.is_set():
            try:
                if reader.exists and not reader.is_empty:
                    reader.refresh()
                    hits = reader.search("a photo of a dog", k=5)
                    assert all(Path(h.path).name.startswith("s") for h in hits)
                    searched.append(len(hits))
            except Exception:  # said below, with the search that raised it
                failures.append(traceback.format_exc())
                return

    load = threading.Thread(target=query_load)
    with watcher:
        load.start()
        try:
            for i in range(200):
                write_image(root / f"d{i % 5}" / f"s{i:03}.jpg", seed=300 + i, size=(32, 32))
            for i in range(0, 200, 2):  # half renamed, some moved between folders
                os.rename(root / f"d{i % 5}" / f"s{i:03}.jpg", root / f"d{(i + 1) % 5}" / f"s{i:03}-r.jpg")
            for i in range(1, 200, 4):
                (root / f"d{i % 5}" / f"s{i:03}.jpg").unlink()
            for i in range(3, 200, 4):  # overwritten in place with another picture
                write_image(root / f"d{i % 5}" / f"s{i:03}.jpg", seed=900 + i, size=(40, 24))
            wanted = {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}
            _until(watcher, root, wanted)
        finally:
            stop.set()
            load.join()
            reader.close()
    assert not failures, failures
    assert searched, "the query load never ran"
    assert len(wanted) == 150 and len(engine) == 150  # each file once: 150 paths, 150 rows


def test_nothing_to_watch_and_missing_folders_are_refused(tmp_path, engine):
    from imgsearch.errors import BadInputError

    with pytest.raises(BadInputError, match="nothing to watch"):
        Watcher(engine, [])
    with pytest.raises(BadInputError, match="not a folder: .*nowhere"):
        Watcher(engine, [tmp_path / "nowhere"])


def test_the_unwatchable_message_names_the_limit_and_the_fix():
    import errno

    from imgsearch.watching import _why_unwatchable

    message = _why_unwatchable(OSError(errno.ENOSPC, "No space left on device"))
    assert "fs.inotify.max_user_watches=524288" in message and "sysctl" in message


@pytest.mark.e2e
def test_imgsearch_watch_indexes_a_new_photo(tmp_path, serve_env):
    """The CLI: `imgsearch watch` prints the start-up run, then one line for the photo that arrives."""
    from conftest import TINY_MODEL

    root = tmp_path / "photos"
    write_image(root / "one.jpg", seed=1)
    env = {**os.environ, **serve_env}
    cmd = [sys.executable, "-m", "imgsearch", "watch", str(root), "--collection", str(tmp_path / "coll")]
    cmd += ["--model", TINY_MODEL, "--pretrained", "none", "--settle", "0.3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    killer = threading.Timer(TIMEOUT, proc.kill)  # a hung watcher fails the test instead of hanging it
    killer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if len(lines) == 1:
                assert "1 added" in line, line
                write_image(root / "two.jpg", seed=2)
            elif "1 added" in line:
                break
        proc.terminate()
        assert proc.wait(TIMEOUT) == 0, proc.stderr.read()
    finally:
        killer.cancel()
        proc.kill()
    assert len(lines) == 2 and "1 added" in lines[1], lines


def test_a_handle_opens_the_export_once_for_all_its_runs(watched):
    """Each watcher run is an index run on one handle: 0.2's handle opened the model's export again for each
    (about 1 s on ViT-B-32, a third of the one-photo budget)."""
    watcher, root = watched
    first = dict(watcher.collection._file_encoders)
    write_image(root / "later.jpg", seed=8)
    _until(watcher, root, {"a/first.jpg", "later.jpg"})
    assert first and watcher.collection._file_encoders == first
    assert all(watcher.collection._file_encoders[k] is v for k, v in first.items())


@pytest.mark.e2e
def test_serve_watch_serves_a_photo_added_after_it_started(tmp_path, serve_env):
    import imgsearch
    from imgsearch.config import ModelConfig

    from conftest import TINY_MODEL, Served

    root, coll = tmp_path / "photos", tmp_path / "coll"
    write_image(root / "one.jpg", seed=1)
    imgsearch.open(coll, model=ModelConfig(TINY_MODEL, None, device="cpu")).index_folder(root)
    served = Served(coll, "--watch", str(root), env=serve_env)
    try:
        write_image(root / "sub" / "two.jpg", seed=2)
        deadline, names = time.monotonic() + TIMEOUT, set()
        while names != {"one.jpg", "two.jpg"} and time.monotonic() < deadline:  # asks the server's store, again
            status, body = served.json("/api/images")
            names = {Path(hit["path"]).name for hit in body["results"]} if status == 200 else set()
        assert names == {"one.jpg", "two.jpg"}, served.log.read_text()
        assert "watching" in served.log.read_text()
    finally:
        assert served.stop() == 0, served.log.read_text()


def _watch(root: Path, coll: Path, env: dict) -> subprocess.Popen:
    from conftest import TINY_MODEL

    cmd = [sys.executable, "-m", "imgsearch", "watch", str(root), "--collection", str(coll), "--model", TINY_MODEL]
    cmd += ["--pretrained", "none", "--settle", "0.3", "--rescan", "0", "--batch-size", "4", "--workers", "0"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def _first_line(proc: subprocess.Popen) -> str:
    killer = threading.Timer(TIMEOUT, proc.kill)  # a hung watcher fails the test instead of hanging it
    killer.start()
    try:
        return proc.stdout.readline()
    finally:
        killer.cancel()


@pytest.mark.e2e
def test_the_watcher_killed_mid_burst_and_restarted_loses_nothing_and_adds_nothing_twice(tmp_path, serve_env):
    import signal

    from test_resume import _rows, assert_consistent

    root, coll = tmp_path / "photos", tmp_path / "coll"
    write_image(root / "first.jpg", seed=1)
    proc = _watch(root, coll, serve_env)
    try:
        assert "1 added" in _first_line(proc), proc.stderr.read() if proc.poll() is not None else ""
        burst = [str(write_image(root / "burst" / f"b{i:03}.png", seed=500 + i, size=(48, 48))) for i in range(300)]
        deadline = time.monotonic() + TIMEOUT
        while _rows(coll / "imgsearch.db") <= 1 + 4:  # the burst's first batch is committed
            assert time.monotonic() < deadline and proc.poll() is None, "the burst was never indexed"
            time.sleep(0.005)
        proc.send_signal(signal.SIGSTOP)  # frozen where it is, then killed there
        at_kill = _rows(coll / "imgsearch.db")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert 1 + 4 < at_kill < 301, at_kill  # mid-burst: frozen the moment its first batch showed, of 75
    assert len(assert_consistent(coll)) == at_kill  # what was committed is whole: store, index and file agree

    proc = _watch(root, coll, serve_env)
    try:
        restarted = _first_line(proc)  # the start-up scan: exactly what the killed run had not committed
        assert f"{301 - at_kill} added" in restarted, restarted
        proc.terminate()
        assert proc.wait(TIMEOUT) == 0, proc.stderr.read()
    finally:
        proc.kill()
    assert sorted(assert_consistent(coll)) == sorted([str(root / "first.jpg"), *burst])


def test_an_overflowing_event_queue_is_noticed_and_scanned_for(tmp_path, engine):
    """A real overflow of the kernel's queue: watchdog's reading thread is held (by the lock it takes before each
    read) while more files are made than ``max_queued_events``, so the kernel drops events and says so. watchdog
    says so only in its log; the watcher hears it, says so with the fix, and scans (0.2 only rescanned hourly),
    also with the root logger at ERROR as the CLI sets it (which silenced that log line)."""
    import logging

    inotify_c = pytest.importorskip("watchdog.observers.inotify_c")
    root_log, inotify_log = logging.getLogger(), logging.getLogger(inotify_c.__name__)
    levels = (root_log.level, inotify_log.level)
    root_log.setLevel(logging.ERROR)  # as the CLI sets it (cli.main)
    inotify_log.setLevel(logging.NOTSET)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    root = tmp_path / "photos"
    root.mkdir()
    notices: list[str] = []
    try:
        _overflow_and_scan(engine, root, tmp_path, inotify_c, limit, notices)
    finally:
        root_log.setLevel(levels[0])
        inotify_log.setLevel(levels[1])


def _overflow_and_scan(engine, root: Path, tmp_path: Path, inotify_c, limit: int, notices: list[str]) -> None:
    with Watcher(engine, [root], config=FAST, on_notice=notices.append) as watcher:
        assert watcher.wait_for(lambda: len(watcher.runs) >= 1, TIMEOUT)
        staging = tmp_path / "staging"
        names = [write_image(staging / f"o{i}.png", seed=700 + i, size=(24, 24)).name for i in range(5)]
        (emitter,) = watcher._observer.emitters
        assert isinstance(emitter._inotify_fd, inotify_c.InotifyFD)
        with emitter._inotify_fd._lock:  # its reading thread waits here, and the kernel's queue fills
            for i in range(limit + 100):  # in the watched folder itself: a new folder's watch would wait on the reader
                (root / f"n{i}.dat").touch()  # one event at least each, images or not
            for name in names:
                os.rename(staging / name, root / name)  # their events come after the queue overflowed
        scanned = watcher.wait_for(lambda: any(r.reason == "lost events" for r in watcher.runs), TIMEOUT)
        assert scanned, f"no scan after the overflow; runs: {watcher.runs}; notices: {notices}"
        assert any("inotify queue overflowed" in n and "max_queued_events=65536" in n for n in notices), notices
        _until(watcher, root, set(names))


def test_a_photo_moved_between_two_watched_folders_is_followed_not_embedded_again(tmp_path, engine):
    """`imgsearch watch A B`: a move from A to B is one change spanning two roots. Run over A first, the photo was
    removed and then embedded again as new in B (a new id, its vector computed twice)."""
    first, second = tmp_path / "first", tmp_path / "second"
    write_image(first / "x.jpg", seed=11)
    second.mkdir()
    with Watcher(engine, [second, first], config=FAST) as watcher:  # the destination listed first, as it may be
        assert watcher.wait_for(lambda: len(watcher.runs) >= 2, TIMEOUT)
        before = {h.path: h.id for h in engine.browse(limit=10)}
        shutil.move(first / "x.jpg", second / "x.jpg")
        assert watcher.wait_for(lambda: [h.path for h in engine.browse(limit=10)] == [str(second / "x.jpg")], TIMEOUT)
        after = {h.path: h.id for h in engine.browse(limit=10)}
        assert after[str(second / "x.jpg")] == before[str(first / "x.jpg")]
        assert sum(r.report.added for r in watcher.runs if r.report and r.reason == "events") == 0
