"""Finding and decoding image files.

Pure Pillow: nothing here imports torch. ``load_image`` either returns an RGB
image or raises ``ImageSkipped`` whose text is the reason stored for the user.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import IMAGE_EXTENSIONS

_HASH_CHUNK = 1 << 20
# EXIF orientations that swap width and height.
_TRANSPOSED = {5, 6, 7, 8}


class ImageSkipped(Exception):
    """A file that cannot be indexed; str(exc) is the reason shown to the user."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute, resolved
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanProblem:
    path: str
    reason: str


@cache
def register_optional_formats() -> tuple[str, ...]:
    """Enable HEIC/AVIF where a maintained Pillow plugin is installed; returns what was enabled."""
    enabled = []
    try:
        import pillow_heif  # type: ignore[import-not-found]

        pillow_heif.register_heif_opener()
        enabled.append("heic")
    except ImportError:
        pass
    if ".avif" in Image.registered_extensions():
        enabled.append("avif")
    return tuple(enabled)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan(root: str | os.PathLike) -> Iterator[FileEntry | ScanProblem]:
    """Every file with an image extension under root (recursively, hidden folders skipped)."""
    root = Path(root).resolve()
    for dirpath, dirnames, filenames in os.walk(root, onerror=None, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if is_image_name(name) and not name.startswith("."):
                yield _stat_entry(os.path.join(dirpath, name))


def _stat_entry(path: str) -> FileEntry | ScanProblem:
    try:
        st = os.stat(path)
    except OSError as exc:
        return ScanProblem(path, f"unreadable: {exc.strerror or exc}")
    return FileEntry(path, st.st_size, st.st_mtime_ns)


def file_hash(path: str) -> str:
    """Content hash (BLAKE2b-128) used to recognise moved, renamed and duplicate files."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bytes_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class ImageDetails:
    width: int  # original size, upright
    height: int
    content_hash: str


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # RGB, upright, possibly downscaled (never below min_side)
    details: ImageDetails


def load_image(path: str, min_side: int = 0, max_pixels: int = 128_000_000) -> LoadedImage:
    """Decode path as an upright RGB image, shrinking JPEGs in the decoder where it is free.

    ``min_side``: the decoded image keeps both sides at least this long (the model input size).
    Raises ImageSkipped with a reason for anything that is not a readable, sane image.
    """
    register_optional_formats()
    try:
        return _decode(path, min_side, max_pixels)
    except ImageSkipped:
        raise
    except UnidentifiedImageError:
        raise ImageSkipped("not an image Pillow can read (unknown or unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageSkipped(f"decompression bomb: {exc}") from None
    except PermissionError as exc:
        raise ImageSkipped(f"unreadable: {exc.strerror}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageSkipped(f"corrupt or truncated image: {exc}") from None


def _decode(path: str, min_side: int, max_pixels: int) -> LoadedImage:
    with open(path, "rb") as fh:  # one read serves both the hash and the decoder
        data = fh.read()
    if not data:
        raise ImageSkipped("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageSkipped(
                    f"decompression bomb: {width}x{height} = {width * height:,} pixels "
                    f"exceeds the limit of {max_pixels:,}"
                )
            orientation = img.getexif().get(0x0112, 1)
            if orientation in _TRANSPOSED:
                width, height = height, width
            if min_side and img.format == "JPEG":
                img.draft("RGB", (min_side, min_side))
            img.load()
            upright = ImageOps.exif_transpose(img)
            rgb = _to_rgb(upright)
    return LoadedImage(rgb, ImageDetails(width, height, bytes_hash(data)))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB; transparency is composited on white, not black."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white.
        wide = np.asarray(img, dtype=np.float64)
        peak = max(float(wide.max()), 255.0)
        img = Image.fromarray((wide * (255.0 / peak)).astype(np.uint8), "L")
    return img.convert("RGB")
