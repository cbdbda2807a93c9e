"""Thumbnails: made once per content hash and size, cached as JPEG files in the collection folder.

Keyed by content, a thumbnail stays valid through moves and renames and is shared by identical copies. The
image is decoded with the indexing path's guards (decompression bombs) and EXIF orientation applied.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from .. import images as imgs
from ..errors import BadInputError

SIZES = (128, 256, 512, 1024)  # a request is served at the next size up: a handful of files per image at most
QUALITY = 85


def size_for(asked: int) -> int:
    if not 1 <= asked <= SIZES[-1]:
        raise BadInputError(f"thumbnail size must be 1-{SIZES[-1]}, got {asked}")
    return next(s for s in SIZES if s >= asked)


class Cache:
    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, content_hash: str, size: int, at: float | None = None) -> Path:
        moment = "" if at is None else f"-t{round(at * 10)}"
        return self.folder / content_hash[:2] / f"{content_hash}-{size}{moment}.jpg"

    def get(self, row, asked: int, read: Callable[[], bytes]) -> Path | bytes:
        """The cached file for the image ``row`` (a store row: content_hash), made from ``read()`` (the file's
        verified bytes) when missing; the bytes themselves when the folder cannot be written."""
        size = size_for(asked)
        cached = self.path(row.content_hash, size)
        if cached.exists():
            return cached
        return self._kept(cached, make(read(), size, raw=imgs.is_raw_name(row.path)))

    def poster(self, row, asked: int, at: float) -> Path | bytes:
        """A video's frame ``at`` seconds in (to a tenth of a second), cached like a thumbnail; the caller has
        checked that the file is the one indexed."""
        if not (at >= 0 and (row.duration is None or at <= row.duration + 1)):
            raise BadInputError(f"t must be a time in the video, 0 to {row.duration or 0:.1f} seconds; got {at}")
        size, at = size_for(asked), round(at, 1)
        cached = self.path(row.content_hash, size, at)
        if cached.exists():
            return cached
        from .. import video

        try:
            picture = video.poster(row.path, at, size)
        except video.VideoSkipped as exc:
            raise BadInputError(f"cannot make a poster: {exc}") from None
        return self._kept(cached, _jpeg(picture))

    @staticmethod
    def _kept(cached: Path, data: bytes) -> Path | bytes:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f"{cached.name}.{os.getpid()}.{id(data)}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, cached)  # two requests making the same thumbnail both succeed
        except OSError:  # a read-only collection folder, a full disk: serve it uncached
            return data
        return cached


def make(data: bytes, size: int, raw: bool = False) -> bytes:
    """A JPEG at most size x size, upright, from an image file's bytes (``raw``: a camera RAW file's)."""
    try:
        img = imgs.decode_image(data, min_side=size, raw=raw).image  # upright RGB; JPEGs shrunk in the decoder
    except imgs.ImageSkipped as exc:
        raise BadInputError(f"cannot make a thumbnail: {exc}") from None
    img.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return _jpeg(img)


def _jpeg(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()
