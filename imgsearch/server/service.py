"""What the HTTP API does, free of any web framework: one resident collection and model, searched by many
requests at once, kept fresh while other processes index.

``app.py`` maps requests onto these methods and errors onto status codes; everything here takes and returns
plain values, so it is usable (and tested) without HTTP.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import api
from .. import images as imgs
from ..errors import BadInputError, NotFoundError, TooLargeError
from ..search import Filters, Query, Term
from . import discovery, thumbnails
from .batching import Batcher

MAX_ID = 2**63 - 1  # SQLite's largest integer: a bigger id names nothing
MEDIA_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "heif": "image/heif",
    "avif": "image/avif",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "webm": "video/webm",
    "mkv": "video/x-matroska",
    "avi": "video/x-msvideo",
}


@dataclass(frozen=True)
class VideoFile:
    path: str
    stat: os.stat_result
    media_type: str
    name: str


@dataclass(frozen=True)
class ServeConfig:
    index: Path | None = None  # the collection folder (None: $IMGSEARCH_INDEX, else the per-user default)
    host: str = "127.0.0.1"  # loopback only by default; any other address needs a token
    port: int = 8000  # 0: any free port (the discovery file says which)
    token: str | None = None  # required on every request when set
    max_upload_bytes: int = 20 * 2**20
    # Pixels of an uploaded image (a JPEG is decoded at reduced size, so the cap bites on PNG and the like): an
    # 11000x11000 PNG of 353 KB took 7.4 s and 0.9 GB to decode.
    max_upload_pixels: int = 40_000_000
    decodes: int = 2  # uploads decoded at once; more wait their turn (24 at once peaked at 3.9 GB)
    max_results: int = 1000  # offset + limit of one search: paging deeper than this is refused
    refresh_every: float = 0.2  # seconds between checks for what other processes committed
    backend: str | None = None  # as for `imgsearch query`
    device: str | None = None
    workers: int = 4  # threads serving searches (the event loop never runs one)
    # Concurrent queries encoded together (server/batching.py): off by default, since on CPU it cost throughput.
    batch: bool = False
    text_cache: int = 256  # recent texts whose vectors are kept (a gallery asks the same text for each page)
    watch: tuple[Path, ...] = ()  # folders kept in step by a watcher in the server (watching.py)

    def check(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise BadInputError(
                f"refusing to serve on {self.host} without a token: anyone who can reach it could search your "
                "photos and download them; add --token SECRET (or set $IMGSEARCH_TOKEN), or serve on 127.0.0.1"
            )
        if not 0 <= self.port <= 65535:
            raise BadInputError(f"--port must be 0-65535, got {self.port}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SearchService:
    """The collection and its model, loaded once; safe to call from several threads."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.collection = api.open(config.index, backend=config.backend, device=config.device, live=True)
        self.folder = self.collection.folder
        self.thumbnails = thumbnails.Cache(self.folder / "thumbnails")
        self._checked = 0.0
        self._refreshing = threading.Lock()
        self._counted = (-1, 0)  # (generation, images then): a count of every row only when they changed
        self._decoding = threading.BoundedSemaphore(config.decodes)
        self.nonce = secrets.token_hex(16)  # this run's secret, in server.json: proves the server to its clients
        self._answering = 0  # requests being answered now: micro-batches wait for more only while there are
        self._counting = threading.Lock()
        size = 16 if config.batch else 1
        self.collection.query_fronts = {
            "embed_texts": Batcher(self._encoder("embed_texts"), self._busy, size, cache=config.text_cache)
        }
        if config.batch:
            self.collection.query_fronts["embed_images"] = Batcher(self._encoder("embed_images"), self._busy)

    def _encoder(self, method: str):
        return lambda values: self.collection.encode_many(method, values)

    def _busy(self) -> int:
        return self._answering

    @contextlib.contextmanager
    def answering(self):
        """Count a request while it is answered (see ``batching.Batcher``)."""
        with self._counting:
            self._answering += 1
        try:
            yield
        finally:
            with self._counting:
                self._answering -= 1

    # -- lifecycle ------------------------------------------------------------------------------
    def warm(self) -> None:
        """Load the index and the query encoder now, so that the first search is as fast as the rest."""
        if self.state() != "ready":
            return
        from PIL import Image

        blank = Image.new("RGB", (self.collection.query_encoder.image_size,) * 2)
        warm_up = Query.of(Term.text("warm up"), Term.image(blank))
        self.collection.search_vector(self.collection.query_vector(warm_up), 1)

    def fresh(self) -> None:
        """Take in other processes' commits, at most every ``refresh_every`` s; never waits for another
        thread's refresh (a search meanwhile sees the state before it)."""
        now = time.monotonic()
        if now - self._checked < self.config.refresh_every or not self._refreshing.acquire(blocking=False):
            return
        try:
            self.collection.refresh()
            self._checked = time.monotonic()
        finally:
            self._refreshing.release()

    def state(self) -> str:
        """ "missing" (no collection), "empty" (nothing indexed yet) or "ready"."""
        if not self.collection.exists:
            return "missing"
        self.fresh()
        return "empty" if self.collection.is_empty else "ready"

    def proof(self, challenge: str) -> str:
        """What a client checks before it sends a query (``discovery.proof``): this run's nonce and the
        collection it serves, bound to the client's challenge."""
        return discovery.proof(self.nonce, challenge, self.folder)

    # -- reading --------------------------------------------------------------------------------
    def health(self) -> dict:
        return {"status": "ok", "state": self.state(), "collection": str(self.folder)}

    def info(self) -> dict:
        state = self.state()
        body = {
            "state": state,
            "collection": str(self.folder),
            "max_upload_bytes": self.config.max_upload_bytes,
            "max_results": self.config.max_results,
        }
        if state == "missing":
            return body | {
                "hint": f"no collection at {self.folder} yet: build one with `imgsearch index DIR`"
                f"{_index_flag(self.config)}, and this page shows it without a restart"
            }
        body |= {"info": self.collection.info().to_dict()}
        if state == "empty":
            body["hint"] = (
                f"the collection holds no images yet: add some with `imgsearch index DIR{_index_flag(self.config)}`"
            )
        return body

    def updates(self) -> dict:
        """What the page asks every few seconds: the collection's state, its ``generation`` (the results it holds
        are out of date once this changes), how many images, and the index run in progress (``indexing``), if any."""
        state = self.state()
        if state == "missing":
            return {"state": state, "generation": 0, "images": 0, "indexing": None}
        generation = self.collection.generation
        if self._counted[0] != generation:
            self._counted = (generation, len(self.collection))
        return {
            "state": state,
            "generation": generation,
            "images": self._counted[1],
            "indexing": self.collection.activity(),
        }

    def search(self, q: str | None, upload: bytes | None, filters: Filters, offset: int, limit: int) -> dict:
        """Images for a written query (``beach + sunset - people``, ``id:42``; no image files: those name files
        on the server) and/or an uploaded image, added as one more term."""
        self._check_page(offset, limit)
        self.fresh()
        self.collection.require_searchable("images", limit)  # before the model loads for nothing
        started = time.perf_counter()
        query = self._query(q, upload)
        with self.answering():
            vector = self.collection.query_vector(query)
        encoded = time.perf_counter()
        generation = self.collection.generation  # what the results below come from (`updates` tells a change)
        hits = self.collection.search_vector(vector, limit, filters, offset)
        done = time.perf_counter()
        return {
            "generation": generation,
            "query": str(query),
            "offset": offset,
            "limit": limit,
            "results": [h.to_dict() for h in hits],
            "timing": {"encode_ms": 1e3 * (encoded - started), "search_ms": 1e3 * (done - encoded)},
        }

    def browse(self, filters: Filters, offset: int, limit: int) -> dict:
        self._check_page(offset, limit)
        self.fresh()
        generation = self.collection.generation
        hits = self.collection.browse(filters, offset, limit)
        results = [h.to_dict() for h in hits]
        return {"generation": generation, "query": None, "offset": offset, "limit": limit, "results": results}

    def describe(self, image_id: int | None, upload: bytes | None, k: int) -> dict:
        if not 1 <= k <= 100:
            raise BadInputError(f"k must be 1-100, got {k}")
        self.fresh()
        self.collection.require_searchable("texts", k)
        if image_id is not None:
            self.image(image_id)  # 404 for an unknown id
            query = Query.of(Term.indexed(image_id))
        else:
            query = self._query(None, upload)
        return {"results": [t.to_dict() for t in self.collection.describe(query, k)]}

    def image(self, image_id: int) -> dict:
        hit = self.collection.image(image_id) if self._known(image_id) else None
        if hit is None:
            raise self._no_image(image_id)
        return hit.to_dict()

    def thumbnail(self, image_id: int, size: int, at: float | None = None) -> Path | bytes:
        """The cached JPEG thumbnail (EXIF orientation applied) of an indexed image, only while its file is still
        the one indexed (same size and modification time, as an index run judges it): like ``original``, never a
        picture of a file that has changed or gone. A video's is its frame ``at`` seconds in (default: the first)."""
        row = self._unchanged(self._row(image_id))
        if row.duration is not None:
            return self.thumbnails.poster(row, size, at or 0.0)
        return self.thumbnails.get(row, size, lambda: self._indexed_bytes(row))

    def _video_file(self, row) -> VideoFile:
        """An indexed video, to be served in ranges for playing and seeking, only while its size and modification
        time are the indexed ones (a video is not read whole to hash it on every request: an index run trusts the
        same two)."""
        st = self._stat_unchanged(row)
        return VideoFile(row.path, st, MEDIA_TYPES.get(row.format or "", "video/mp4"), os.path.basename(row.path))

    def _unchanged(self, row):
        self._stat_unchanged(row)
        return row

    def _stat_unchanged(self, row) -> os.stat_result:
        try:
            st = os.stat(row.path)
        except OSError:
            raise self._changed(row) from None
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns):
            raise self._changed(row)
        return st

    def original(self, image_id: int) -> tuple[bytes, str, str] | VideoFile:
        """(bytes, media type, file name) of an indexed image, only while its file holds the indexed content; a
        video's ``VideoFile``."""
        row = self._row(image_id)
        if row.duration is not None:
            return self._video_file(row)
        return (
            self._indexed_bytes(row),
            MEDIA_TYPES.get(row.format or "", "application/octet-stream"),
            os.path.basename(row.path),
        )

    # -- helpers --------------------------------------------------------------------------------
    def _check_page(self, offset: int, limit: int) -> None:
        if offset < 0 or limit < 1 or offset + limit > self.config.max_results:
            raise BadInputError(
                f"offset must be >= 0 and limit >= 1 with offset + limit <= "
                f"{self.config.max_results}; got offset={offset}, limit={limit}"
            )

    def _query(self, q: str | None, upload: bytes | None) -> Query:
        terms = list(Query.parse(q).terms) if q and q.strip() else []
        if any(t.kind == "image" for t in terms):
            raise BadInputError(
                "image terms (img:...) name files on the server and are not accepted over HTTP",
                cli_hint="upload the image instead (POST it as the request body), or use id:N for an indexed image",
                web_hint="drop the image on the page or choose it with the image button",
            )
        if upload is not None:
            terms.append(Term.image(self._decoded(upload)))
        if not terms:
            raise BadInputError("empty query: give q (text, e.g. q=a red car, or id:N) or upload an image")
        return Query(tuple(terms))

    def _decoded(self, data: bytes):
        if len(data) > self.config.max_upload_bytes:
            raise TooLargeError(
                f"the upload is {len(data):,} bytes, over the limit of "
                f"{self.config.max_upload_bytes:,}; send a smaller image"
            )
        if not data:
            raise BadInputError("the upload is empty: send the image file as the request body")
        with self._decoding:
            try:
                return imgs.decode_image(
                    data, min_side=self.collection.query_encoder.image_size, max_pixels=self.config.max_upload_pixels
                ).image
            except imgs.ImageSkipped as exc:
                raise BadInputError(f"the upload is not a usable image: {exc}") from None

    def _row(self, image_id: int):
        row = self.collection.row(image_id) if self._known(image_id) else None
        if row is None:
            raise self._no_image(image_id)
        return row

    def _known(self, image_id: int) -> bool:
        """Whether the id can name an image at all (the store is asked only then)."""
        return 0 < image_id <= MAX_ID and self.collection.exists

    @staticmethod
    def _no_image(image_id: int) -> NotFoundError:
        return NotFoundError(f"no image with id {image_id}; ids come from search results")

    @staticmethod
    def _changed(row) -> NotFoundError:
        return NotFoundError(
            f"image {row.id}'s file {row.path} has changed or gone since it was indexed; "
            "run `imgsearch index` on its folder to update the collection"
        )

    @classmethod
    def _indexed_bytes(cls, row) -> bytes:
        """The file's bytes, only if they are still exactly what was indexed: a file replaced since (or a
        link re-pointed at something else) is never served."""
        changed = cls._changed(row)
        try:
            st = os.stat(row.path)
            if not stat.S_ISREG(st.st_mode) or st.st_size != row.size:
                raise changed
            with open(row.path, "rb") as fh:
                data = fh.read(row.size + 1)
        except OSError:
            raise changed from None
        if imgs.bytes_hash(data) != row.content_hash:
            raise changed
        return data


def _index_flag(config: ServeConfig) -> str:
    return f" --collection {config.index}" if config.index else ""
