"""Incremental indexing decisions, as pure functions over what is on disk and what is stored.

Nothing here touches a model, an index or a database, so each rule is easy to test:
unchanged files are skipped, changed ones re-embedded, vanished ones removed, and a
file whose content matches a vanished one is a move (kept, not re-embedded).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from .records import FileEntry, ImageState, Moved, ScanProblem, Skip


@dataclass
class Plan:
    unchanged: int = 0
    new: list[FileEntry] = field(default_factory=list)  # to embed as new rows
    changed: dict[str, tuple[ImageState, FileEntry]] = field(default_factory=dict)  # re-embed in place
    vanished: dict[str, ImageState] = field(default_factory=dict)  # to delete (unless moved)
    moved: list[Moved] = field(default_factory=list)
    touched: list[Moved] = field(default_factory=list)  # new mtime, same content: stat updated, not re-embedded
    still_skipped: int = 0  # skipped before and not modified since: not retried
    problems: list[Skip] = field(default_factory=list)  # could not even stat, newly seen
    gone_skips: list[str] = field(default_factory=list)  # skipped before, no longer on disk
    copies: list[tuple[FileEntry, ImageState]] = field(default_factory=list)  # new path, stored content
    known: int = 0  # stored rows under the folder (seen or vanished)
    folder: str | None = None  # the folder planned, ending in a separator (None: not said)
    stale_paths: set[str] = field(default_factory=set)  # of ``changed``: unchanged files re-embedded because an
    # earlier imgsearch made their vectors wrongly

    @property
    def to_embed(self) -> list[FileEntry]:
        return self.new + [entry for _, entry in self.changed.values()]

    def holds(self, path: str) -> bool:
        """Whether a stored row's path is under the folder planned (so the plan has judged it)."""
        return self.folder is not None and path.startswith(self.folder)


def join_plans(folder: str, plans: Iterable[Plan]) -> Plan:
    """One plan for ``folder`` from the plans of its parts (its own files, each sub-folder), in the scan's order."""
    joined = Plan(folder=folder)
    for plan in plans:
        joined.unchanged += plan.unchanged
        joined.new += plan.new
        joined.changed.update(plan.changed)
        joined.vanished.update(plan.vanished)
        joined.moved += plan.moved
        joined.touched += plan.touched
        joined.still_skipped += plan.still_skipped
        joined.problems += plan.problems
        joined.gone_skips += plan.gone_skips
        joined.copies += plan.copies
        joined.known += plan.known
        joined.stale_paths |= plan.stale_paths
    return joined


def _same_file(state: ImageState | Skip, entry: FileEntry) -> bool:
    return state.size == entry.size and state.mtime_ns == entry.mtime_ns


def make_plan(
    scanned: Iterable[FileEntry | ScanProblem],
    known: dict[str, ImageState],
    skipped: dict[str, Skip],
    stale: AbstractSet[int] = frozenset(),
    rehash: Callable[[str], str | None] | None = None,
    retry: Callable[[str], bool] = lambda reason: False,
    folder: str | None = None,
) -> Plan:
    """Sort the scanned files against the stored rows of the same folder. ``stale``: ids of rows whose vectors
    must be made again (an earlier imgsearch made them wrongly): an unchanged one is re-embedded in place.
    ``rehash``: a content hash function; given, a file with its stored size and mtime is hashed anyway, and is
    changed when its content is (`index --rehash`: `touch -r` can give new content the old time). ``retry``: given a
    skip's reason, whether an unchanged skipped file is tried again (the package it needed is installed now).
    ``folder``: the folder whose files were scanned and whose rows ``known`` holds (ending in a separator)."""
    plan, seen, blind_spots = Plan(folder=folder), set(), []
    for item in scanned:
        seen.add(item.path)
        if isinstance(item, ScanProblem):
            _classify_problem(plan, item, skipped.get(item.path))
            if item.is_folder:
                blind_spots.append(os.path.join(item.path, ""))
        elif item.path in known:
            _classify_known(plan, known[item.path], item, stale, rehash)
        elif item.path in skipped and _same_file(skipped[item.path], item) and not retry(skipped[item.path].reason):
            plan.still_skipped += 1
        else:
            plan.new.append(item)
    unseen = lambda path: path not in seen and not path.startswith(tuple(blind_spots))  # noqa: E731
    if known.keys() - seen:  # a set difference: most runs see every stored file, a million of them
        plan.vanished = {p: s for p, s in known.items() if unseen(p)}
    plan.known = len(known)
    plan.gone_skips = [p for p in skipped if unseen(p)]
    return plan


