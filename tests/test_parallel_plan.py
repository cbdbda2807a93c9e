"""Planning a big folder in several processes: the plan one process makes, or none at all."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from trees import RICH_EXCLUDES, rich_tree

from imgsearch import images, parallel_plan
from imgsearch.config import IndexingConfig
from imgsearch.indexing import plan_run
from imgsearch.planning import Plan, join_plans, make_plan
from imgsearch.records import Changes, FileEntry, ImageState, Moved, NewImage, ScanProblem, Skip
from imgsearch.storage.store import Store

from conftest import write_image


def _row(path, size, mtime, digest, value=0.0):
    return NewImage(path, size, mtime, digest, 4, 3, np.full(4, value, np.float32))


def _known_tree(tmp_path, root, excludes):
    """A store that knows ``root`` as an earlier run left it, and what has happened since: most files unchanged,
    every fifth written again (another mtime), every seventh new; rows of files gone from a share, from root and
    from a deleted folder; a row under a name that is now a share's folder; the scan's problems recorded as skips,
    and skips of files gone. Returns the store and the ids of two unchanged rows (to mark stale)."""
    store, r = Store(tmp_path / "db.sqlite"), str(root)
    scanned = list(images.scan(root, excludes))
    rows = [
        _row(e.path, e.size, e.mtime_ns + (i % 5 == 1), f"h{i}", i)
        for i, e in enumerate(scanned)
        if isinstance(e, FileEntry) and i % 7 != 3
    ]
    gone = [f"{r}/old.jpg", f"{r}/sub/old.jpg", f"{r}/deleted/x.jpg", f"{r}/subway.jpg", f"{r}/sub"]
    rows += [_row(p, 1, 1, f"g{j}") for j, p in enumerate(gone)]
    skips = [Skip(e.path, None, None, e.reason) for e in scanned if isinstance(e, ScanProblem)]
    skips += [Skip(p, 5, 5, "empty file") for p in (f"{r}/gone.jpg", f"{r}/sub/gone.jpg", f"{r}/2024")]
    ids, _ = store.apply(Changes(new=rows, skipped=skips))
    return store, {ids[0], ids[len(ids) // 2]}


def _plan_in_one_process(store, root, excludes, stale):
    folder = os.path.join(str(root), "")
    known, skipped = store.image_states(folder), store.skipped_states(folder)
    return make_plan(images.scan(root, excludes), known, skipped, stale, None, lambda reason: False, folder)


def _comparable(plan: Plan) -> Plan:
    """The plan with what only the order of the stored rows decides put in one order."""
    return dataclasses.replace(plan, gone_skips=sorted(plan.gone_skips), vanished=dict(sorted(plan.vanished.items())))


def _tree_without_shared_files(tmp_path):
    """The rich tree less the hard link between root's c.png and sub/; with one inside sub/ instead."""
    root = rich_tree(tmp_path)
    os.remove(root / "sub" / "hard-c.png")
    os.link(root / "sub" / "keep.jpg", root / "sub" / "deeper" / "keep-again.jpg")
    return root


@pytest.mark.parametrize("excludes", [(), RICH_EXCLUDES])
def test_processes_make_the_plan_one_process_makes(tmp_path, excludes):
    root = _tree_without_shared_files(tmp_path)
    store, stale = _known_tree(tmp_path, root, excludes)
    os.mkfifo(root / "sub" / "fifo-since.jpg")  # a problem not recorded yet
    alone = _plan_in_one_process(store, root, excludes, stale)
    shared = parallel_plan.plan(store, root, excludes, stale, None, lambda reason: False, workers=2)
    assert shared is not None
    assert _comparable(shared) == _comparable(alone)
    assert list(shared.changed) == list(alone.changed)  # the order they are embedded in
    # The tree and the rows do hold every kind of decision, under root itself and under its sub-folders.
    decided = [alone.new, alone.changed, alone.vanished, alone.problems, alone.gone_skips, alone.stale_paths]
    assert alone.unchanged and alone.still_skipped and all(decided)
    assert {os.path.dirname(p) == str(root) for p in alone.vanished} == {True, False}
    assert {os.path.dirname(e.path) == str(root) for e in alone.new} == {True, False}


