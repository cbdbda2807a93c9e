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