def _classify_problem(plan: Plan, problem: ScanProblem, before: Skip | None) -> None:
    if before is not None and before.size is None and before.reason == problem.reason:
        plan.still_skipped += 1
    else:
        plan.problems.append(Skip(problem.path, None, None, problem.reason))


def _classify_known(plan: Plan, state: ImageState, entry: FileEntry, stale: AbstractSet[int], rehash=None) -> None:
    same = _same_file(state, entry)
    if same and rehash is not None and state.id not in stale and rehash(entry.path) != state.content_hash:
        plan.changed[entry.path] = (state, entry)  # same size and time, other content
        return
    if same and state.id not in stale:
        plan.unchanged += 1
        return
    plan.changed[entry.path] = (state, entry)
    if same:
        plan.stale_paths.add(entry.path)


def match_content(
    plan: Plan,
    hashes: dict[str, str],
    stored: dict[str, list[ImageState]],
    exists: Callable[[str], bool],
) -> None:
    """Recognise new files by content: a move keeps its row, a copy reuses a stored vector.

    ``hashes``: content hash of (some of) the new files; ``stored``: rows anywhere in the collection
    with those hashes; ``exists``: whether a stored row's file is still on disk. A new file whose
    content belongs to a vanished row under this folder, or to a row elsewhere whose file is gone
    (a renamed folder), is that row moved. Content held by a file still on disk is a copy.
    """
    vanished = {s.id for s in plan.vanished.values()}
    claimed: set[int] = set()
    remaining = []
    for entry in plan.new:
        rows = stored.get(hashes.get(entry.path, ""), [])
        gone = next(
            (
                r
                for r in rows
                if r.id not in claimed and (r.id in vanished or (not plan.holds(r.path) and not exists(r.path)))
            ),
            None,
        )
        if gone is not None:
            claimed.add(gone.id)
            plan.moved.append(Moved(gone.id, entry.path, entry.size, entry.mtime_ns))
            plan.vanished.pop(gone.path, None)
        elif rows:
            plan.copies.append((entry, rows[0]))
        else:
            remaining.append(entry)
    plan.new = remaining


def find_touched(plan: Plan, content_hash: Callable[[str], str | None], stale: AbstractSet[int] = frozenset()) -> None:
    """Changed size/mtime but identical content (a copy without -p, a touch): keep the vector (unless it is stale)."""
    for path, (state, entry) in list(plan.changed.items()):
        if state.id not in stale and content_hash(path) == state.content_hash:
            plan.touched.append(Moved(state.id, path, entry.size, entry.mtime_ns))
            del plan.changed[path]


def reembed_stale(plan: Plan, stale: AbstractSet[int], states: dict[int, ImageState]) -> None:
    """Moves and copies of rows whose vectors are stale: a moved one is re-embedded at its new path, and a copy is
    embedded afresh instead of reusing the stale vector. ``states``: the stored rows, by id."""
    if not stale:
        return
    for move in [m for m in plan.moved if m.id in stale]:
        plan.moved.remove(move)
        plan.changed[move.path] = (states[move.id], FileEntry(move.path, move.size, move.mtime_ns))
        plan.stale_paths.add(move.path)
    for entry, source in [c for c in plan.copies if c[1].id in stale]:
        plan.copies.remove((entry, source))
        plan.new.append(entry)