def test_a_file_reached_from_two_shares_is_planned_in_one_process(tmp_path):
    root = rich_tree(tmp_path)  # root's c.png is also sub/hard-c.png: which path lists it depends on the whole walk
    store, stale = _known_tree(tmp_path, root, ())
    assert parallel_plan.plan(store, root, (), stale, None, lambda reason: False, workers=2) is None
    os.remove(root / "sub" / "hard-c.png")
    assert parallel_plan.plan(store, root, (), stale, None, lambda reason: False, workers=2) is not None


def test_a_folder_reached_from_two_shares_is_planned_in_one_process(tmp_path):
    root, outside = tmp_path / "photos", tmp_path / "elsewhere"
    for name in ("a/1.jpg", "b/2.jpg"):
        write_image(root / name, seed=len(name))
    write_image(outside / "3.jpg", seed=3)
    os.symlink(outside, root / "a" / "linked")
    store = Store(tmp_path / "db.sqlite")
    assert parallel_plan.plan(store, root, (), set(), None, lambda reason: False, workers=2) is not None
    os.symlink(outside, root / "b" / "linked-too")  # the folder is walked under a/ and under b/
    assert parallel_plan.plan(store, root, (), set(), None, lambda reason: False, workers=2) is None


def test_a_link_to_a_folder_above_root_walks_root_once(tmp_path):
    """a/up leads above root, and from there back to root: each share's walk knows root was walked first."""
    root = tmp_path / "photos"
    for name in ("a/1.jpg", "b/2.jpg"):
        write_image(root / name, seed=len(name))
    write_image(tmp_path / "beside.jpg", seed=5)
    os.symlink(tmp_path, root / "a" / "up")
    store = Store(tmp_path / "db.sqlite")
    alone = _plan_in_one_process(store, root, (), set())
    assert [e.path for e in alone.new] == [str(root / p) for p in ("a/1.jpg", "a/up/beside.jpg", "b/2.jpg")]
    shared = parallel_plan.plan(store, root, (), set(), None, lambda reason: False, workers=2)
    assert shared is not None and _comparable(shared) == _comparable(alone)


def test_the_run_plans_moves_across_shares_as_one_process_does(tmp_path, monkeypatch):
    """plan_run with processes and without: a file moved from one sub-folder to another, and to root, is a move
    (its row kept), whichever process saw it go and come."""
    root = tmp_path / "photos"
    paths = [write_image(root / name, seed=i) for i, name in enumerate(["a/1.jpg", "a/2.jpg", "b/3.png", "b/4.png"])]
    store = Store(tmp_path / "db.sqlite")
    store.apply(
        Changes(new=[_row(str(p), p.stat().st_size, p.stat().st_mtime_ns, images.file_hash(str(p))) for p in paths])
    )
    os.rename(paths[0], root / "b" / "1-moved.jpg")
    os.rename(paths[2], root / "3-moved.png")
    write_image(root / "c" / "new.jpg", seed=9)
    plans = []
    for rows_needed in (10**9, 0):  # one process, then processes
        monkeypatch.setattr(parallel_plan, "MIN_ROWS", rows_needed)
        plans.append(plan_run(store, root.resolve(), ()))
    one, several = plans
    assert _comparable(several) == _comparable(one)
    assert sorted(m.path for m in one.moved) == [str(root / "3-moved.png"), str(root / "b" / "1-moved.jpg")]
    assert [e.path for e in one.new] == [str(root / "c" / "new.jpg")] and not one.vanished


# The second run, in a process of its own: this one has threads left by the first (OpenVINO's telemetry among them),
# and a process with other threads plans alone.
_SECOND_RUN = """
import json, logging, sys
import imgsearch
from imgsearch import parallel_plan
from imgsearch.config import IndexingConfig
logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")
parallel_plan.MIN_ROWS = 1
with imgsearch.open(sys.argv[1]) as collection:
    report = collection.index_folder(sys.argv[2], IndexingConfig(workers=0))
    found = collection.search_image(sys.argv[3], k=1)
print(json.dumps([report.added, report.moved, report.removed, report.unchanged, found[0].path]))
"""


