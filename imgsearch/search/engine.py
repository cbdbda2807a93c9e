"""How a query runs over one collection: its terms encoded and combined, the FAISS index searched under its
filters, and the hits resolved to their rows. A hit without a row is a damaged database, never a shorter list.

``Collection`` owns one ``SearchEngine`` and gives it what it reads: the store, each table's synced index, the
vectors' dimension, and how one text or image is encoded (the collection decides what encodes queries, and falls
back to torch when a cached export turns out damaged).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image

from .. import images as imgs
from ..errors import BadInputError, CollectionDamagedError, EmptyCollectionError, NotFoundError
from ..results import DuplicateGroup, ImageHit, Moment, TextHit
from ..storage.locking import LOCK_NAME, held_elsewhere
from ..storage.store import DB_NAME, Store
from ..storage.synced import SyncedIndex
from ..storage.vector_index import IdFilter, similar_pairs
from .duplicates import Row as DuplicateRow
from .duplicates import group_duplicates
from .filters import Filters, ImageColumns
from .query import Query, Term, combine

ImageQuery = str | os.PathLike | Image.Image  # a file path, an http(s) URL, or a PIL image


@dataclass(frozen=True)
class Sources:
    """What a search reads, as the collection gives it (each opened on first use)."""

    folder: Path
    store: Callable[[], Store]
    synced: Callable[[str], SyncedIndex]  # "images" or "texts"
    dim: Callable[[], int | None]  # None while the collection holds no vector
    encode: Callable[[str, object], np.ndarray]  # ("embed_texts" | "embed_images", one value) -> its vector
    image_size: Callable[[], int]  # the query encoder's input side: query images are decoded as indexed ones


class SearchEngine:
    def __init__(self, sources: Sources):
        self.sources = sources
        self.index_lock = threading.Lock()  # searches and a live refresh's changes to the index, one at a time
        self._columns: tuple | None = None  # (store version, ImageColumns) for filters
        self._selection: tuple | None = None  # (store version, Filters, IdFilter): the last filter's ids

    # -- images ---------------------------------------------------------------------------------
    def search(self, query: str | ImageQuery | Query, k: int, filters: Filters | None, offset: int) -> list[ImageHit]:
        query = as_query(query, filters)
        self.require_searchable("images", k)
        if offset < 0:
            raise BadInputError(f"offset must be 0 or more, got {offset}")
        return self.image_hits(self.query_vector(query), k, query.filters, offset)

    def image_hits(self, vector: np.ndarray, k: int, filters: Filters, offset: int) -> list[ImageHit]:
        allowed = self._allowed(filters) if filters else None
        if self.sources.store().has_rows("frames"):
            hits, moments = self._with_videos(vector, k + offset, allowed)
            hits = hits[offset:]
        else:
            hits, moments = self._search("images", vector, k + offset, allowed)[offset:], {}
        rows = self.sources.store().images_by_id([i for i, _ in hits])
        self._check_resolved("images", hits, rows)
        return [image_hit(rows[i], s, moments.get(i, ())) for i, s in hits if i in rows]

    def _with_videos(
        self, vector: np.ndarray, want: int, allowed: IdFilter | None
    ) -> tuple[list[tuple[int, float]], dict[int, tuple[Moment, ...]]]:
        """The ``want`` best photos and videos, a video scored by its best frame (never by its mean vector, which
        stands in the images index for duplicates and ``id:`` terms), with its moments from the frames found.
        Both indexes are searched deeper until no photo or frame left unread could rank among them."""
        store, deep_images, deep_frames = self.sources.store(), want, max(4 * want, 32)
        while True:
            photos = self._search("images", vector, deep_images, allowed)
            frame_hits = self._search("frames", vector, deep_frames)
            located = store.frame_rows([i for i, _ in frame_hits])
            self._check_resolved("frames", frame_hits, located)
            rows = store.images_by_id([i for i, _ in photos])
            kept = [(i, s) for i, s in photos if i in rows and rows[i].duration is None] + [
                h
                for h in photos
                if h[0] not in rows  # resolved (and refused if the store lost it) by the caller
            ]
            found = [(located[i][0], located[i][1], s) for i, s in frame_hits if i in located]
            if allowed is not None and found:
                inside = allowed.contains(np.array([v for v, _, _ in found], np.int64))
                found = [f for f, ok in zip(found, inside) if ok]
            merged, moments = merge_moments(kept, found, want)
            photo_floor = photos[-1][1] if len(photos) == deep_images else -np.inf
            frame_floor = frame_hits[-1][1] if len(frame_hits) == deep_frames else -np.inf
            floor = max(photo_floor, frame_floor)
            if floor == -np.inf or (len(merged) >= want and merged[want - 1][1] >= floor):
                return merged[:want], moments
            deep_images, deep_frames = deep_images * 2, deep_frames * 2

    def browse(self, filters: Filters | None, offset: int, limit: int) -> list[ImageHit]:
        if offset < 0 or limit < 1:
            raise BadInputError(f"offset must be 0 or more and limit at least 1, got {offset} and {limit}")
        if not self.sources.dim():
            return []
        store = self.sources.store()
        columns = self._image_columns(store.filter_version())
        ids = [int(i) for i in columns.newest_first(filters or Filters())[offset : offset + limit]]
        rows = store.images_by_id(ids)
        return [image_hit(rows[i], None) for i in ids if i in rows]

    def duplicates(self, threshold: float | None) -> list[DuplicateGroup]:
        if threshold is not None and not 0 < threshold <= 1:
            raise BadInputError(f"threshold must be in (0, 1], got {threshold}; e.g. 0.95 (higher: stricter)")
        store, dim = self.sources.store(), self.sources.dim()
        if not dim:
            return []
        _, ids, vectors = store.snapshot_vectors("images", dim)
        rows = [DuplicateRow(*r) for r in store.duplicate_rows()]
        return group_duplicates(rows, ids, vectors, threshold, similar_pairs)

    # -- texts ----------------------------------------------------------------------------------
    def describe(self, image: ImageQuery | Query, k: int) -> list[TextHit]:
        self.require_searchable("texts", k)
        vector = self.query_vector(image) if isinstance(image, Query) else self._image_vector(image)
        hits = self._search("texts", vector, k)
        rows = self.sources.store().texts_by_id([i for i, _ in hits])
        self._check_resolved("texts", hits, rows)
        return [TextHit(i, rows[i].text, s, rows[i].source) for i, s in hits if i in rows]

    # -- shared ---------------------------------------------------------------------------------
    def require_searchable(self, table: str, k: int) -> None:
        if k < 1:
            raise BadInputError(f"k must be at least 1, got {k}")
        if not self.sources.dim() or self.sources.synced(table).index.ntotal == 0:
            if held_elsewhere(self.sources.folder / LOCK_NAME):
                raise EmptyCollectionError(
                    f"no {table} in {self.sources.folder} yet: another process is adding the first ones now",
                    cli_hint="ask again once a first batch is stored (an `imgsearch index` stores one every few seconds)",
                    api_hint="search again once the writer has stored a first batch",
                )
            raise EmptyCollectionError(
                f"no {table} in {self.sources.folder} yet",
                cli_hint=f"add some with `{'imgsearch index DIR' if table == 'images' else 'imgsearch texts add FILE'}`",
                api_hint=f"add some with {'index_folder' if table == 'images' else 'add_texts'}",
            )

    def query_vector(self, query: str | ImageQuery | Query) -> np.ndarray:
        query = as_query(query)
        vectors = [self._term_vector(term) for term in query.terms]
        if len(vectors) == 1 and query.terms[0].weight > 0:
            return vectors[0]
        return combine(vectors, [t.weight for t in query.terms])

    def _search(self, table: str, vector: np.ndarray, k: int, allowed=None) -> list[tuple[int, float]]:
        """(id, score) best first; the caller has checked ``require_searchable``."""
        with self.index_lock:
            found = self.sources.synced(table).index.search(vector, k, allowed)
        return [(int(i), float(s)) for i, s in zip(found.ids[0], found.scores[0]) if i >= 0]

    def _check_resolved(self, table: str, hits: list, rows: dict) -> None:
        """Every hit must have its row, unless a writer deleted it since the index was brought up to date (a live
        reader lags by up to one refresh). A hit without a row otherwise means a damaged database: 0.1 returned
        5 of 10 results then, without a word."""
        missing = [i for i, _ in hits if i not in rows]
        if missing and self.sources.store().generation(table) == self.sources.synced(table).generation:
            raise CollectionDamagedError(
                f"{len(missing)} of the {len(hits)} best matches (ids {', '.join(map(str, missing[:5]))}) have no row "
                f"in {self.sources.folder / DB_NAME}: the database is damaged",
                cli_hint="`imgsearch check` says what can be repaired; `imgsearch check --repair` rebuilds what can be "
                "rebuilt, and `imgsearch index` on the collection's folders re-embeds what was lost",
                api_hint="Collection.check(repair=True) rebuilds what can be rebuilt; index_folder re-embeds the rest",
            )

    def _image_columns(self, version: tuple) -> ImageColumns:
        """The filter columns, read again only when the store's filter version is no longer ``version``."""
        if self._columns is None or self._columns[0] != version:
            version, rows = self.sources.store().filter_rows()
            self._columns = (version, ImageColumns.from_rows(rows))
        return self._columns[1]

    def _allowed(self, filters: Filters) -> IdFilter:
        """Ids passing the filters, from columns cached until the collection changes; the last selection is kept,
        so paging or a new query under the same filters does not select again."""
        version = self.sources.store().filter_version()
        if self._selection is not None and self._selection[:2] == (version, filters):
            return self._selection[2]
        columns = self._image_columns(version)
        unknown = columns.folders_without_images(filters.folders)
        if unknown:  # a mistyped or never-indexed folder: 0.1 answered it with no results and no word
            raise NotFoundError(
                f"no image in {self.sources.folder} is under {', '.join(unknown)}; its images are under "
                f"{columns.describe_folders()}"
            )
        chosen = IdFilter(columns.select(filters))
        self._selection = (cast(tuple, self._columns)[0], filters, chosen)
        return chosen

    def _term_vector(self, term: Term) -> np.ndarray:
        if term.kind == "text":
            return self.sources.encode("embed_texts", term.value)
        if term.kind == "image":
            return self._image_vector(term.value)
        found = self.sources.store().vectors("images", [term.value])
        if term.value not in found:
            raise NotFoundError(
                f"no image with id {term.value} in {self.sources.folder}; ids come from search "
                "results (--json), and a deleted image's id is never reused"
            )
        return found[term.value].copy()

    def _image_vector(self, image: ImageQuery) -> np.ndarray:
        if isinstance(image, Image.Image):
            return self.sources.encode("embed_images", image)
        if not (isinstance(image, str) and imgs.is_url(image)) and not os.path.exists(os.path.expanduser(image)):
            raise BadInputError(
                f"query image not found: {image}",
                cli_hint="check the file's path",
                api_hint="to search for these words as text, call search_text" if isinstance(image, str) else None,
            )
        try:
            loaded = imgs.load_query_image(image, min_side=self.sources.image_size())  # as when indexed
        except imgs.ImageSkipped as exc:
            raise BadInputError(f"cannot use {image} as a query image: {exc}") from None
        return self.sources.encode("embed_images", loaded.image)


