"""A big folder's plan made by several processes at once.

A no-change run of a big folder is mostly the scan: a stat of every file and Python's work for each name, about
4 µs a file in one process however it is written (measured, docs/performance.md); a second thread makes it slower
(the GIL), a second process halves it. So each top-level sub-folder of the folder is a share, planned by a forked
worker: ``images.Walk`` walks it as ``scan`` would, and ``make_plan`` judges it against the stored rows under it.
The folder's own files, and the rows under no share (a sub-folder deleted, excluded or made hidden since), are
planned here; the plans are joined in the scan's order.

The result is the one-process plan's: each share's walk is ``scan``'s walk of that folder, and where one folder or
file is reached from two shares (a link, a hard link), so that the order of the whole walk would decide which path
lists it, ``plan`` returns None and the caller plans in one process after all. One case goes unseen: a file that
one share reaches by its own path and another through a link to a path outside root that is the same file (a bind
mount of a folder inside root) is listed under both paths, where one process lists it once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .images import Walk
from .planning import Plan, join_plans, make_plan

if TYPE_CHECKING:
    from .storage.store import Store

log = logging.getLogger(__name__)

# Below this many stored rows, forking workers costs more than it saves (a no-change run of 50k files takes ~0.3 s).
MIN_ROWS = 50_000
MAX_WORKERS = 8

Key = tuple[int, int]


def workers_for(rows: Callable[[], int]) -> int:
    """How many processes plan a folder; ``rows`` counts its stored rows (asked only where a fork may be made): one
    where processes are not forked on Linux, or where other threads run (a fork copies the locks they hold, and a
    worker could wait on one forever: a server or watcher plans in one process); one below MIN_ROWS rows; else one
    for each CPU this process may use."""
    if sys.platform != "linux" or threading.active_count() > 1 or rows() < MIN_ROWS:
        return 1
    return min(MAX_WORKERS, len(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class _Job:
    db: Path
    root: str
    excludes: tuple[str, ...]
    stale: AbstractSet[int]
    rehash: Callable[[str], str | None] | None
    retry: Callable[[str], bool]


_job: _Job | None = None  # what the forked workers plan: set before they are forked, read in them
_worker_store: Store | None = None


def plan(
    store: Store,
    root: str | os.PathLike,
    excludes: Iterable[str],
    stale: AbstractSet[int],
    rehash: Callable[[str], str | None] | None,
    retry: Callable[[str], bool],
    workers: int,
) -> Plan | None:
    """``make_plan`` over ``scan(root, excludes)`` against the rows under root, made by ``workers`` processes; None
    where it cannot be made so (fewer than two sub-folders, a folder or file reached from two of them, a worker that
    could not start or died)."""
    global _job
    walk = Walk(root, tuple(excludes))
    own = list(walk.folders([walk.top], descend=False))
    if len(walk.subfolders) < 2 or len(walk.seen_folders) != 1:
        return None
    folder = os.path.join(walk.path, "")
    _job = _Job(store.path, walk.path, tuple(walk.excludes), stale, rehash, retry)
    try:
        context = multiprocessing.get_context("fork")
        workers = min(workers, len(walk.subfolders))
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            shares = list(pool.map(_plan_share, walk.subfolders))
    except (OSError, BrokenProcessPool) as exc:
        log.warning("planning %s in one process: a worker process failed (%s)", root, exc)
        return None
    finally:
        _job = None
    if not (
        _apart(walk.seen_folders, *(f for _, f, _ in shares)) and _apart(walk.shared_files, *(s for _, _, s in shares))
    ):
        return None
    paths = {path for path, _ in walk.subfolders}
    prefixes = tuple(os.path.join(path, "") for path in paths)
    # A share's skips are its own (its folder's, where it could not be listed, among them).
    skipped = {p: s for p, s in store.skipped_states(folder).items() if p not in paths and not p.startswith(prefixes)}
    here = make_plan(own, store.image_states(folder, prefixes), skipped, stale, rehash, retry, folder)
    log.debug("planned %s in %d processes, %d sub-folders", root, workers, len(shares))
    return join_plans(folder, [here] + [p for p, _, _ in shares])


def _plan_share(share: tuple[str, str]) -> tuple[Plan, set[Key], list[Key]]:
    """In a worker: one sub-folder's plan, the folders its walk visited and the files another path could reach."""
    global _worker_store
    job = _job
    assert job is not None, "a planning worker runs only in a process forked by plan()"
    if _worker_store is None:
        from .storage.store import Store

        _worker_store = Store(job.db, read_only=True)
    walk = Walk(job.root, job.excludes)
    folder = os.path.join(share[0], "")
    found = walk.folders([share])
    known = _worker_store.image_states(folder)
    skipped = {p: s for p, s in _worker_store.skipped_states(share[0]).items() if p == share[0] or p.startswith(folder)}
    planned = make_plan(found, known, skipped, job.stale, job.rehash, job.retry, folder)
    return planned, walk.seen_folders, walk.shared_files


def _apart(*groups: Iterable[Key]) -> bool:
    """No key in two of the groups."""
    seen: set[Key] = set()
    for group in groups:
        keys = set(group)
        if not seen.isdisjoint(keys):
            return False
        seen |= keys
    return True