def test_an_index_run_plans_in_processes_and_reports_what_changed(tmp_path, tiny_model):
    import imgsearch

    root, coll = tmp_path / "photos", tmp_path / "coll"
    for i in range(9):
        write_image(root / "abc"[i % 3] / f"{i}.jpg", seed=i)
    with imgsearch.open(coll, model=tiny_model) as collection:
        collection.index_folder(root, IndexingConfig(workers=0))
    os.remove(root / "a" / "0.jpg")
    os.rename(root / "b" / "1.jpg", root / "c" / "1.jpg")
    write_image(root / "10.jpg", seed=10)
    moved = str((root / "c" / "1.jpg").resolve())
    run = subprocess.run(
        [sys.executable, "-c", _SECOND_RUN, str(coll), str(root), moved], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "imgsearch.parallel_plan planned" in run.stderr and "in 2 processes" in run.stderr
    assert json.loads(run.stdout) == [1, 1, 1, 7, moved]


def test_joined_plans_keep_every_part_of_each(tmp_path):
    """join_plans against a plan with every field set: one forgotten field (a new one) would be lost."""
    state = ImageState(1, "/f/a.jpg", 1, 1, "h")
    entry = FileEntry("/f/b.jpg", 2, 2)
    full = Plan(
        unchanged=3,
        new=[entry],
        changed={"/f/a.jpg": (state, FileEntry("/f/a.jpg", 1, 5))},
        vanished={"/f/c.jpg": state},
        moved=[Moved(1, "/f/d.jpg", 1, 1)],
        touched=[Moved(2, "/f/e.jpg", 1, 1)],
        still_skipped=2,
        problems=[Skip("/f/x.jpg", None, None, "unreadable")],
        gone_skips=["/f/y.jpg"],
        copies=[(entry, state)],
        known=7,
        folder="/f/",
        stale_paths={"/f/a.jpg"},
    )
    defaults = Plan()
    assert all(getattr(full, f.name) != getattr(defaults, f.name) for f in dataclasses.fields(Plan))
    assert join_plans("/f/", [Plan(folder="/f/sub/"), full]) == full


def test_stored_rows_can_leave_out_folders(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    paths = ["/p/a.jpg", "/p/a/1.jpg", "/p/a.b/2.jpg", "/p/ab/3.jpg", "/p/a", "/p/b/4.jpg", "/p/b/c/5.jpg", "/q/6.jpg"]
    store.apply(Changes(new=[_row(p, 1, 1, p) for p in paths]))
    for leaving_out in ([], ["/p/a/"], ["/p/b/", "/p/a/"], ["/p/a.b/", "/p/ab/", "/p/a/", "/p/b/"]):
        expected = {p for p in paths if p.startswith("/p/") and not p.startswith(tuple(leaving_out))}
        assert set(store.image_states("/p/", leaving_out)) == expected
    assert store.count_under("/p/") == 7


_THREADS = """
import os, threading
from imgsearch import parallel_plan as pp
assert threading.active_count() == 1
cpus = min(pp.MAX_WORKERS, len(os.sched_getaffinity(0)))
print(pp.workers_for(lambda: pp.MIN_ROWS - 1), pp.workers_for(lambda: pp.MIN_ROWS), cpus)
release = threading.Event()
other = threading.Thread(target=release.wait)
other.start()
print(pp.workers_for(lambda: pp.MIN_ROWS))
release.set()
"""


def test_one_process_plans_while_other_threads_run():
    """A fork copies the locks other threads hold: a server or watcher thread's could leave a worker waiting.
    (In a process of its own: earlier tests leave threads in this one.)"""
    run = subprocess.run([sys.executable, "-c", _THREADS], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    (small, big, cpus), (while_threads,) = [line.split() for line in run.stdout.split("\n")[:2]]
    assert (small, big, while_threads) == ("1", cpus, "1")
