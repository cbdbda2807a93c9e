"""The Python API: open a collection, index folders, add texts, search, describe.

import imgsearch
engine = imgsearch.open()                 # the default collection (see imgsearch.config.data_dir)
engine.index_folder("~/Pictures")
engine.search("a red car", k=10)          # text -> images
engine.search("beach.jpg")                # image -> images
engine.describe("beach.jpg", k=5)         # image -> texts (after engine.add_texts)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np

from . import encoders, indexing, stale
from .config import (
    DEFAULT_EXCLUDES,
    DUPLICATE_THRESHOLD,
    IndexingConfig,
    ModelConfig,
    VectorIndexConfig,
    collection_path,
)
from .errors import (
    BadInputError,
    CollectionNotFoundError,
    ExportDamagedError,
)
from .manifest import ModelRecord
from .results import CollectionInfo, DuplicateGroup, ImageHit, IndexReport, SkippedFile, TextHit
from .search.engine import ImageQuery, SearchEngine, Sources, image_hit
from .search.filters import Filters
from .search.query import Query, Term
from .storage import activity
from .storage.folder import CollectionFolder
from .storage.store import DB_NAME, SCHEMA_VERSION, Store
from .storage.synced import SyncedIndex

Progress = Callable[..., None]  # (done, total[, stage])


def open(  # noqa: A001 - mirrors sqlite3.connect / open: the natural name for users
    path: str | os.PathLike | None = None,
    model: ModelConfig | None = None,
    index_config: VectorIndexConfig = VectorIndexConfig(),
    device: str | None = None,
    embedder=None,
    backend: str | None = None,
    wait: float = 0.0,
    on_wait: Callable[[], None] | None = None,
    live: bool = False,
) -> Collection:
    """Open (lazily) the collection at path, else $IMGSEARCH_INDEX, else the per-user default
    (``~/.local/share/imgsearch/default`` on Linux; see ``config.data_dir``).

    ``model``: the model for a new collection; for an existing one, None means "the one it was
    built with" and anything else must match it. ``device`` overrides where the model runs.
    ``embedder``: an already loaded ``Embedder`` to share between collections (its model must match).
    ``backend``: one of ``config.BACKENDS``; "auto" lets ``encoders.py`` choose (see ``ModelConfig.backend``).
    ``wait``: seconds a write (index, texts, prune) waits for another process's write to end (``math.inf``: as
    long as it takes; 0: fail at once); ``on_wait`` is called once when a write starts waiting.
    ``live``: a long-lived reader (a server) that calls ``refresh`` to take in other processes' writes.
    """
    collection = Collection(
        collection_path(path),
        model or (embedder and embedder.config),
        index_config,
        device,
        backend,
        wait,
        on_wait,
        live,
    )
    collection._embedder = embedder
    return collection


class Collection:
    """One collection: a folder holding a SQLite database (the truth: metadata and vectors) and FAISS files
    derived from it. Made by ``imgsearch.open``; use it in a ``with`` block, or call ``close``.

    Index with ``index_folder``; search with ``search`` (text, image, or a ``Query`` of both, with ``Filters``),
    ``search_text``, ``search_image``, ``search_vector``; image -> text with ``add_texts`` and ``describe``; look
    after it with ``info``, ``check``, ``skipped``, ``prune``, ``duplicates``. ``len(collection)``: its images.
    Errors are ``imgsearch.ImgsearchError`` subclasses (``imgsearch.errors``), each saying how to fix it.
    """

    def __init__(
        self,
        folder: Path,
        model: ModelConfig | None = None,
        index_config=VectorIndexConfig(),
        device: str | None = None,
        backend: str | None = None,
        wait: float = 0.0,
        on_wait: Callable[[], None] | None = None,
        live: bool = False,
    ):
        self.folder = Path(folder)
        self.live = live
        self.index_config = index_config
        self._disk = CollectionFolder(self.folder, self._missing, wait, on_wait, self._writer_opened)
        self._embedder = None
        self._light: tuple[Any, encoders.Plan] | None = None  # (torch-free query encoder or None, plan), decided once
        self._indexes: dict[str, SyncedIndex] = {}
        self._models = ModelRecord(
            self.folder, self._store_for, model, device, backend, lambda: self.embedder, lambda: self._embedder
        )
        self._engine = SearchEngine(
            Sources(
                self.folder,
                self._store_for,
                self._synced,
                self._dim,
                self._encoded,
                lambda: self.query_encoder.image_size,
            )
        )
        self._known_dim: int | None = None
        self._damage: list[str] = []  # damaged cached exports met (and removed) by this handle
        self._file_encoders: dict[str, Any] = {}  # export encoders of image files by decode setting, once opened
        # What encodes one query term, by method, instead of encode_many (server.batching.Batcher gathers them).
        self.query_fronts: dict[str, Callable[[object], np.ndarray]] = {}

    # -- plumbing -------------------------------------------------------------------------------
    def __repr__(self) -> str:
        if not self.exists:
            return f"<imgsearch.Collection {str(self.folder)!r} (not created yet)>"
        return f"<imgsearch.Collection {str(self.folder)!r}: {len(self)} images>"

    def __len__(self) -> int:
        """How many images the collection holds (0 before it exists)."""
        return self._store_for().count("images") if self.exists else 0

    def __bool__(self) -> bool:
        return True  # a collection is a handle, true even while empty (len() says how many images)

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the database; the handle opens it again if used (``with`` closes it for you)."""
        # Writers save their index under the writer lock before returning. A reader that had to rebuild or catch
        # up saves only under that lock and only while the store is at its generation (SyncedIndex.save_if_free),
        # so a reader racing an indexer cannot put an old index under a current stamp.
        self._disk.close()

    @property
    def exists(self) -> bool:
        return self._disk.exists

    def _missing(self) -> CollectionNotFoundError:
        return CollectionNotFoundError(
            f"no collection at {self.folder}",
            cli_hint="build one with `imgsearch index DIR`, or point at an existing one with --collection PATH "
            "(or $IMGSEARCH_INDEX)",
            api_hint="build one with Collection.index_folder(DIR), or open the folder of an existing one",
            web_hint="build one on the server's machine with `imgsearch index DIR`; this page finds it without a "
            "restart",
        )

    def require_existing(self) -> None:
        """Raise CollectionNotFoundError (saying how to build one) unless the collection exists."""
        if not self.exists:
            raise self._missing()

    def _store_for(self) -> Store:
        return self._disk.reader()

    def _writing(self, create: bool = False):
        return self._disk.writing(create)

    def _writer_opened(self, store: Store) -> None:
        for synced in self._indexes.values():
            synced.store = store

    # -- the model ------------------------------------------------------------------------------
    @property
    def model(self) -> ModelConfig:
        """The collection's model (on the requested device)."""
        return self._models.model

    def warnings(self) -> list[str]:
        """What makes this collection's answers less than right, for a reader to show: vectors made wrongly by an
        earlier imgsearch (``stale.py``), until an index run re-embeds them; damaged exports met and removed."""
        return self._models.stale_warnings() + self._damage

    @property
    def query_encoder(self):
        """What encodes a query: the model's cached ONNX towers (no torch import) when they can
        (``encoders.for_query``), else ``embedder``; a model already loaded (a shared embedder, a long-lived
        process) is used as it is."""
        if self._embedder is not None:
            return self._embedder
        return self._query_choice()[0] or self.embedder

    def _query_choice(self) -> tuple[Any, encoders.Plan]:
        if self._light is None:
            self._light = encoders.query_encoder(self.model)
            self._remember_model()
        return self._light

    def _remember_model(self) -> None:
        """A checkpoint a reader found at a new path is written down, as ``index`` does, so that the next command
        finds it without being told again; skipped while another process writes, or where nothing can be written
        (the next reader tries again)."""
        if self._models.changed():
            self._disk.write_if_free(self._models.note_changes)

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
            self._indexes[table] = SyncedIndex(
                self._store_for(), table, self.folder, cast(int, self._dim()), self.index_config, live=self.live
            )
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
        return any([synced.catch_up(self._engine.index_lock) for synced in list(self._indexes.values())])

    # -- indexing -------------------------------------------------------------------------------
    def index_folder(
        self,
        folder: str | os.PathLike,
        settings: IndexingConfig = IndexingConfig(),
        progress: Progress | None = None,
        excludes: Iterable[str] = DEFAULT_EXCLUDES,
        rehash: bool = False,
    ) -> IndexReport:
        """Embed new and changed images under folder, drop vanished ones, follow moved ones.

        ``excludes``: glob patterns (names or paths relative to folder) left out of the collection. ``rehash``:
        read every file's content even when its size and modification time are as stored.
        """
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise BadInputError(f"not a folder: {folder}; pass the directory that holds your images")
        root = root.resolve()
        with self._writing(create=True) as store, activity.recording(self.folder, root, progress) as told:
            return indexing.run(self._target(), store, root, settings, told, tuple(excludes), rehash)

    def _target(self) -> indexing.Target:
        return indexing.Target(
            self.folder,
            self._models,
            self._dim,
            self._synced,
            self._indexes.get,
            lambda: self.embedder,
            self._image_file_encoder,
            self._file_encoders.clear,
        )

    def _image_file_encoder(self, settings: IndexingConfig, files: int = 0, stage=None):
        """What embeds image files: the model's cached export without torch (``encoders.file_encoder``), else
        ``embedder`` (torch; it makes the export on a model's first run). An export's encoder is kept for the
        handle's next runs: a watcher's run for one new photo must not open the model again (about 1 s)."""
        if self._embedder is not None:
            return self._embedder
        if settings.decode in self._file_encoders:
            return self._file_encoders[settings.decode]
        encoder, plan = encoders.file_encoder(self.model, settings.decode, files, stage)
        if encoder is None:
            return self.embedder
        encoder.notes += [plan.reason] if plan is not None and plan.reason else []
        self._file_encoders[settings.decode] = encoder
        return encoder

    def prune(self, dry_run: bool = False) -> list[str]:
        """Drop rows (and skip records) whose files are gone, anywhere in the collection; returns their paths.

        Unlike `index_folder`, which only forgets files under the folder it indexes, this checks every row.
        """
        with self._writing() as store:
            return indexing.prune(self._target(), store, dry_run)

    # -- texts ----------------------------------------------------------------------------------
    def add_texts(
        self, texts: Iterable[str], source: str | None = None, progress: Progress | None = None, batch_size: int = 1024
    ) -> int:
        """Embed and store texts (blank ones dropped) for image -> text search; returns how many."""
        texts = [t.strip() for t in texts if t and t.strip()]
        with self._writing(create=True) as store:
            indexing.add_texts(self._target(), store, texts, source, progress, batch_size)
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
        """Remove the texts (only those added from ``source``, when given); returns how many."""
        with self._writing() as store:
            removed = store.clear_texts(source)
            if self._dim():
                synced = self._synced("texts")
                synced.rebuild()
                synced.save()
        return removed

    # -- search ---------------------------------------------------------------------------------
    def search(
        self, query: str | ImageQuery | Query, k: int = 10, filters: Filters | None = None, offset: int = 0
    ) -> list[ImageHit]:
        """Images best matching a query: a ``Query``, its written form (``"beach + sunset - people"``,
        ``"2*red car + img:night.jpg"``; see ``imgsearch.search.query``), or an image (a path, an http(s) URL,
        a ``Path``, a PIL image). ``filters`` narrow the result (and override the query's own);
        ``offset`` skips that many of the best (paging).

        A string that is one image file name ("beach.jpg", "photos/a b.png", a URL) is an image query, and a
        missing file is an error, never a text search. ``search_text`` and ``search_image`` say which outright.
        """
        return self._engine.search(query, k, filters, offset)

    def search_text(self, text: str, k: int = 10, filters: Filters | None = None) -> list[ImageHit]:
        """Images best matching a text, taken as text whatever it looks like (no operators, no prefixes)."""
        return self.search(Query((Term.text(text),), filters or Filters()), k)

    def search_image(self, image: ImageQuery, k: int = 10, filters: Filters | None = None) -> list[ImageHit]:
        """Images most like an image: a file path, an http(s) URL, or a PIL image."""
        return self.search(Query((Term.image(image),), filters or Filters()), k)

    def search_vector(
        self, vector: np.ndarray, k: int = 10, filters: Filters | None = None, offset: int = 0
    ) -> list[ImageHit]:
        """Images nearest to a vector of the collection's model (L2-normalised, as the model's embeddings are)."""
        self.require_searchable("images", k)
        return self._engine.image_hits(vector, k, filters or Filters(), offset)

    def browse(self, filters: Filters | None = None, offset: int = 0, limit: int = 50) -> list[ImageHit]:
        """Images passing the filters (all without), most recently taken first; ``score`` is None."""
        return self._engine.browse(filters, offset, limit)

    def image(self, image_id: int) -> ImageHit | None:
        """An indexed image's details (``score`` None), or None when no image has that id."""
        row = self.row(image_id)
        return None if row is None else image_hit(row, None)

    @property
    def generation(self) -> int:
        """A counter the store bumps with each batch that changes the images: the state searches see now (for a
        ``live`` reader, what it last caught up to); 0 before the collection exists. A client that saw another
        number knows the results it holds may be out of date."""
        synced = self._indexes.get("images")
        if synced is not None and synced.generation >= 0:
            return synced.generation
        return self._store_for().generation("images") if self.exists else 0

    @property
    def is_empty(self) -> bool:
        """No image indexed yet (cheap: one row is looked for)."""
        return not self._store_for().has_rows("images")

    def row(self, image_id: int):
        """The stored record of an indexed image (``records.ImageRow``: path, size, mtime_ns, content_hash...),
        or None when no image has that id."""
        return self._store_for().images_by_id([image_id]).get(image_id)

    def describe(self, image: ImageQuery | Query, k: int = 5) -> list[TextHit]:
        """Texts of the collection's text set best matching an image (image -> text): a path, a URL, a PIL
        image, or a ``Query`` (e.g. ``Query.of(Term.indexed(42))`` for an indexed image, without decoding it)."""
        return self._engine.describe(image, k)

    def require_searchable(self, table: str = "images", k: int = 1) -> None:
        """Fail before any model loads when a search of ``table`` ("images" or "texts") for k results cannot
        succeed: CollectionNotFoundError, EmptyCollectionError (saying how to add some), or BadInputError."""
        self._engine.require_searchable(table, k)

    def query_vector(self, query: str | ImageQuery | Query) -> np.ndarray:
        """The embedding ``search`` uses for this query (same rules): the weighted sum of its terms'
        normalised embeddings, renormalised."""
        return self._engine.query_vector(query)

    def encode_many(self, method: str, values: list) -> np.ndarray:
        """Texts ("embed_texts") or images ("embed_images") through the query encoder, one row each; a damaged
        cached export (removed as it is found) gives way to torch, with a warning, for the rest of the process."""
        try:
            return getattr(self.query_encoder, method)(values)
        except ExportDamagedError as exc:
            self._damage.append(str(exc))
            self._light = (None, encoders.Plan("torch", reason=f"queries load torch: {exc}"))
            return getattr(self.embedder, method)(values)

    def _encoded(self, method: str, value) -> np.ndarray:
        """One query term's vector: through ``query_fronts[method]`` when set (a server's micro-batching), else
        alone."""
        front = self.query_fronts.get(method)
        return front(value) if front is not None else self.encode_many(method, [value])[0]

    # -- duplicates -----------------------------------------------------------------------------
    def duplicates(self, threshold: float | None = DUPLICATE_THRESHOLD) -> list[DuplicateGroup]:
        """Groups of identical files (same bytes) and, unless ``threshold`` is None, of near-duplicates: images
        whose vectors have cosine >= threshold (resized, re-encoded, lightly edited copies). Best copy first in
        each group, biggest groups first. Lists only: nothing is deleted or moved."""
        return self._engine.duplicates(threshold)

    # -- inspection -----------------------------------------------------------------------------
    def info(self) -> CollectionInfo:
        """What the collection holds: model, counts, index structure, size on disk, backends, warnings."""
        store, model, dim = self._store_for(), self.model, self._dim()
        index = self._synced("images").index if dim else None
        disk = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        return CollectionInfo(
            path=str(self.folder.resolve()),
            model=model.name,
            pretrained=model.pretrained,
            dim=dim,
            images=store.count("images"),
            texts=store.count("texts"),
            skipped=store.count("skipped"),
            image_index=index.kind if index else "flat",
            image_index_lists=index.nlist if index else None,
            nprobe=self.index_config.nprobe if index and index.kind != "flat" else None,
            disk_bytes=disk,
            schema_version=store.get("schema_version", SCHEMA_VERSION),
            backend=store.get("backend"),
            query_backend=self._query_choice()[1].runner,
            query_backend_reason=self._query_choice()[1].reason,
            pretrained_as=model.pretrained_as,
            recipe=(store.get(stale.EMBEDDING_KEY) or {}).get("recipe"),
            warnings=self.warnings(),
            indexing=self.activity(),
            videos=store.count_videos(),
            frames=store.count("frames"),
        )

    def activity(self) -> dict | None:
        """The index run in progress now, from any process (``storage.activity``): folder, stage, done, total,
        started, updated, pid; None when none runs."""
        now = activity.current(self.folder)
        return now.to_dict() if now is not None else None

    def check(self, repair: bool = False):
        """Verify the collection end to end (``check.py``): the database, its vectors, the FAISS files and float16
        rows against the store, the model's cached export; ``repair`` rebuilds what can be rebuilt from the store.
        Returns a ``check.CheckReport``."""
        from . import check as checks

        self.require_existing()
        return checks.collection(
            self.folder / DB_NAME, self._dim, self._store_for, self._synced, self._writing, self.model, repair
        )

    def skipped(self) -> list[SkippedFile]:
        """Files that could not be indexed, with the reason for each."""
        return [SkippedFile(s.path, s.reason) for s in self._store_for().skipped()]
