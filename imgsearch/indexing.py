"""One indexing run, step by step: plan against the store, book the changes, embed what is left, and keep the
collection's FAISS index in step with each committed batch.

``Collection.index_folder`` holds the writer lock and calls ``run``. Nothing here holds state between runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import images as imgs
from . import parallel_plan, stale
from .config import INDEXED_EXTENSIONS, IndexingConfig
from .errors import CollectionError, ExportDamagedError, NothingToIndexError
from .manifest import ModelRecord
from .planning import Plan, find_touched, make_plan, match_content, reembed_stale
from .records import Changes, EmbeddedBatch, FileEntry, NewImage, Skip, format_name
from .results import IndexReport, SkippedFile
from .storage.store import Store
from .storage.synced import SyncedIndex


@dataclass(frozen=True)
class Target:
    """The collection a run writes to, as ``Collection`` gives it."""

    folder: Path
    models: ModelRecord
    dim: Callable[[], int | None]  # None until the first vectors are stored
    synced: Callable[[str], SyncedIndex]  # a table's index, opened on first use
    opened: Callable[[str], SyncedIndex | None]  # a table's index only if already open
    embedder: Callable[[], Any]  # torch's model (loads it)
    # What embeds image files (``encoders.file_encoder``): given the settings, how many files this run embeds and
    # the stage callback; kept for the handle's later runs.
    file_encoder: Callable[[IndexingConfig, int, Any], Any]
    forget_file_encoder: Callable[[], None]  # drops the kept one (its export was found damaged)


def run(
    target: Target, store: Store, root: Path, settings: IndexingConfig, progress, excludes: Sequence[str], rehash: bool
) -> IndexReport:
    """Embed new and changed images under ``root``, drop vanished ones, follow moved ones (``Collection.index_folder``
    has the rules); ``store`` is open for writing, under the writer lock."""
    started = time.monotonic()
    target.models.note_changes(store)  # also refuses a model other than the collection's, up front
    stale_before = target.models.stale_before(store)
    plan = plan_run(store, root, excludes, stale_before, rehash)
    if _nothing_there(plan):
        raise NothingToIndexError(
            f"no image or video files under {root}: nothing to index (imgsearch reads "
            f"{' '.join(sorted(INDEXED_EXTENSIONS))}; "
            "hidden files and excluded names are left out)"
        )
    report = report_for(root, plan)
    report.reembedded_why = "; ".join((store.get(stale.STALE_KEY) or {}).get("why", [])) or None
    report.backfilled = backfill_details(store, root, progress)  # rows from before schema v3
    synced = target.synced("images") if target.dim() else None
    booked = bookkeeping(store, plan)
    if synced is not None and (booked.touches_images or plan.to_embed or not synced.saved_is_current()):
        # Load the saved index while it is current, then apply deltas; a missing or stale file (a crashed run) is
        # rebuilt and saved here. A run that changes nothing never reads the file.
        synced.index  # noqa: B018
    try:
        mirror(synced, *apply(target, store, booked))
        _embed_plan(target, store, synced, plan, settings, report, progress)
        if stale_before is not None:
            _reembed_texts(target, store, stale_before)
            target.models.clear_stale(store)
    finally:
        save_opened(target)
        report.seconds = time.monotonic() - started
    return report


def save_opened(target: Target) -> None:
    """Save the images' and the frames' indexes where this run opened them (a first run creates them)."""
    for table in ("images", "frames"):
        synced = target.opened(table)
        if synced is not None:
            synced.save()


def _nothing_there(plan: Plan) -> bool:
    """The folder holds no image file, and the collection knew none under it: a mistyped or wrong folder (0.1
    reported "0 added ... 0 skipped" and created an empty collection)."""
    found = plan.unchanged or plan.new or plan.changed or plan.moved or plan.copies or plan.touched
    return not (found or plan.known or plan.problems or plan.still_skipped or plan.gone_skips)


def prune(target: Target, store: Store, dry_run: bool) -> list[str]:
    """Rows (and skip records) whose files are gone, anywhere in the collection, dropped unless ``dry_run``."""
    gone = [(i, p) for i, p in store.all_paths() if not os.path.exists(p)]
    stale_skips = [s.path for s in store.skipped() if not os.path.lexists(s.path)]
    if not dry_run and (gone or stale_skips):
        synced = target.synced("images") if target.dim() else None
        if synced is not None:
            synced.index  # noqa: B018 - load it first, so only the delta is applied
        mirror(synced, *apply(target, store, Changes(deleted=[i for i, _ in gone], unskipped=stale_skips)))
        save_opened(target)
    return [p for _, p in gone]


def add_texts(target: Target, store: Store, texts: list[str], source: str | None, progress, batch_size: int) -> None:
    """Embed and store texts for image -> text search, in batches, each one transaction mirrored in the index."""
    synced = None
    if progress and texts:  # loading the model (and a first run's export) takes a while: 0.1 showed nothing for 60 s
        progress(0, len(texts), "loading model")
        target.embedder().load(lambda name: progress(0, len(texts), name))
        progress(0, len(texts), "embedding")
    try:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            vectors = target.embedder().embed_texts(chunk)
            if not np.isfinite(vectors).all():
                bad = chunk[int(np.argmin(np.isfinite(vectors).all(axis=1)))]
                raise CollectionError(
                    f"the model computed NaN or infinite values for the text {bad!r}; the model or "
                    "its cached export is damaged: run `imgsearch check`"
                )
            manifest = (
                target.models.manifest(vectors.shape[1], target.embedder().recipe_record)
                if target.models.stored() is None
                else {}
            )
            ids, generation = store.add_texts(chunk, vectors, source, manifest)
            synced = synced or target.synced("texts")
            synced.update(generation, ids, vectors)
            if progress:
                progress(start + len(chunk), len(texts), "embedding")
    finally:
        if synced is not None:
            synced.save()


def apply(target: Target, store: Store, changes: Changes) -> tuple[Changes, list[int], int]:
    """Commit one batch; the frames index (opened on a video's first frames) mirrors what it did to frames, and
    the caller mirrors the images index with what this returns."""
    new_ids, generation, frames = store.apply_with_frames(changes)
    if frames is not None:
        target.synced("frames").update(
            frames.generation, frames.added_ids, frames.added_vectors, remove_ids=frames.removed_ids
        )
    return changes, new_ids, generation


def mirror(synced: SyncedIndex | None, changes: Changes, new_ids: list[int], generation: int) -> None:
    """Bring the in-memory index in step with a batch the store has committed."""
    if synced is None or not changes.touches_images:  # the generation did not move: nothing to mirror
        return
    replaced = list(changes.replaced)
    vectors = [c.vector for c in changes.new] + [c.vector for c in changes.replaced.values()]
    synced.update(
        generation,
        new_ids + replaced,
        np.array(vectors, np.float32).reshape(-1, synced.dim),
        remove_ids=replaced + changes.deleted,
    )


def _embed_plan(
    target: Target,
    store: Store,
    synced: SyncedIndex | None,
    plan: Plan,
    settings: IndexingConfig,
    report: IndexReport,
    progress,
) -> None:
    entries = plan.to_embed
    if not entries:
        return
    if progress:
        progress(0, len(entries), "loading model")
    loading = time.monotonic()
    stage = (lambda name: progress(0, len(entries), name)) if progress else None
    batches, recipe = _embedded(target, entries, plan, settings, report, stage)
    ready = time.monotonic()
    report.model_seconds = ready - loading
    if progress:  # the bar's rate and time left count from here: the first batch is embedding's, not loading's
        progress(0, len(entries), "embedding")
    stamp = target.models.stored() is None  # stamped with the first batch: a failed start leaves no trace
    done, noted = 0, False
    for changes, files in batches:
        if stamp and changes.new:
            dim = changes.new[0].vector.shape[0]
            changes.manifest, stamp = target.models.manifest(dim, recipe), False
        if not noted and (changes.new or changes.replaced):
            changes.manifest, noted = {**changes.manifest, "backend": report.backend}, True
        applied = apply(target, store, changes)
        if synced is None and target.dim():  # made once a first vector is stored (a batch may hold only failures)
            synced = target.synced("images")
        mirror(synced, *applied)
        if synced is not None:
            synced.save(at_most_every=settings.checkpoint_seconds)
        tally(report, changes, plan)
        done += files
        report.embed_seconds = time.monotonic() - ready
        if progress:
            progress(done, len(entries), "embedding")
    if settings.ray:  # every shard row is committed: the shards have done their job
        _ray().clear(target.folder / _ray().SHARDS)


def _embedded(
    target: Target, entries: Sequence[FileEntry], plan: Plan, settings: IndexingConfig, report: IndexReport, stage=None
):
    """(an iterator of (the store batch, how many files it accounts for), the recipe the vectors are made with):
    photos from this process's model or from a Ray cluster's shards, then each video in this process. ``stage`` is
    told each slow step of loading the model (its one-time export and check)."""
    photos = [e for e in entries if not imgs.is_video_name(e.path)]
    videos = [e for e in entries if imgs.is_video_name(e.path)]
    model = target.models.model
    if settings.ray:
        from .clip.models import recipe_for

        report.backend = "ray"
        shards = _ray_batches(target, photos, settings)
        encoder = _encoder(target, settings, report, stage, 0) if videos else None
        return _batches(shards, photos, videos, plan, encoder, settings), recipe_for(model).to_dict()
    encoder = _encoder(target, settings, report, stage, len(photos))
    files = encoder.embed_files([e.path for e in photos], settings) if photos else iter(())
    return _batches(files, photos, videos, plan, encoder, settings), encoder.recipe_record


def _ray_batches(target: Target, photos: Sequence[FileEntry], settings: IndexingConfig):
    if not photos:
        return iter(())
    from .clip.models import model_image_size

    model = target.models.model
    return _ray().embedded(photos, model, settings, target.folder / _ray().SHARDS, model_image_size(model))


def _encoder(target: Target, settings: IndexingConfig, report: IndexReport, stage, files: int):
    """The loaded file encoder for a run embedding ``files`` images; a model or download error surfaces here, before
    any progress."""
    try:
        encoder = target.file_encoder(settings, files, stage).load(stage, files)
    except ExportDamagedError as exc:  # found (and removed) as its session was made: torch makes it again
        target.forget_file_encoder()
        report.notes.append(str(exc))
        encoder = target.embedder().load(stage, files)
    if report.backend != "ray":
        report.backend = encoder.backend
    report.notes = report.notes + list(encoder.notes)
    return encoder


def _batches(files, photos: Sequence[FileEntry], videos: Sequence[FileEntry], plan: Plan, encoder, settings):
    for batch in files:
        yield batch_changes(batch, photos, plan), len(batch.positions) + len(batch.failures)
    for entry in videos:  # one video, one transaction: its row and every frame, or nothing
        yield video_changes(encoder, entry, plan, settings), 1


def video_changes(encoder, entry: FileEntry, plan: Plan, settings: IndexingConfig) -> Changes:
    """The store batch for one video: its row (vector: the mean of its frames') and frames, or its skip."""
    from . import video

    try:
        batch = min(settings.batch_size, settings.video.batch_size)
        embedded = video.embed(encoder, entry.path, settings.video, batch)
        if not np.isfinite(embedded.frames.vectors).all():
            raise video.VideoSkipped(NOT_FINITE)
        content_hash = imgs.file_hash(entry.path)
    except (video.VideoSkipped, OSError) as exc:
        reason = str(exc) if isinstance(exc, video.VideoSkipped) else f"unreadable: {exc.strerror or exc}"
        changes = Changes(skipped=[Skip(entry.path, entry.size, entry.mtime_ns, reason)])
        if entry.path in plan.changed:  # was fine, now unreadable: its old vectors no longer describe it
            changes.deleted.append(plan.changed[entry.path][0].id)
        return changes
    width, height = embedded.size
    row = NewImage(
        entry.path,
        entry.size,
        entry.mtime_ns,
        content_hash,
        width,
        height,
        embedded.mean,
        format_name(os.path.splitext(entry.path)[1]) or "",
        embedded.info.taken_at,
        embedded.duration,
        embedded.frames,
    )
    if entry.path in plan.changed:
        return Changes(replaced={plan.changed[entry.path][0].id: row})
    return Changes(new=[row])


def _reembed_texts(target: Target, store: Store, before: float) -> None:
    """Texts whose vectors are stale, embedded again in place (same ids)."""
    rows = store.texts_written_before(before)
    if not rows:
        return
    synced = target.synced("texts")
    for start in range(0, len(rows), 1024):
        ids, texts = zip(*rows[start : start + 1024])
        vectors = target.embedder().embed_texts(list(texts))
        synced.update(store.replace_text_vectors(ids, vectors), ids, vectors, remove_ids=ids)
    synced.save()


def _ray():
    from .distributed import ray_embed  # Ray only when asked for

    return ray_embed


def plan_run(
    store: Store, root: Path, excludes: Sequence[str], stale_before: float | None = None, rehash: bool = False
) -> Plan:
    """What to skip, move, copy, re-embed and delete, with content hashes read only where they decide (and for
    every known file with ``rehash``). ``stale_before``: rows whose vectors were written before this time are
    re-embedded (``stale.py``)."""
    prefix = os.path.join(str(root), "")
    stale = store.ids_written_before("images", stale_before) if stale_before is not None else set()
    rehash_with = _hash_or_none if rehash else None
    workers = parallel_plan.workers_for(lambda: store.count_under(prefix))
    plan = (
        parallel_plan.plan(store, root, excludes, stale, rehash_with, imgs.retry_now, workers) if workers > 1 else None
    )
    if plan is None:  # one process: a small folder, or one whose sub-folders share a folder or file
        known, skipped = store.image_states(prefix), store.skipped_states(prefix)
        plan = make_plan(imgs.scan(root, excludes), known, skipped, stale, rehash_with, imgs.retry_now, prefix)
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
    frames = store.frames_of([i for i in sources if i in rows and rows[i].duration is not None]) if sources else {}
    copies = [
        NewImage(
            e.path,
            e.size,
            e.mtime_ns,
            s.content_hash,
            rows[s.id].width,
            rows[s.id].height,
            vectors[s.id],
            rows[s.id].format,
            rows[s.id].taken_at,
            rows[s.id].duration,
            frames.get(s.id),
        )
        for e, s in plan.copies
        if s.id in vectors and (rows[s.id].duration is None or s.id in frames)
    ]
    return Changes(
        new=copies,
        moved=plan.moved + plan.touched,
        deleted=[s.id for s in plan.vanished.values()],
        skipped=plan.problems,
        unskipped=plan.gone_skips,
    )


def report_for(root: Path, plan: Plan) -> IndexReport:
    return IndexReport(
        folder=str(root),
        scanned=plan.unchanged
        + len(plan.touched)
        + len(plan.new)
        + len(plan.changed)
        + len(plan.moved)
        + len(plan.copies)
        + plan.still_skipped
        + len(plan.problems),
        unchanged=plan.unchanged + len(plan.touched),
        moved=len(plan.moved),
        removed=len(plan.vanished),
        reembedded=len(plan.stale_paths),
        added=len(plan.copies),
        reused=len(plan.copies),
        still_skipped=plan.still_skipped,
        skipped=[SkippedFile(p.path, p.reason) for p in plan.problems],
    )


NOT_FINITE = (
    "the model computed NaN or infinite values for it, so it could never be found; the model or its "
    "cached export is damaged: run `imgsearch check`"
)


def batch_changes(batch: EmbeddedBatch, entries: Sequence[FileEntry], plan: Plan) -> Changes:
    """The store batch for one embedded batch of files. A vector that is not finite is never stored: its file is
    skipped with the reason (and retried once it changes, like any skipped file)."""
    changes = Changes()
    finite = np.isfinite(batch.vectors).all(axis=1) if len(batch.positions) else np.zeros(0, bool)
    failures = list(batch.failures) + [(pos, NOT_FINITE) for pos, ok in zip(batch.positions, finite) if not ok]
    for pos, details, vector, ok in zip(batch.positions, batch.details, batch.vectors, finite):
        if not ok:
            continue
        entry = entries[pos]
        row = NewImage(
            entry.path,
            entry.size,
            entry.mtime_ns,
            details.content_hash,
            details.width,
            details.height,
            vector,
            details.format or "",
            details.taken_at,
        )
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
