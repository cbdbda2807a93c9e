"""Typed results returned by the API (and printed or serialised by the CLI)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path


class _AsDict:
    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass


@dataclass(frozen=True)
class Moment(_AsDict):
    """One sampled frame of a video a search matched: where it is, and how well it matched."""

    time: float  # seconds from the start
    score: float


@dataclass(frozen=True)
class ImageHit(_AsDict):
    id: int
    path: str
    score: float | None  # cosine similarity, -1..1, higher is better (None: listed by browse, not searched)
    width: int | None = None
    height: int | None = None
    size: int | None = None  # bytes
    taken_at: float | None = None  # epoch seconds: EXIF DateTimeOriginal, else the file's modification time
    format: str | None = None  # "jpeg", "png"... ; a video's container: "mp4", "mov", "mkv", "webm", "avi"
    duration: float | None = None  # seconds: set for a video, None for a photo
    # A video's best-matching moments, best first (its score is the first one's); () for a photo or when browsing.
    moments: tuple[Moment, ...] = ()

    def to_dict(self) -> dict:
        found = asdict(self)
        found["moments"] = list(found["moments"])  # as JSON gives it back
        return found

    @property
    def is_video(self) -> bool:
        return self.duration is not None

    @property
    def time(self) -> float | None:
        """Seconds into a video where it matches best; None for a photo."""
        return self.moments[0].time if self.moments else None

    @property
    def file(self) -> Path:
        """``path`` as a ``pathlib.Path``."""
        return Path(self.path)

    @property
    def taken(self) -> dt.datetime | None:
        """``taken_at`` as a local ``datetime`` (as the camera's clock wrote it, or the file's time)."""
        return None if self.taken_at is None else dt.datetime.fromtimestamp(self.taken_at)


@dataclass(frozen=True)
class TextHit(_AsDict):
    id: int
    text: str
    score: float
    source: str | None = None


@dataclass(frozen=True)
class SkippedFile(_AsDict):
    path: str
    reason: str


@dataclass
class IndexReport(_AsDict):
    """What one `index` run did."""

    folder: str
    scanned: int = 0  # files with an image extension found
    added: int = 0
    updated: int = 0  # changed on disk, re-embedded
    moved: int = 0  # renamed or moved: recognised by content, not re-embedded
    removed: int = 0  # gone from disk, removed from the collection
    unchanged: int = 0
    reused: int = 0  # of `added`: copies of content already indexed, whose stored vector was reused
    skipped: list[SkippedFile] = field(default_factory=list)  # newly skipped this run, with reasons
    still_skipped: int = 0  # skipped in an earlier run and unchanged since
    seconds: float = 0.0  # the whole run
    model_seconds: float = 0.0  # of it: loading the model (and, on a model's first run, exporting it once)
    embed_seconds: float = 0.0  # of it: embedding, from the model being ready to the last batch committed
    backfilled: int = 0  # rows from an older collection whose format and date were read (not re-embedded)
    backend: str = ""  # what ran the model this run, e.g. "torch bf16", "onnx fp32"; "" when nothing was embedded
    reembedded: int = 0  # unchanged files whose vectors an earlier imgsearch made wrongly, embedded again
    reembedded_why: str | None = None  # what was wrong with them
    notes: list[str] = field(default_factory=list)  # why a faster backend was not used, and similar

    @property
    def embedded(self) -> int:
        """Files that went through the model."""
        return self.added - self.reused + self.updated + self.reembedded


@dataclass(frozen=True)
class CollectionInfo(_AsDict):
    path: str
    model: str  # the collection's model; for an empty collection, the one its first run will use
    pretrained: str | None
    dim: int | None  # None until the first image or text is stored
    images: int
    texts: int
    skipped: int
    image_index: str  # "flat" (exact), "ivf" or "compact" (IVF-PQ, re-ranked)
    image_index_lists: int | None
    nprobe: int | None
    disk_bytes: int
    schema_version: int
    backend: str | None = None  # what ran the model in the last index run that embedded something
    query_backend: str = "torch"  # what encodes a query now: "onnx" (cached export, no torch import) or "torch"
    query_backend_reason: str | None = None  # why queries load torch, when they do
    pretrained_as: str | None = None  # the tag a checkpoint file is tied to
    recipe: dict | None = None  # how the vectors are made: the tag's preprocessing and activation (clip.models.Recipe)
    warnings: list[str] = field(default_factory=list)  # what makes answers less than right (stale vectors)
    indexing: dict | None = None  # a run in progress (storage.activity.Activity): folder, stage, done, total, ...
    videos: int = 0  # of ``images``, how many are videos
    frames: int = 0  # the videos' sampled frames, each searchable as a moment


@dataclass(frozen=True)
class DuplicateImage(_AsDict):
    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    similarity: float  # cosine to the group's first (best) image; 1.0 for the first
    exact_copy: bool  # the same bytes as the group's first image


@dataclass(frozen=True)
class DuplicateGroup(_AsDict):
    """Images that are the same picture: the best copy (most pixels, then largest file) first."""

    kind: str  # "exact" (identical files) or "near" (resized, re-encoded, edited copies, maybe exact ones too)
    images: tuple[DuplicateImage, ...]