def as_query(query: str | ImageQuery | Query, filters: Filters | None = None) -> Query:
    """A ``Query`` from its written form (a bare image file name is an image query) or an image."""
    if not isinstance(query, Query):
        query = Query.parse(query, bare_images=True) if isinstance(query, str) else Query((Term.image(query),))
    return query.with_filters(filters) if filters is not None else query


def image_hit(row, score: float | None, moments: tuple[Moment, ...] = ()) -> ImageHit:
    taken = row.taken_at if row.taken_at is not None else row.mtime_ns / 1e9
    return ImageHit(
        row.id, row.path, score, row.width, row.height, row.size, taken, row.format or None, row.duration, moments
    )


MOMENTS = 5  # matching moments listed per video


def merge_moments(
    photos: list[tuple[int, float]], frames: list[tuple[int, float, float]], want: int
) -> tuple[list[tuple[int, float]], dict[int, tuple[Moment, ...]]]:
    """Photos (id, score) and video frames (video id, time, score), each best first, as one ranking in which a
    video appears once with its best frame's score; and each ranked video's moments, best first."""
    moments: dict[int, list[Moment]] = {}
    for video, time, score in frames:
        moments.setdefault(video, []).append(Moment(time, score))
    ranked = sorted(photos + [(v, found[0].score) for v, found in moments.items()], key=lambda h: -h[1])[:want]
    return ranked, {i: tuple(moments[i][:MOMENTS]) for i, _ in ranked if i in moments}
