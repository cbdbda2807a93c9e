"""One indexing run, step by step: plan against the store, book the changes, embed what is left.

``Collection.index_folder`` drives these under the writer lock. Nothing here holds state between runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from . import images as imgs
from .planning import Plan, find_touched, make_plan, match_content, reembed_stale
from .results import IndexReport, SkippedFile
from .store import Changes, NewImage, Skip, Store


def plan_run(store: Store, root: Path, excludes: Sequence[str], stale_before: float | None = None,
             rehash: bool = False) -> Plan:
    """What to skip, move, copy, re-embed and delete, with content hashes read only where they decide (and for
    every known file with ``rehash``). ``stale_before``: rows whose vectors were written before this time are
    re-embedded (``stale.py``)."""
    prefix = os.path.join(str(root), "")
    stale = store.ids_written_before("images", stale_before) if stale_before is not None else set()
    plan = make_plan(imgs.scan(root, excludes), store.image_states(prefix), store.skipped_states(prefix), stale,
                     _hash_or_none if rehash else None)
    sizes = store.known_sizes() if plan.new else set()
    hashes = {e.path: h for e in plan.new if e.size in sizes and (h := _hash_or_none(e.path))}
    if hashes:
        stored = store.states_by_hash(hashes.values())
        match_content(plan, hashes, stored, os.path.lexists)
        reembed_stale(plan, stale, {s.id: s for rows in stored.values() for s in rows})
    find_touched(plan, _hash_or_none, stale)
    return plan


def bookkeeping(store: Store, plan: Plan) -> Changes:
    """Everything decided without the model: moves, touches, deletions, scan problems, copies."""
    sources = [state.id for _, state in plan.copies]
    vectors, rows = (store.vectors("images", sources), store.images_by_id(sources)) if sources else ({}, {})
    copies = [NewImage(e.path, e.size, e.mtime_ns, s.content_hash, rows[s.id].width, rows[s.id].height, vectors[s.id],
                       rows[s.id].format, rows[s.id].taken_at)
              for e, s in plan.copies if s.id in vectors]
    return Changes(new=copies, moved=plan.moved + plan.touched, deleted=[s.id for s in plan.vanished.values()],
                   skipped=plan.problems, unskipped=plan.gone_skips)


def report_for(root: Path, plan: Plan) -> IndexReport:
    return IndexReport(
        folder=str(root),
        scanned=plan.unchanged + len(plan.touched) + len(plan.new) + len(plan.changed) + len(plan.moved)
        + len(plan.copies) + plan.still_skipped + len(plan.problems),
        unchanged=plan.unchanged + len(plan.touched), moved=len(plan.moved), removed=len(plan.vanished),
        reembedded=len(plan.stale_paths),
        added=len(plan.copies), reused=len(plan.copies), still_skipped=plan.still_skipped,
        skipped=[SkippedFile(p.path, p.reason) for p in plan.problems],
    )


NOT_FINITE = ("the model computed NaN or infinite values for it, so it could never be found; the model or its "
              "cached export is damaged: run `imgsearch check`")


def batch_changes(batch, entries: Sequence[imgs.FileEntry], plan: Plan) -> Changes:
    """The store batch for one embedded batch of files. A vector that is not finite is never stored: its file is
    skipped with the reason (and retried once it changes, like any skipped file)."""
    changes = Changes()
    finite = np.isfinite(batch.vectors).all(axis=1) if len(batch.positions) else np.zeros(0, bool)
    failures = list(batch.failures) + [(pos, NOT_FINITE) for pos, ok in zip(batch.positions, finite) if not ok]
    for pos, details, vector, ok in zip(batch.positions, batch.details, batch.vectors, finite):
        if not ok:
            continue
        entry = entries[pos]
        row = NewImage(entry.path, entry.size, entry.mtime_ns, details.content_hash,
                       details.width, details.height, vector, details.format or "", details.taken_at)
        if entry.path in plan.changed:
            changes.replaced[plan.changed[entry.path][0].id] = row
        else:
            changes.new.append(row)
    for pos, reason in failures:
        entry = entries[pos]
        changes.skipped.append(Skip(entry.path, entry.size, entry.mtime_ns, reason))
        if entry.path in plan.changed:  # was fine, now unreadable: its old vector no longer describes it
            changes.deleted.append(plan.changed[entry.path][0].id)
    return changes


def tally(report: IndexReport, changes: Changes, plan: Plan) -> None:
    report.added += len(changes.new)
    report.updated += sum(1 for row in changes.replaced.values() if row.path not in plan.stale_paths)
    report.removed += len(changes.deleted)
    report.skipped.extend(SkippedFile(s.path, s.reason) for s in changes.skipped)


def backfill_details(store: Store, root: Path, progress=None, batch: int = 2000) -> int:
    """Read format and date from the headers of rows stored before schema v3 (no pixels decoded, nothing
    re-embedded); returns how many rows were filled. A file that cannot be read gets format "" (unknown)."""
    missing = store.missing_details(os.path.join(str(root), ""))
    for start in range(0, len(missing), batch):
        chunk = missing[start : start + batch]
        store.set_details([(i, *_details_or_unknown(path)) for i, path in chunk])
        if progress:
            progress(start + len(chunk), len(missing), "reading details")
    return len(missing)


def _details_or_unknown(path: str) -> tuple[str, float | None]:
    found, taken_at = imgs.read_details(path)
    return found or "", taken_at


def _hash_or_none(path: str) -> str | None:
    try:
        return imgs.file_hash(path)
    except OSError:
        return None
