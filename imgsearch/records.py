"""The records the layers pass each other: files found on disk, what is stored about them, one batch of changes
to the store, one batch of embedded files; and the stored names of image formats. Plain data: this module imports
nothing from the package, so planning (pure functions), storage, decoding and search can all share it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .config import RAW_EXTENSIONS

# Stored format names (Pillow's, lower-case) and what users may call them.
VIDEO_FORMATS = ("mp4", "mov", "mkv", "webm", "avi")  # a video's container, by its extension
FORMATS: tuple[str, ...] = ("jpeg", "png", "webp", "gif", "bmp", "tiff", "heif", "avif", "raw") + VIDEO_FORMATS
FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "mpo": "jpeg", "tif": "tiff", "heic": "heif", "m4v": "mp4"}
FORMAT_ALIASES |= {ext[1:]: "raw" for ext in RAW_EXTENSIONS}


def format_name(name: str | None) -> str | None:
    """A user's or Pillow's format name ("JPG", "MPO", ".tif") as stored ("jpeg", "tiff"); None if unknown."""
    if not name:
        return None
    key = name.lower().lstrip(".")
    key = FORMAT_ALIASES.get(key, key)
    return key if key in FORMATS else None


class FileEntry(NamedTuple):  # a NamedTuple: a scan makes one for every file, a million in a no-change run
    path: str  # absolute, resolved
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanProblem:
    path: str
    reason: str
    is_folder: bool = False  # a folder that could not be listed: what is under it is unknown, not gone


@dataclass(frozen=True)
class ImageDetails:
    width: int  # original size, upright
    height: int
    content_hash: str
    format: str | None = None  # Pillow's format, as stored: "jpeg", "png"...
    taken_at: float | None = None  # EXIF DateTimeOriginal (epoch seconds), None without one


@dataclass
class EmbeddedBatch:
    """One batch of files embedded: positions into the caller's path list, vectors, and failures."""

    positions: list[int]
    details: list[ImageDetails]  # original size and content hash per embedded file
    vectors: np.ndarray  # (len(positions), dim) float32, normalised
    failures: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)


class ImageState(NamedTuple):  # a NamedTuple: a million of these are built at the start of every run
    id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str


class ImageRow(NamedTuple):
    """An image's metadata, as search results show it."""

    id: int
    path: str
    size: int
    mtime_ns: int
    width: int | None
    height: int | None
    format: str | None
    taken_at: float | None
    content_hash: str
    duration: float | None = None  # seconds, for a video; None for a photo


@dataclass(frozen=True)
class NewImage:
    path: str
    size: int
    mtime_ns: int
    content_hash: str
    width: int | None
    height: int | None
    vector: np.ndarray
    format: str | None = None
    taken_at: float | None = None
    duration: float | None = None  # a video's (its vector is then the mean of its frames')
    frames: Frames | None = None  # a video's sampled frames


class Frames(NamedTuple):
    """A video's sampled frames: their times (seconds from the start) and vectors, in order."""

    times: np.ndarray  # (n,) float64
    vectors: np.ndarray  # (n, dim) float32, normalised


class FrameDelta(NamedTuple):
    """What one committed batch did to the frames table, for the writer's frames index to mirror."""

    generation: int
    added_ids: np.ndarray
    added_vectors: np.ndarray
    removed_ids: list[int]


@dataclass(frozen=True)
class Moved:
    id: int
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skip:
    path: str
    size: int | None
    mtime_ns: int | None
    reason: str


@dataclass
class Changes:
    """One atomic batch: rows to insert, rows to re-embed in place, renames, deletions, skips."""

    new: list[NewImage] = field(default_factory=list)
    replaced: dict[int, NewImage] = field(default_factory=dict)  # id -> new content
    moved: list[Moved] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    unskipped: list[str] = field(default_factory=list)  # paths to drop from the skipped list
    manifest: dict = field(default_factory=dict)  # meta keys written with the batch (model, dim)

    def __bool__(self) -> bool:
        return any((self.new, self.replaced, self.moved, self.deleted, self.skipped, self.unskipped, self.manifest))

    @property
    def touches_images(self) -> bool:
        """Whether the image set or its vectors change (skips and manifest alone do not)."""
        return any((self.new, self.replaced, self.moved, self.deleted))
