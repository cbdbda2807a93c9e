"""The Python API: open a collection, index folders, add texts, search, describe.

    import imgsearch
    engine = imgsearch.open("indexes/default")
    engine.index_folder("~/Pictures")
    engine.search("a red car", k=10)          # text -> images
    engine.search("beach.jpg")                # image -> images
    engine.describe("beach.jpg", k=5)         # image -> texts (after engine.add_texts)
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from . import images as imgs
from .config import IndexConfig, IndexingConfig, ModelConfig, collection_path
from .errors import BadInputError, CollectionNotFoundError, EmptyCollectionError, ModelMismatchError
from .planning import Plan, find_moves, find_touched, make_plan
from .results import CollectionInfo, ImageHit, IndexReport, SkippedFile, TextHit
from .store import SCHEMA_VERSION, Changes, NewImage, Skip, Store
from .vectors import SyncedIndex

DB_NAME = "imgsearch.db"
Progress = Callable[[int, int], None]  # (done, total)
Query = str | os.PathLike | Image.Image


def open(  # noqa: A001 - mirrors sqlite3.connect / open: the natural name for users
    path: str | os.PathLike | None = None,
    model: ModelConfig | None = None,
    index_config: IndexConfig = IndexConfig(),
    device: str | None = None,
    embedder=None,
) -> "Collection":
    """Open (lazily) the collection at path, $IMGSEARCH_INDEX, or indexes/default.

    ``model``: the model for a new collection; for an existing one, None means "the one it was
    built with" and anything else must match it. ``device`` overrides where the model runs.
    ``embedder``: an already loaded ``Embedder`` to share between collections (its model must match).
    """
    collection = Collection(collection_path(path), model or (embedder and embedder.config), index_config, device)
    collection._embedder = embedder
    return collection


class Collection:
    def __init__(self, folder: Path, model: ModelConfig | None = None, index_config=IndexConfig(),
                 device: str | None = None):
        self.folder = Path(folder)
        self.index_config = index_config
        self._device = device
        self._requested_model = model
        self._store: Store | None = None
        self._embedder = None
        self._indexes: dict[str, SyncedIndex] = {}

    # -- plumbing -------------------------------------------------------------------------------
    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        # Writers save their index under the writer lock before returning; readers never write files,
        # so a reader racing an indexer cannot put an old index under a current stamp.
        if self._store is not None:
            self._store.close()

    @property
    def exists(self) -> bool:
        return (self.folder / DB_NAME).exists()

    def _store_for(self, write: bool = False) -> Store:
        if self._store is None:
            if not self.exists and not write:
                raise CollectionNotFoundError(
                    f"no collection at {self.folder}; build one with `imgsearch index DIR` "
                    "or point at an existing one with --index PATH (or $IMGSEARCH_INDEX)"
                )
            self.folder.mkdir(parents=True, exist_ok=True)
            self._store = Store(self.folder / DB_NAME)
        return self._store

    @property
    def model(self) -> ModelConfig:
        """The collection's model (on the requested device)."""
        chosen = self._chosen_model()
        return replace(chosen, device=self._device) if self._device else chosen

    def _chosen_model(self) -> ModelConfig:
        """The stored model; a different one asked for explicitly is refused."""
        stored = self._store_for().get("model") if self.exists else None
        asked = self._requested_model
        if stored is None:
            return asked or ModelConfig()
        built = ModelConfig.from_dict(stored)
        if asked is not None and not asked.same_model(built):
            raise ModelMismatchError(
                f"{self.folder} was built with {built.label}, not {asked.label}; "
                f"leave --model/--pretrained out to use {built.name}, or pass --index NEW_PATH "
                "to start a separate collection for the other model"
            )
        return built if asked is None else ModelConfig(built.name, built.pretrained, asked.device, asked.precision)

    @property
    def embedder(self):
        if self._embedder is None:
            from .embedder import Embedder  # torch loads only when a model is needed

            self._embedder = Embedder(self.model)
        return self._embedder

    def _dim(self) -> int:
        stored = self._store_for().get("dim")
        if stored is None:
            from .embedder import model_dim

            stored = model_dim(self.model)
        return stored

    def _ensure_manifest(self) -> None:
        store, model = self._store_for(write=True), self.model
        if store.get("model") is None:
            store.put("model", {"name": model.name, "pretrained": model.pretrained})
            store.put("dim", self._dim())

    def _synced(self, table: str) -> SyncedIndex:
        if table not in self._indexes:
            store = self._store_for()
            self._indexes[table] = SyncedIndex(store, table, self.folder, self._dim(), self.index_config)
        return self._indexes[table]

    @contextlib.contextmanager
    def _writing(self):
        """One writer at a time per collection (readers are never blocked)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(self.folder / ".lock"):
            yield self._store_for(write=True)

    # -- indexing -------------------------------------------------------------------------------
    def index_folder(
        self, folder: str | os.PathLike, settings: IndexingConfig = IndexingConfig(),
        progress: Progress | None = None,
    ) -> IndexReport:
        """Embed new and changed images under folder, drop vanished ones, follow moved ones."""
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise BadInputError(f"not a folder: {folder}; pass the directory that holds your images")
        started = time.monotonic()
        with self._writing() as store:
            self._ensure_manifest()
            prefix = os.path.join(str(root), "")
            plan = make_plan(imgs.scan(root), store.image_states(prefix), store.skipped_states(prefix))
            find_moves(plan, _hash_or_none)
            find_touched(plan, _hash_or_none)
            report = _report_for(root, plan)
            synced = self._synced("images")
            self._apply_bookkeeping(store, synced, plan)
            try:
                self._embed_plan(store, synced, plan, settings, report, progress)
            except KeyboardInterrupt:
                report.interrupted = True
                raise
            finally:
                synced.save()
                report.seconds = time.monotonic() - started
        return report

    def _apply_bookkeeping(self, store: Store, synced: SyncedIndex, plan: Plan) -> None:
        removed = [s.id for s in plan.vanished.values()]
        changes = Changes(moved=plan.moved + plan.touched, deleted=removed, skipped=plan.problems, unskipped=plan.gone_skips)
        _, generation = store.apply(changes)
        synced.update(generation, remove_ids=removed)

    def _embed_plan(self, store, synced, plan: Plan, settings, report: IndexReport, progress) -> None:
        entries = plan.to_embed
        done = 0
        if entries:
            self.embedder.load()  # a download or model error surfaces before any progress is shown
        if progress:
            progress(0, len(entries))
        for batch in self.embedder.embed_files([e.path for e in entries], settings) if entries else ():
            changes = _batch_changes(batch, entries, plan)
            new_ids, generation = store.apply(changes)
            replaced = list(changes.replaced)
            vectors = [c.vector for c in changes.new] + [c.vector for c in changes.replaced.values()]
            synced.update(generation, new_ids + replaced, np.array(vectors, np.float32).reshape(-1, synced.dim),
                          remove_ids=replaced + changes.deleted)
            synced.save(at_most_every=settings.checkpoint_seconds)
            _tally(report, changes)
            done += len(batch.positions) + len(batch.failures)
            if progress:
                progress(done, len(entries))

    # -- texts ----------------------------------------------------------------------------------
    def add_texts(self, texts: Iterable[str], source: str | None = None, progress: Progress | None = None,
                  batch_size: int = 1024) -> int:
        """Embed and store texts (blank ones dropped) for image -> text search; returns how many."""
        texts = [t.strip() for t in texts if t and t.strip()]
        with self._writing() as store:
            self._ensure_manifest()
            synced = self._synced("texts")
            try:
                for start in range(0, len(texts), batch_size):
                    chunk = texts[start : start + batch_size]
                    vectors = self.embedder.embed_texts(chunk)
                    ids, generation = store.add_texts(chunk, vectors, source)
                    synced.update(generation, ids, vectors)
                    if progress:
                        progress(start + len(chunk), len(texts))
            finally:
                synced.save()
        return len(texts)

    def add_text_file(self, path: str | os.PathLike, progress: Progress | None = None) -> int:
        """One text per non-blank line of a UTF-8 file."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(f"cannot read text file {path}: {exc}; give a UTF-8 file, one text per line") from exc
        return self.add_texts(lines, source=path.name, progress=progress)

    def clear_texts(self, source: str | None = None) -> int:
        with self._writing() as store:
            removed = store.clear_texts(source)
            synced = self._synced("texts")
            synced.rebuild()
            synced.save()
        return removed

    # -- search ---------------------------------------------------------------------------------
    def search(self, query: Query, k: int = 10) -> list[ImageHit]:
        """Images best matching a text, an image file path, or a PIL image."""
        self._searchable("images", k)
        return self.search_vector(self.query_vector(query), k)

    def search_vector(self, vector: np.ndarray, k: int = 10) -> list[ImageHit]:
        hits = self._search("images", vector, k)
        rows = self._store_for().images_by_id([i for i, _ in hits])
        return [ImageHit(i, rows[i].path, s, rows[i].width, rows[i].height) for i, s in hits if i in rows]

    def describe(self, image: str | os.PathLike | Image.Image, k: int = 5) -> list[TextHit]:
        """Texts of the collection's text set best matching an image (image -> text)."""
        self._searchable("texts", k)
        hits = self._search("texts", self._image_vector(image), k)
        rows = self._store_for().texts_by_id([i for i, _ in hits])
        return [TextHit(i, rows[i].text, s, rows[i].source) for i, s in hits if i in rows]

    def _searchable(self, table: str, k: int) -> None:
        """Fail before any model loads when the search cannot succeed."""
        if k < 1:
            raise BadInputError(f"k must be at least 1, got {k}")
        if self._synced(table).index.ntotal == 0:
            hint = "imgsearch index DIR" if table == "images" else "imgsearch texts add FILE"
            raise EmptyCollectionError(f"no {table} in {self.folder} yet; add some with `{hint}`")

    def _search(self, table: str, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        self._searchable(table, k)
        found = self._synced(table).index.search(vector, k)
        return [(int(i), float(s)) for i, s in zip(found.ids[0], found.scores[0]) if i >= 0]

    def query_vector(self, query: Query) -> np.ndarray:
        """Text stays text; a PIL image, a Path, or a string naming an existing image file is an image."""
        if isinstance(query, (Image.Image, os.PathLike)) or _names_image_file(query):
            return self._image_vector(query)
        if not query.strip():
            raise BadInputError("empty query; give some text, or --image PATH")
        return self.embedder.embed_texts([query])[0]

    def _image_vector(self, image: str | os.PathLike | Image.Image) -> np.ndarray:
        if isinstance(image, Image.Image):
            return self.embedder.embed_images([image])[0]
        path = Path(image).expanduser()
        if not path.is_file():
            raise BadInputError(f"query image not found: {image}")
        try:
            loaded = imgs.load_image(str(path), min_side=self.embedder.image_size)  # as when indexed
        except imgs.ImageSkipped as exc:
            raise BadInputError(f"cannot use {image} as a query image: {exc}") from None
        return self.embedder.embed_images([loaded.image])[0]

    # -- inspection -----------------------------------------------------------------------------
    def info(self) -> CollectionInfo:
        store, model = self._store_for(), self.model
        index = self._synced("images").index
        disk = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        return CollectionInfo(
            path=str(self.folder), model=model.name, pretrained=model.pretrained, dim=self._dim(),
            images=store.count("images"), texts=store.count("texts"), skipped=store.count("skipped"),
            image_index=index.kind, image_index_lists=index.nlist,
            nprobe=self.index_config.nprobe if index.kind == "ivf" else None,
            disk_bytes=disk, schema_version=store.get("schema_version", SCHEMA_VERSION),
        )

    def skipped(self) -> list[SkippedFile]:
        return [SkippedFile(s.path, s.reason) for s in self._store_for().skipped()]


def _names_image_file(query) -> bool:
    # lexists: a broken link named like an image is an image query that fails loudly, not a text query
    return isinstance(query, str) and imgs.is_image_name(query) and os.path.lexists(os.path.expanduser(query))


def _hash_or_none(path: str) -> str | None:
    try:
        return imgs.file_hash(path)
    except OSError:
        return None


def _report_for(root: Path, plan: Plan) -> IndexReport:
    return IndexReport(
        folder=str(root),
        scanned=plan.unchanged + len(plan.touched) + len(plan.new) + len(plan.changed) + len(plan.moved)
        + plan.still_skipped + len(plan.problems),
        unchanged=plan.unchanged + len(plan.touched), moved=len(plan.moved), removed=len(plan.vanished),
        still_skipped=plan.still_skipped,
        skipped=[SkippedFile(p.path, p.reason) for p in plan.problems],
    )


def _batch_changes(batch, entries: Sequence[imgs.FileEntry], plan: Plan) -> Changes:
    changes = Changes()
    for pos, details, vector in zip(batch.positions, batch.details, batch.vectors):
        entry = entries[pos]
        row = NewImage(entry.path, entry.size, entry.mtime_ns, details.content_hash,
                       details.width, details.height, vector)
        if entry.path in plan.changed:
            changes.replaced[plan.changed[entry.path][0].id] = row
        else:
            changes.new.append(row)
    for pos, reason in batch.failures:
        entry = entries[pos]
        changes.skipped.append(Skip(entry.path, entry.size, entry.mtime_ns, reason))
        if entry.path in plan.changed:  # was fine, now unreadable: its old vector no longer describes it
            changes.deleted.append(plan.changed[entry.path][0].id)
    return changes


def _tally(report: IndexReport, changes: Changes) -> None:
    report.added += len(changes.new)
    report.updated += len(changes.replaced)
    report.removed += len(changes.deleted)
    report.skipped.extend(SkippedFile(s.path, s.reason) for s in changes.skipped)


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    from .errors import CollectionError

    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; single-writer is then the user's job
        yield
        return
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CollectionError(
                f"another imgsearch process is writing to {path.parent}; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
