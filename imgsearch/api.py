"""The Python API: open a collection, index folders, add texts, search, describe.

    import imgsearch
    engine = imgsearch.open()                 # the default collection (see imgsearch.config.data_dir)
    engine.index_folder("~/Pictures")
    engine.search("a red car", k=10)          # text -> images
    engine.search("beach.jpg")                # image -> images
    engine.describe("beach.jpg", k=5)         # image -> texts (after engine.add_texts)
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from . import checkpoints, encoders, indexing, stale
from . import images as imgs
from .config import (
    DEFAULT_EXCLUDES, DUPLICATE_THRESHOLD, IndexConfig, IndexingConfig, ModelConfig, collection_path,
)
from .errors import (
    BadInputError, CollectionDamagedError, CollectionError, CollectionNotFoundError, ExportDamagedError, EmptyCollectionError, ModelLoadError, ModelMismatchError, NotFoundError,
)
from .locking import LOCK_NAME, writer_lock
from .planning import Plan
from .index import IdFilter, similar_pairs
from .results import CollectionInfo, DuplicateGroup, ImageHit, IndexReport, SkippedFile, TextHit
from .search.duplicates import Row as DuplicateRow
from .search.duplicates import group_duplicates
from .search.filters import Filters, ImageColumns
from .search.query import Query, Term, combine
from .store import SCHEMA_VERSION, Changes, Store
from .vectors import SyncedIndex, remove_leftovers

DB_NAME = "imgsearch.db"
Progress = Callable[..., None]  # (done, total[, stage])
ImageQuery = str | os.PathLike | Image.Image  # a file path, an http(s) URL, or a PIL image


def open(  # noqa: A001 - mirrors sqlite3.connect / open: the natural name for users
    path: str | os.PathLike | None = None,
    model: ModelConfig | None = None,
    index_config: IndexConfig = IndexConfig(),
    device: str | None = None,
    embedder=None,
    backend: str | None = None,
    wait: float = 0.0,
    on_wait: Callable[[], None] | None = None,
    live: bool = False,
) -> "Collection":
    """Open (lazily) the collection at path, else $IMGSEARCH_INDEX, else the per-user default
    (``~/.local/share/imgsearch/default`` on Linux; see ``config.data_dir``).

    ``model``: the model for a new collection; for an existing one, None means "the one it was
    built with" and anything else must match it. ``device`` overrides where the model runs.
    ``embedder``: an already loaded ``Embedder`` to share between collections (its model must match).
    ``backend``: "auto", "torch" or "onnx" (see ``ModelConfig.backend``).
    ``wait``: seconds a write (index, texts, prune) waits for another process's write to end (``math.inf``: as
    long as it takes; 0: fail at once); ``on_wait`` is called once when a write starts waiting.
    ``live``: a long-lived reader (a server) that calls ``refresh`` to take in other processes' writes.
    """
    collection = Collection(collection_path(path), model or (embedder and embedder.config), index_config, device,
                            backend, wait, on_wait, live)
    collection._embedder = embedder
    return collection


class Collection:
    def __init__(self, folder: Path, model: ModelConfig | None = None, index_config=IndexConfig(),
                 device: str | None = None, backend: str | None = None, wait: float = 0.0,
                 on_wait: Callable[[], None] | None = None, live: bool = False):
        self.folder = Path(folder)
        self.live = live
        self._index_lock = threading.Lock()  # searches and a live refresh's changes to the index, one at a time
        self.index_config = index_config
        self._device, self._backend = device, backend
        self._requested_model = model
        self._store: Store | None = None
        self._embedder = None
        self._light = None  # (the torch-free query encoder or None, its encoders.Plan), decided once
        self.wait, self.on_wait = wait, on_wait  # how long a write waits for another writer (see open)
        self._indexes: dict[str, SyncedIndex] = {}
        self._columns: tuple | None = None  # (store version, ImageColumns) for filters
        self._selection: tuple | None = None  # (store version, Filters, IdFilter): the last filter's ids
        self._known_dim: int | None = None
        self._damage: list[str] = []  # damaged cached exports met (and removed) by this handle

    # -- plumbing -------------------------------------------------------------------------------
    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        # Writers save their index under the writer lock before returning. A reader that had to rebuild or catch
        # up saves only under that lock and only while the store is at its generation (SyncedIndex.save_if_free),
        # so a reader racing an indexer cannot put an old index under a current stamp.
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def exists(self) -> bool:
        return (self.folder / DB_NAME).exists()

    def _missing(self) -> CollectionNotFoundError:
        return CollectionNotFoundError(
            f"no collection at {self.folder}",
            cli_hint="build one with `imgsearch index DIR`, or point at an existing one with --index PATH "
                     "(or $IMGSEARCH_INDEX)",
            api_hint="build one with Collection.index_folder(DIR), or open the folder of an existing one",
        )

    def require_existing(self) -> None:
        """Raise CollectionNotFoundError (saying how to build one) unless the collection exists."""
        if not self.exists:
            raise self._missing()

    def _store_for(self) -> Store:
        """The store for reading: opened read-only (no schema work, no writes) unless a writer has it."""
        if self._store is None:
            if not self.exists:
                raise self._missing()
            store = Store(self.folder / DB_NAME, read_only=True)
            if store.outdated:  # an older collection: upgrade it once, under the writer lock
                store.close()
                with self._writing():
                    return self._store
            self._store = store
        return self._store

    @contextlib.contextmanager
    def _writing(self, create: bool = False):
        """One writer at a time per collection (readers are never blocked)."""
        if not create and not self.exists:
            raise self._missing()
        self.folder.mkdir(parents=True, exist_ok=True)
        with writer_lock(self.folder / LOCK_NAME, self.wait, self.on_wait):
            if self._store is None or self._store.read_only:
                self.close()
                self._store = Store(self.folder / DB_NAME)
                for synced in self._indexes.values():
                    synced.store = self._store
            remove_leftovers(self.folder)  # only a writer saves, so any temporary file is a dead save's
            yield self._store

    # -- the model ------------------------------------------------------------------------------
    @property
    def model(self) -> ModelConfig:
        """The collection's model (on the requested device)."""
        chosen = self._chosen_model()
        chosen = replace(chosen, device=self._device) if self._device else chosen
        return replace(chosen, backend=self._backend) if self._backend else chosen

    def _stored_model(self) -> dict | None:
        """The manifest's model, once the collection holds vectors made by it."""
        if not self.exists:
            return None
        store = self._store_for()
        stored = store.get("model")
        return stored if stored and (store.has_rows("images") or store.has_rows("texts")) else None

    def _chosen_model(self) -> ModelConfig:
        """The stored model; a different one asked for explicitly is refused."""
        stored, asked = self._stored_model(), self._requested_model
        if asked is not None and not asked.name:
            asked = replace(asked, name=stored["name"] if stored else ModelConfig.name)
        if stored is None:
            return asked or ModelConfig()
        built = ModelConfig.from_dict(stored)
        if stored.get("checkpoint"):
            built = self._find_checkpoint(built, stored["checkpoint"], asked)
        if asked is not None and asked.pretrained_as is None:
            asked = replace(asked, pretrained_as=built.pretrained_as)  # not asked for: the collection's own
        elif asked is not None and built.pretrained_as is None and checkpoints.is_path(built.pretrained):
            built = replace(built, pretrained_as=asked.pretrained_as)  # a checkpoint tied to its tag the first time
        if asked is not None and not asked.same_model(built):
            raise ModelMismatchError(
                f"{self.folder} was built with {built.label}, not {asked.label} (vectors of two models "
                "cannot be compared)",
                cli_hint=f"leave --model/--pretrained out to use {built.name}, or pass --index NEW_PATH to start a "
                         "separate collection for the other model",
                api_hint="open it with model=None to use its own model, or open another folder for the other model",
            )
        return built if asked is None else replace(built, device=asked.device, precision=asked.precision,
                                                          backend=asked.backend)

    def _find_checkpoint(self, built: ModelConfig, fingerprint: dict, asked: ModelConfig | None) -> ModelConfig:
        """A checkpoint file is known by its content: a moved file is accepted at its new path."""
        offered = asked.pretrained if asked is not None and checkpoints.is_path(asked.pretrained) else None
        for path in filter(None, (offered, built.pretrained)):
            if checkpoints.matches(path, fingerprint):
                return replace(built, pretrained=path)
        if offered:
            raise ModelMismatchError(
                f"{offered} is not the checkpoint {self.folder} was built with ({built.pretrained}): "
                "their contents differ, and vectors of two models cannot be compared",
                cli_hint="pass the same checkpoint file (it may have moved), or --index NEW_PATH for another model",
                api_hint="open it with the same checkpoint file (it may have moved), or open another folder",
            )
        raise ModelLoadError(
            f"{self.folder} was built with the checkpoint file {built.pretrained}, which is no longer there",
            cli_hint="pass its new location with --pretrained PATH",
            api_hint="pass model=ModelConfig(name, pretrained=NEW_PATH) to imgsearch.open",
        )

    def _manifest(self, dim: int, recipe: dict) -> dict:
        """What the first stored vectors are written with: the model, their size, how they are made."""
        return {"model": self._model_entry(), "dim": dim, stale.EMBEDDING_KEY: stale.entry(recipe)}

    def _model_entry(self) -> dict:
        model = self.model
        entry = {"name": model.name, "pretrained": model.pretrained, "pretrained_as": model.pretrained_as}
        if checkpoints.is_path(model.pretrained):
            entry["checkpoint"] = checkpoints.fingerprint(model.pretrained)
        return entry

    def _note_model_changes(self, store: Store) -> None:
        """A checkpoint found at a new path, or tied to its tag for the first time, is remembered."""
        stored, model = self._stored_model(), self.model
        if stored and (stored.get("checkpoint") and model.pretrained != stored["pretrained"]
                       or model.pretrained_as != stored.get("pretrained_as")):
            store.put("model", self._model_entry())

    def _stale_before(self, store: Store) -> float | None:
        """Under the writer lock: find stored vectors that an earlier imgsearch, or another recipe, made (see
        ``stale.py``), mark them, and return the time before which rows are re-embedded (None: all are current)."""
        if self._stored_model() is None:
            return None
        recorded, current = store.get(stale.EMBEDDING_KEY), self._current_recipe()
        if recorded is None or not stale.runs_like(recorded["recipe"], current):
            if recorded is None:
                from .clip.models import legacy_recipe, training_sensitive

                made_with, sensitive = legacy_recipe(self.model).to_dict(), training_sensitive(self.embedder.model)
            else:
                made_with, sensitive = recorded["recipe"], []
            why = stale.reasons(self.model.label, recorded, made_with, current, sensitive)
            if why:
                earlier = store.get(stale.STALE_KEY) or {}
                store.put(stale.STALE_KEY, stale.mark(earlier.get("why", []) + why))
            store.put(stale.EMBEDDING_KEY, stale.entry(current))
        marker = store.get(stale.STALE_KEY)
        return marker["before"] if marker else None

    def _current_recipe(self) -> dict:
        """How this model's vectors are made today: from its export when cached (no torch), else decided by
        open_clip's tables (``clip.models.recipe_for``; a checkpoint that cannot be tied to a tag is refused)."""
        from .inference import backends

        export = backends.find_export(self.model) if backends.onnxruntime_installed() else None
        if export is not None and "recipe" in export.meta:
            return export.meta["recipe"]
        if self._embedder is not None:
            return self._embedder.recipe_record
        from .clip.models import recipe_for

        return recipe_for(self.model).to_dict()

    def _clear_stale(self, store: Store) -> None:
        """Drop the stale marker once no row written before it remains."""
        marker = store.get(stale.STALE_KEY)
        if marker and not any(store.count_written_before(t, marker["before"]) for t in ("images", "texts")):
            store.delete(stale.STALE_KEY)

    def warnings(self) -> list[str]:
        """What makes this collection's answers less than right, for a reader to show: vectors made wrongly by an
        earlier imgsearch (``stale.py``), until an index run re-embeds them."""
        if not self.exists or self._stored_model() is None:
            return list(self._damage)
        store = self._store_for()
        marker = store.get(stale.STALE_KEY)
        if marker:
            counts = [store.count_written_before(t, marker["before"]) for t in ("images", "texts")]
            found = [stale.warning(marker, *counts)] if any(counts) else []
        else:
            found = [stale.LEGACY_WARNING] if store.get(stale.EMBEDDING_KEY) is None else []
        return found + self._damage

    @property
    def query_encoder(self):
        """What encodes a query: the model's cached ONNX towers (no torch import) when they can
        (``encoders.for_query``), else ``embedder``; a model already loaded (a shared embedder, a long-lived
        process) is used as it is."""
        if self._embedder is not None:
            return self._embedder
        return self._query_choice()[0] or self.embedder

    def _query_choice(self) -> tuple:
        if self._light is None:
            self._light = encoders.query_encoder(self.model)
        return self._light

    @property
    def embedder(self):
        if self._embedder is None:
            from .clip.embedder import Embedder  # torch loads only when a model is needed

            self._embedder = Embedder(self.model)
        return self._embedder

    def _dim(self) -> int | None:
        """The vectors' dimension, from the store (never by loading the model); None while empty."""
        if self._known_dim is None:  # fixed once known: a collection never changes model
            store = self._store_for()
            self._known_dim = store.get("dim") or store.first_vector_size("images") or store.first_vector_size("texts")
        return self._known_dim

    def _synced(self, table: str) -> SyncedIndex:
        if table not in self._indexes:
            self._indexes[table] = SyncedIndex(self._store_for(), table, self.folder, self._dim(), self.index_config,
                                               live=self.live)
        return self._indexes[table]

    def refresh(self) -> bool:
        """Take in what other processes (a concurrent ``index`` run) committed since the indexes were loaded,
        without reloading them; for collections opened with ``live=True``. Searches running meanwhile see
        the old or the new state, never a mix. Returns whether anything changed."""
        if not self.live:
            raise RuntimeError("refresh needs a collection opened with live=True")
        if not self.exists:
            return False
        if self._known_dim is None and self._dim():  # the first images arrived since
            return True
        return any([synced.catch_up(self._index_lock) for synced in list(self._indexes.values())])

    # -- indexing -------------------------------------------------------------------------------
    def index_folder(
        self, folder: str | os.PathLike, settings: IndexingConfig = IndexingConfig(),
        progress: Progress | None = None, excludes: Iterable[str] = DEFAULT_EXCLUDES, rehash: bool = False,
    ) -> IndexReport:
        """Embed new and changed images under folder, drop vanished ones, follow moved ones.

        ``excludes``: glob patterns (names or paths relative to folder) left out of the collection. ``rehash``:
        read every file's content even when its size and modification time are as stored.
        """
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise BadInputError(f"not a folder: {folder}; pass the directory that holds your images")
        root, started = root.resolve(), time.monotonic()
        with self._writing(create=True) as store:
            self._note_model_changes(store)  # also refuses a model other than the collection's, up front
            stale_before = self._stale_before(store)
            plan = indexing.plan_run(store, root, tuple(excludes), stale_before, rehash)
            report = indexing.report_for(root, plan)
            report.reembedded_why = "; ".join((store.get(stale.STALE_KEY) or {}).get("why", [])) or None
            report.backfilled = indexing.backfill_details(store, root, progress)  # rows from before schema v3
            synced = self._synced("images") if self._dim() else None
            booked = indexing.bookkeeping(store, plan)
            if synced is not None and (booked.touches_images or plan.to_embed or not synced.saved_is_current()):
                # Load the saved index while it is current, then apply deltas; a missing or stale file (a crashed
                # run) is rebuilt and saved here. A run that changes nothing never reads the file.
                synced.index  # noqa: B018
            try:
                self._mirror(synced, *self._apply(store, booked))
                synced = self._embed_plan(store, synced, plan, settings, report, progress)
                if stale_before is not None:
                    self._reembed_texts(store, stale_before)
                    self._clear_stale(store)
            finally:
                synced = self._indexes.get("images")  # a first run creates it with its first batch
                if synced is not None:
                    synced.save()
                report.seconds = time.monotonic() - started
        return report

    def _reembed_texts(self, store: Store, before: float) -> None:
        """Texts whose vectors are stale, embedded again in place (same ids)."""
        rows = store.texts_written_before(before)
        if not rows:
            return
        synced = self._synced("texts")
        for start in range(0, len(rows), 1024):
            ids, texts = zip(*rows[start : start + 1024])
            vectors = self.embedder.embed_texts(list(texts))
            synced.update(store.replace_text_vectors(ids, vectors), ids, vectors, remove_ids=ids)
        synced.save()

    @staticmethod
    def _apply(store: Store, changes: Changes) -> tuple[Changes, list[int], int]:
        new_ids, generation = store.apply(changes)
        return changes, new_ids, generation

    @staticmethod
    def _mirror(synced: SyncedIndex | None, changes: Changes, new_ids: list[int], generation: int) -> None:
        """Bring the in-memory index in step with a batch the store has committed."""
        if synced is None or not changes.touches_images:  # the generation did not move: nothing to mirror
            return
        replaced = list(changes.replaced)
        vectors = [c.vector for c in changes.new] + [c.vector for c in changes.replaced.values()]
        synced.update(generation, new_ids + replaced, np.array(vectors, np.float32).reshape(-1, synced.dim),
                      remove_ids=replaced + changes.deleted)

    def _embed_plan(self, store, synced, plan: Plan, settings, report: IndexReport, progress):
        entries = plan.to_embed
        if not entries:
            return synced
        if progress:
            progress(0, len(entries), "loading model")
        batches, recipe = self._embedded(entries, settings, report)
        stamp = self._stored_model() is None  # stamped with the first batch: a failed start leaves no trace
        done, noted = 0, False
        for batch in batches:
            changes = indexing.batch_changes(batch, entries, plan)
            if stamp and changes.new:
                changes.manifest, stamp = self._manifest(batch.vectors.shape[1], recipe), False
            if not noted and (changes.new or changes.replaced):
                changes.manifest, noted = {**changes.manifest, "backend": report.backend}, True
            applied = self._apply(store, changes)
            synced = synced or self._synced("images")
            self._mirror(synced, *applied)
            if synced is not None:
                synced.save(at_most_every=settings.checkpoint_seconds)
            indexing.tally(report, changes, plan)
            done += len(batch.positions) + len(batch.failures)
            if progress:
                progress(done, len(entries), "embedding")
        if settings.ray:  # every shard row is committed: the shards have done their job
            self._ray().clear(self.folder / self._ray().SHARDS)
        return synced

    def _embedded(self, entries, settings: IndexingConfig, report: IndexReport):
        """(the batches of embedded files, the recipe they are made with): from this process's model, or from a Ray
        cluster's shards."""
        if settings.ray:
            from .clip.models import model_image_size, recipe_for

            report.backend = "ray"
            return self._ray().embedded(entries, self.model, settings, self.folder / self._ray().SHARDS,
                                        model_image_size(self.model)), recipe_for(self.model).to_dict()
        try:
            encoder = self._image_file_encoder(settings).load()  # a model or download error surfaces before progress
        except ExportDamagedError as exc:  # found (and removed) as its session was made: torch makes it again
            report.notes.append(str(exc))
            encoder = self.embedder.load()
        report.backend, report.notes = encoder.backend, report.notes + list(encoder.notes)
        return encoder.embed_files([e.path for e in entries], settings), encoder.recipe_record

    def _image_file_encoder(self, settings: IndexingConfig):
        """What embeds image files: the model's cached export without torch (``encoders.file_encoder``), else
        ``embedder`` (torch; it makes the export on a model's first run)."""
        if self._embedder is not None:
            return self._embedder
        encoder, plan = encoders.file_encoder(self.model, settings.decode)
        if encoder is None:
            return self.embedder
        encoder.notes += [plan.reason] if plan.reason else []
        return encoder

    @staticmethod
    def _ray():
        from .distributed import ray_embed  # Ray only when asked for

        return ray_embed

    def prune(self, dry_run: bool = False) -> list[str]:
        """Drop rows (and skip records) whose files are gone, anywhere in the collection; returns their paths.

        Unlike `index_folder`, which only forgets files under the folder it indexes, this checks every row.
        """
        with self._writing() as store:
            gone = [(i, p) for i, p in store.all_paths() if not os.path.exists(p)]
            stale_skips = [s.path for s in store.skipped() if not os.path.lexists(s.path)]
            if not dry_run and (gone or stale_skips):
                synced = self._synced("images") if self._dim() else None
                if synced is not None:
                    synced.index  # noqa: B018 - load it first, so only the delta is applied
                self._mirror(synced, *self._apply(store, Changes(deleted=[i for i, _ in gone], unskipped=stale_skips)))
                if synced is not None:
                    synced.save()
        return [p for _, p in gone]

    # -- texts ----------------------------------------------------------------------------------
    def add_texts(self, texts: Iterable[str], source: str | None = None, progress: Progress | None = None,
                  batch_size: int = 1024) -> int:
        """Embed and store texts (blank ones dropped) for image -> text search; returns how many."""
        texts = [t.strip() for t in texts if t and t.strip()]
        with self._writing(create=True) as store:
            synced = None
            try:
                for start in range(0, len(texts), batch_size):
                    chunk = texts[start : start + batch_size]
                    vectors = self.embedder.embed_texts(chunk)
                    if not np.isfinite(vectors).all():
                        bad = chunk[int(np.argmin(np.isfinite(vectors).all(axis=1)))]
                        raise CollectionError(f"the model computed NaN or infinite values for the text {bad!r}; the "
                                              "model or its cached export is damaged: run `imgsearch check`")
                    manifest = (self._manifest(vectors.shape[1], self.embedder.recipe_record)
                                if self._stored_model() is None else {})
                    ids, generation = store.add_texts(chunk, vectors, source, manifest)
                    synced = synced or self._synced("texts")
                    synced.update(generation, ids, vectors)
                    if progress:
                        progress(start + len(chunk), len(texts))
            finally:
                if synced is not None:
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
            if self._dim():
                synced = self._synced("texts")
                synced.rebuild()
                synced.save()
        return removed

    # -- search ---------------------------------------------------------------------------------
    def search(self, query: str | ImageQuery | Query, k: int = 10, filters: Filters | None = None,
               offset: int = 0) -> list[ImageHit]:
        """Images best matching a query: a ``Query``, its written form (``"beach + sunset - people"``,
        ``"2*red car + img:night.jpg"``; see ``imgsearch.search.query``), or an image (a path, an http(s) URL,
        a ``Path``, a PIL image). ``filters`` narrow the result (and override the query's own);
        ``offset`` skips that many of the best (paging).

        A string that is one image file name ("beach.jpg", "photos/a b.png", a URL) is an image query, and a
        missing file is an error, never a text search. ``search_text`` and ``search_image`` say which outright.
        """
        query = self._as_query(query, filters)
        self.require_searchable("images", k)
        if offset < 0:
            raise BadInputError(f"offset must be 0 or more, got {offset}")
        return self._image_hits(self.query_vector(query), k, query.filters, offset)

    def search_text(self, text: str, k: int = 10, filters: Filters | None = None) -> list[ImageHit]:
        """Images best matching a text, taken as text whatever it looks like (no operators, no prefixes)."""
        return self.search(Query((Term.text(text),), filters or Filters()), k)

    def search_image(self, image: ImageQuery, k: int = 10, filters: Filters | None = None) -> list[ImageHit]:
        """Images most like an image: a file path, an http(s) URL, or a PIL image."""
        return self.search(Query((Term.image(image),), filters or Filters()), k)

    def search_vector(self, vector: np.ndarray, k: int = 10, filters: Filters | None = None,
                      offset: int = 0) -> list[ImageHit]:
        self.require_searchable("images", k)
        return self._image_hits(vector, k, filters or Filters(), offset)

    def _image_hits(self, vector: np.ndarray, k: int, filters: Filters, offset: int) -> list[ImageHit]:
        hits = self._search("images", vector, k + offset, self._allowed(filters) if filters else None)[offset:]
        rows = self._store_for().images_by_id([i for i, _ in hits])
        self._check_resolved("images", hits, rows)
        return [_image_hit(rows[i], s) for i, s in hits if i in rows]

    def _check_resolved(self, table: str, hits: list, rows: dict) -> None:
        """Every hit must have its row, unless a writer deleted it since the index was brought up to date (a live
        reader lags by up to one refresh). A hit without a row otherwise means a damaged database: 0.1 returned
        5 of 10 results then, without a word."""
        missing = [i for i, _ in hits if i not in rows]
        if missing and self._store_for().generation(table) == self._synced(table).generation:
            raise CollectionDamagedError(
                f"{len(missing)} of the {len(hits)} best matches (ids {', '.join(map(str, missing[:5]))}) have no row "
                f"in {self.folder / DB_NAME}: the database is damaged",
                cli_hint="`imgsearch check` says what can be repaired; `imgsearch check --repair` rebuilds what can be "
                         "rebuilt, and `imgsearch index` on the collection's folders re-embeds what was lost",
                api_hint="Collection.check(repair=True) rebuilds what can be rebuilt; index_folder re-embeds the rest")

    def browse(self, filters: Filters | None = None, offset: int = 0, limit: int = 50) -> list[ImageHit]:
        """Images passing the filters (all without), most recently taken first; ``score`` is None."""
        if offset < 0 or limit < 1:
            raise BadInputError(f"offset must be 0 or more and limit at least 1, got {offset} and {limit}")
        if not self._dim():
            return []
        columns = self._image_columns(self._store_for().filter_version())
        ids = [int(i) for i in columns.newest_first(filters or Filters())[offset : offset + limit]]
        rows = self._store_for().images_by_id(ids)
        return [_image_hit(rows[i], None) for i in ids if i in rows]

    def image(self, image_id: int) -> ImageHit | None:
        """An indexed image's details (``score`` None), or None when no image has that id."""
        row = self.row(image_id)
        return None if row is None else _image_hit(row, None)

    @property
    def is_empty(self) -> bool:
        """No image indexed yet (cheap: one row is looked for)."""
        return not self._store_for().has_rows("images")

    def row(self, image_id: int):
        """The stored record of an indexed image (``store.ImageRow``: path, size, mtime_ns, content_hash...),
        or None when no image has that id."""
        return self._store_for().images_by_id([image_id]).get(image_id)

    def _image_columns(self, version: tuple) -> ImageColumns:
        """The filter columns, read again only when the store's filter version is no longer ``version``."""
        if self._columns is None or self._columns[0] != version:
            version, rows = self._store_for().filter_rows()
            self._columns = (version, ImageColumns.from_rows(rows))
        return self._columns[1]

    def _allowed(self, filters: Filters) -> IdFilter:
        """Ids passing the filters, from columns cached until the collection changes; the last selection is kept,
        so paging or a new query under the same filters does not select again."""
        version = self._store_for().filter_version()
        if self._selection is not None and self._selection[:2] == (version, filters):
            return self._selection[2]
        chosen = IdFilter(self._image_columns(version).select(filters))
        self._selection = (self._columns[0], filters, chosen)
        return chosen

    def describe(self, image: ImageQuery | Query, k: int = 5) -> list[TextHit]:
        """Texts of the collection's text set best matching an image (image -> text): a path, a URL, a PIL
        image, or a ``Query`` (e.g. ``Query.of(Term.indexed(42))`` for an indexed image, without decoding it)."""
        self.require_searchable("texts", k)
        vector = self.query_vector(image) if isinstance(image, Query) else self._image_vector(image)
        hits = self._search("texts", vector, k)
        rows = self._store_for().texts_by_id([i for i, _ in hits])
        self._check_resolved("texts", hits, rows)
        return [TextHit(i, rows[i].text, s, rows[i].source) for i, s in hits if i in rows]

    def require_searchable(self, table: str = "images", k: int = 1) -> None:
        """Fail before any model loads when a search of ``table`` ("images" or "texts") for k results cannot
        succeed: CollectionNotFoundError, EmptyCollectionError (saying how to add some), or BadInputError."""
        if k < 1:
            raise BadInputError(f"k must be at least 1, got {k}")
        if not self._dim() or self._synced(table).index.ntotal == 0:
            hint = "imgsearch index DIR" if table == "images" else "imgsearch texts add FILE"
            raise EmptyCollectionError(f"no {table} in {self.folder} yet; add some with `{hint}`")

    def _search(self, table: str, vector: np.ndarray, k: int, allowed=None) -> list[tuple[int, float]]:
        """(id, score) best first; the caller has checked ``require_searchable``."""
        with self._index_lock:
            found = self._synced(table).index.search(vector, k, allowed)
        return [(int(i), float(s)) for i, s in zip(found.ids[0], found.scores[0]) if i >= 0]

    @staticmethod
    def _as_query(query: str | ImageQuery | Query, filters: Filters | None = None) -> Query:
        if not isinstance(query, Query):
            query = Query.parse(query, bare_images=True) if isinstance(query, str) else Query((Term.image(query),))
        return query.with_filters(filters) if filters is not None else query

    def query_vector(self, query: str | ImageQuery | Query) -> np.ndarray:
        """The embedding ``search`` uses for this query (same rules): the weighted sum of its terms'
        normalised embeddings, renormalised."""
        query = self._as_query(query)
        vectors = [self._term_vector(term) for term in query.terms]
        if len(vectors) == 1 and query.terms[0].weight > 0:
            return vectors[0]
        return combine(vectors, [t.weight for t in query.terms])

    def _term_vector(self, term: Term) -> np.ndarray:
        if term.kind == "text":
            return self._encoded("embed_texts", term.value)
        if term.kind == "image":
            return self._image_vector(term.value)
        found = self._store_for().vectors("images", [term.value])
        if term.value not in found:
            raise NotFoundError(f"no image with id {term.value} in {self.folder}; ids come from search results "
                                "(--json), and a deleted image's id is never reused")
        return found[term.value].copy()

    def _image_vector(self, image: ImageQuery) -> np.ndarray:
        if isinstance(image, Image.Image):
            return self._encoded("embed_images", image)
        hint = "; to search for these words as text, call search_text" if isinstance(image, str) else ""
        if not (isinstance(image, str) and imgs.is_url(image)) and not os.path.exists(os.path.expanduser(image)):
            raise BadInputError(f"query image not found: {image}{hint}")
        try:
            loaded = imgs.load_query_image(image, min_side=self.query_encoder.image_size)  # as when indexed
        except imgs.ImageSkipped as exc:
            raise BadInputError(f"cannot use {image} as a query image: {exc}") from None
        return self._encoded("embed_images", loaded.image)

    def _encoded(self, method: str, value) -> np.ndarray:
        """One text or image through the query encoder; a damaged cached export (removed as it is found) gives way
        to torch, with a warning, for this query and the rest of the process."""
        try:
            return getattr(self.query_encoder, method)([value])[0]
        except ExportDamagedError as exc:
            self._damage.append(str(exc))
            self._light = (None, encoders.Plan("torch", reason=f"queries load torch: {exc}"))
            return getattr(self.embedder, method)([value])[0]

    # -- duplicates -----------------------------------------------------------------------------
    def duplicates(self, threshold: float | None = DUPLICATE_THRESHOLD) -> list[DuplicateGroup]:
        """Groups of identical files (same bytes) and, unless ``threshold`` is None, of near-duplicates: images
        whose vectors have cosine >= threshold (resized, re-encoded, lightly edited copies). Best copy first in
        each group, biggest groups first. Lists only: nothing is deleted or moved."""
        if threshold is not None and not 0 < threshold <= 1:
            raise BadInputError(f"threshold must be in (0, 1], got {threshold}; e.g. 0.95 (higher: stricter)")
        store, dim = self._store_for(), self._dim()
        if not dim:
            return []
        _, ids, vectors = store.snapshot_vectors("images", dim)
        rows = [DuplicateRow(*r) for r in store.duplicate_rows()]
        return group_duplicates(rows, ids, vectors, threshold, similar_pairs)

    # -- inspection -----------------------------------------------------------------------------
    def info(self) -> CollectionInfo:
        store, model, dim = self._store_for(), self.model, self._dim()
        index = self._synced("images").index if dim else None
        disk = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        return CollectionInfo(
            path=str(self.folder.resolve()), model=model.name, pretrained=model.pretrained, dim=dim,
            images=store.count("images"), texts=store.count("texts"), skipped=store.count("skipped"),
            image_index=index.kind if index else "flat", image_index_lists=index.nlist if index else None,
            nprobe=self.index_config.nprobe if index and index.kind != "flat" else None,
            disk_bytes=disk, schema_version=store.get("schema_version", SCHEMA_VERSION),
            backend=store.get("backend"), query_backend=self._query_choice()[1].runner,
            query_backend_reason=self._query_choice()[1].reason, pretrained_as=model.pretrained_as,
            recipe=(store.get(stale.EMBEDDING_KEY) or {}).get("recipe"), warnings=self.warnings(),
        )

    def check(self, repair: bool = False):
        """Verify the collection end to end (``check.py``): the database, its vectors, the FAISS files and float16
        rows against the store, the model's cached export; ``repair`` rebuilds what can be rebuilt from the store.
        Returns a ``check.CheckReport``."""
        from . import check as checks

        report = checks.CheckReport(str(self.folder))
        self.require_existing()
        report.findings.append(checks.database(self.folder / DB_NAME))
        if not report.findings[-1].ok:
            return report  # nothing below can be trusted
        dim = self._dim()
        for table in ("images", "texts") if dim else ():
            report.findings += self._check_table(table, dim, repair)
        report.findings += self._check_export()
        return report

    def _check_table(self, table: str, dim: int, repair: bool) -> list:
        from . import check as checks

        store, found = self._store_for(), []
        if not store.has_rows(table):
            return found
        bad = checks.bad_vectors(store, table, dim)
        finding = checks.Finding(f"{table} vectors", not bad, f"{len(bad)} hold NaN or infinity" if bad else
                                 f"all {store.count(table)} are finite")
        if bad and repair:
            with self._writing() as writer:
                writer.delete_rows(table, bad)
            finding.repaired = True
            finding.detail += (": removed; `imgsearch index` embeds their files again" if table == "images" else
                               ": removed; add those texts again with `imgsearch texts add`")
        found.append(finding)
        synced = self._synced(table)
        for finding in filter(None, (checks.index_file(synced), checks.half_rows(synced))):
            if not finding.ok and repair:
                with self._writing():
                    synced.rebuild()
                    synced.force_save()
                finding.repaired, finding.detail = True, finding.detail + ": rebuilt from the store"
            found.append(finding)
        return found

    def _check_export(self) -> list:
        """The model's cached export through its probes (a damaged one is removed as it is found)."""
        from . import check as checks
        from .inference import backends

        export = backends.find_export(self.model) if backends.onnxruntime_installed() else None
        if export is None:
            return [checks.Finding("export", True, "none cached (the next run that needs one makes it)")]
        from .inference.onnx import OnnxTowers

        try:
            OnnxTowers(export, threads=1).check()
            if export.openvino_passed and backends.openvino_installed():
                from .inference.openvino import OpenVinoImageTower

                OpenVinoImageTower(export).encode_image(np.zeros((1, 3, export.image_size, export.image_size), np.float32))
        except ExportDamagedError as exc:
            return [checks.Finding("export", False, str(exc), repaired=True)]
        return [checks.Finding("export", True, f"{export.folder.name}: its towers give the probes' vectors")]

    def skipped(self) -> list[SkippedFile]:
        return [SkippedFile(s.path, s.reason) for s in self._store_for().skipped()]


def _image_hit(row, score: float) -> ImageHit:
    taken = row.taken_at if row.taken_at is not None else row.mtime_ns / 1e9
    return ImageHit(row.id, row.path, score, row.width, row.height, row.size, taken, row.format or None)
