"""Finding and decoding image files.

Pure Pillow: nothing here imports torch. ``load_image`` either returns an RGB
image or raises ``ImageSkipped`` whose text is the reason stored for the user.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import hashlib
import io
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import IMAGE_EXTENSIONS, INDEXED_EXTENSIONS, RAW_EXTENSIONS, RENDERED_EXTENSIONS, VIDEO_EXTENSIONS
from .records import FileEntry, ImageDetails, ScanProblem, format_name

_HASH_CHUNK = 1 << 20
# EXIF orientations that swap width and height.
_TRANSPOSED = {5, 6, 7, 8}
# The longest side may be at most this many times the shortest. A model's preprocessing scales the short side up to
# its input size before cropping, so a sliver would become a giant (an 86-byte 1x3000 PNG: 4 s and 610 MB at 224 px;
# a 661-byte 1x300000 one: 1.95 GB): with this bound the resized image holds at most 50 x side^2 pixels (2.5 MP
# at 224 px). Panoramas (2:1 to 10:1) and long screenshots (1:20) pass.
MAX_ASPECT = 50


class ImageSkipped(Exception):
    """A file that cannot be indexed; str(exc) is the reason shown to the user."""


_registering = threading.Lock()


def register_optional_formats() -> tuple[str, ...]:
    """Enable HEIC/AVIF where a maintained Pillow plugin is installed; returns what was enabled. Decode threads ask
    at once: one registers, the others wait for its answer (two imports of a module that fails can hand the second
    one the half-made module)."""
    with _registering:
        return _register_optional_formats()


@cache
def _register_optional_formats() -> tuple[str, ...]:
    enabled = []
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        enabled.append("heic")
    except ImportError:
        pass
    if ".avif" in Image.registered_extensions():
        enabled.append("avif")
    return tuple(enabled)


HEIF_MISSING = (
    "a HEIC/HEIF photo, which needs pillow-heif to be read: install it with `pip install pillow-heif`; "
    "the next index run retries it"
)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_video_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def is_indexed_name(name: str) -> bool:
    """A photo's or a video's name: what an index run reads."""
    return _extension(name) in INDEXED_EXTENSIONS


def is_raw_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in RAW_EXTENSIONS


def _is_heif(data: bytes) -> bool:
    """An ISO-BMFF file of a HEIF brand (an iPhone's HEIC, an AVIF...), by its ``ftyp`` box."""
    return data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim")


def retry_now(reason: str) -> bool:
    """Whether a file skipped for want of a package may be read now that the package is here."""
    if reason == HEIF_MISSING:
        return "heic" in register_optional_formats()
    from . import raw as camera_raw

    return reason == camera_raw.MISSING and camera_raw.available()


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def looks_like_image_path(text: str) -> bool:
    """Whether a query string names an image file (existing or not) rather than being text to search for:
    an image extension, and a path separator, no spaces, or a file of that name."""
    text = text.strip()
    if is_url(text):
        return True
    if not is_image_name(text):
        return False
    return (
        "/" in text or os.sep in text or not any(c.isspace() for c in text) or os.path.lexists(os.path.expanduser(text))
    )


def load_query_image(source: str | os.PathLike, min_side: int = 0, max_pixels: int = 128_000_000) -> LoadedImage:
    """A query image from a file path or an http(s) URL; ImageSkipped says what was wrong."""
    if isinstance(source, str) and is_url(source):
        from .fetch import fetch

        return decode_image(fetch(source), min_side, max_pixels, raw=is_raw_name(source.split("?")[0]))
    path = Path(source).expanduser()
    if not os.path.lexists(path):
        raise ImageSkipped(f"file not found: {source}")
    return load_image(str(path), min_side, max_pixels)


def scan(root: str | os.PathLike, excludes: Sequence[str] = ()) -> Iterator[FileEntry | ScanProblem]:
    """Every file with an image or video extension under root (recursively; hidden folders and files skipped).

    ``excludes``: glob patterns matched against each name and each path relative to root.
    Symlinked folders are followed; a folder or file reached twice (a link cycle, a link to
    something already walked) is walked once. A file that cannot be stat'ed, or a folder that
    cannot be listed, comes back as a ScanProblem. Folders come top-down, each one's files sorted by name before its
    sub-folders, also sorted (``os.walk``'s order). A no-change run of a million files is mostly this loop, so it
    lists each folder once with ``os.scandir`` and reads each name's extension once (tests/test_images.py holds
    the plain ``os.walk`` version it is checked against).
    """
    walk = Walk(root, excludes)
    yield from walk.folders([walk.top])


@dataclass
class Walk:
    """``scan``'s state: what it has seen so far. ``folders`` walks some folders under root with it; to walk
    root's sub-folders in separate processes (``parallel_plan``), each walks its share with a Walk of its own and
    says what it saw (``seen_folders``, ``shared_files``), so that a folder or file reached from two shares is
    found. A file with one name whose path holds no link can only be reached once; the others, hard links and
    files reached through a link, are in ``shared_files``."""

    root: str | os.PathLike
    excludes: Sequence[str] = ()
    seen_folders: set[tuple[int, int]] = field(default_factory=set)
    seen_files: set[tuple[int, int]] = field(default_factory=set)
    shared_files: list[tuple[int, int]] = field(default_factory=list)
    subfolders: list[tuple[str, str]] = field(default_factory=list)  # root's, as ``folders(..., descend=False)`` kept

    def __post_init__(self) -> None:
        self.path = str(Path(self.root).resolve())
        self.inside = os.path.join(self.path, "")
        self.top = (self.path, ".")

    def folders(self, start: list[tuple[str, str]], descend: bool = True) -> Iterator[FileEntry | ScanProblem]:
        """The files of these (folder, path relative to root) and, with ``descend``, of their sub-folders, in
        ``scan``'s order; without it, the sub-folders that would be walked are kept in ``subfolders``."""
        folders = list(reversed(start))
        while folders:
            folder, rel = folders.pop()
            linked = False
            if folder != self.path:
                real = os.path.realpath(folder)
                linked = real != folder
                if linked and (real + os.sep).startswith(self.inside):  # a link to a folder walked under its own path
                    continue
            if not _first_visit(folder, self.seen_folders):
                continue
            try:
                names, subfolders = _listing(folder)
            except OSError as exc:
                yield ScanProblem(folder, f"unreadable folder: {exc.strerror or exc}", is_folder=True)
                continue
            excluded = _excluded_in(_prefix(rel), self.excludes)
            yield from _folder_files(folder, names, excluded, self, linked)
            kept = sorted(d for d in subfolders if not d.startswith(".") and not excluded(d))
            below = [(os.path.join(folder, d), d if rel == "." else os.path.join(rel, d)) for d in kept]
            if descend:
                folders.extend(reversed(below))
            else:
                self.subfolders.extend(below)


def _listing(folder: str) -> tuple[dict[str, os.DirEntry], list[str]]:
    """A folder's other entries by name, and its sub-folders' names (links to folders included, as ``os.walk``
    with ``followlinks`` has them); an entry whose type cannot be read is not a folder."""
    names: dict[str, os.DirEntry] = {}
    subfolders = []
    with os.scandir(folder) as listing:
        for entry in listing:
            try:
                is_folder = entry.is_dir()
            except OSError:
                is_folder = False
            if is_folder:
                subfolders.append(entry.name)
            else:
                names[entry.name] = entry
    return names, subfolders


def _excluded_in(prefix: str, patterns: Sequence[str]):
    """Whether a name in the folder at ``prefix`` (``_prefix``) is excluded, with the folder's share of the work
    (the compiled globs, its prefix) done once for all its names: ``is_excluded``'s rule."""
    matches = _exclude_matcher(tuple(patterns))
    if matches is None:
        return lambda name: False
    case = os.path.normcase
    return lambda name: matches(case(name)) is not None or matches(case(prefix + name)) is not None


def _folder_files(
    folder: str, entries: dict[str, os.DirEntry], excluded, walk: Walk, linked: bool
) -> Iterator[FileEntry | ScanProblem]:
    """The wanted files of one listed folder, by name, as ``scan`` yields them; ``linked``: the folder's path holds
    a link."""
    wanted = []
    for name in sorted(entries):
        ext = _extension(name)  # is_indexed_name's test, the extension kept for the RAW check below
        if ext in INDEXED_EXTENSIONS and not name.startswith(".") and not excluded(name):
            wanted.append((name, ext))
    rendered = _rendered_by_stem([name for name, _ in wanted]) if any(e in RAW_EXTENSIONS for _, e in wanted) else {}
    folder_utf8 = _utf8(folder)
    for name, ext in wanted:
        entry = entries[name]
        twin = rendered.get(name[: -len(ext)].lower()) if ext in RAW_EXTENSIONS else None
        if twin is not None:
            yield ScanProblem(entry.path, RAW_TWIN.format(twin=twin))
        elif not (folder_utf8 and (name.isascii() or _utf8(name))):
            yield ScanProblem(
                _printable(entry.path),
                "its name is not valid UTF-8 (shown with \\x escapes), so "
                "it cannot be stored; rename it, e.g. `convmv -f latin1 -t utf8 --notest FILE`",
            )
        else:
            found = _stat_entry(entry, walk, linked)
            if found is not None:
                yield found


def _extension(name: str) -> str:
    """``os.path.splitext(name)[1].lower()`` for a name (no folder part), without its general path handling."""
    dot = name.rfind(".")
    if dot <= 0 or (name[0] == "." and not name[:dot].strip(".")):  # ".jpg", "..jpg": no extension
        return ""
    return name[dot:].lower()


# Why a RAW file with the camera's own JPEG (or HEIC) beside it is left out: the same photo twice would crowd
# every result, and the rendered file is what the photographer kept (Lightroom and Immich stack the pair likewise).
RAW_TWIN = "left out: {twin} beside it is the same photo as the camera rendered it, and is indexed instead"


def _rendered_by_stem(names: list[str]) -> dict[str, str]:
    """Rendered photos (JPEG, HEIC) of a folder by their lower-case name without extension."""
    stems = ((os.path.splitext(n), n) for n in names)
    return {stem.lower(): n for (stem, ext), n in stems if ext.lower() in RENDERED_EXTENSIONS}


def _utf8(path: str) -> bool:
    """False for names with bytes that are not UTF-8 (Python holds them as lone surrogates)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(path: str) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_excluded(name: str, rel_folder: str, patterns: Sequence[str]) -> bool:
    """Whether a name in ``rel_folder`` (relative to the scanned folder; "." for itself) matches an exclude glob, by
    its name or its relative path (the scan prunes excluded folders; the watcher asks it of each part of a path).
    The globs mean what ``fnmatch.fnmatch`` says; they are compiled once into one expression (a scan asks this of
    every file: at 16 fnmatch calls a name it took half of a no-change run)."""
    return _excluded_in(_prefix(rel_folder), patterns)(name)


def _prefix(rel_folder: str) -> str:
    """A folder's path relative to the scanned folder as exclude globs see it: "/" between names and after the last;
    "" for the scanned folder itself ("." to ``os.walk``)."""
    return "" if rel_folder == "." else rel_folder.replace(os.sep, "/") + "/"


@cache
def _exclude_matcher(patterns: tuple[str, ...]):
    """One compiled expression matching what any of the globs matches (``fnmatch.translate`` of each), or None."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(os.path.normcase(p))})" for p in patterns)).match


def _first_visit(folder: str, seen: set[tuple[int, int]]) -> bool:
    try:
        st = os.stat(folder)
    except OSError:
        return True
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True


def _stat_entry(entry: os.DirEntry, walk: Walk, linked: bool) -> FileEntry | ScanProblem | None:
    """The file's entry; None when the same file is listed under another path: a link to a file inside the folder
    is left to its target, indexed under its own path whatever the names' order (otherwise the link's name could
    win and the real file's row be removed), and a hard link is listed once."""
    path = entry.path
    try:
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            linked = True
            st = os.stat(path)  # a dangling link is unreadable, and said so
            if (os.path.realpath(path) + os.sep).startswith(walk.inside):
                return None
    except OSError as exc:
        return ScanProblem(path, f"unreadable: {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):  # reading a FIFO waits for a writer that may never come
        return ScanProblem(path, "not a regular file (a FIFO, socket or device with an image's name); left out")
    key = (st.st_dev, st.st_ino)
    if key in walk.seen_files:
        return None
    walk.seen_files.add(key)
    if linked or st.st_nlink > 1:
        walk.shared_files.append(key)
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


def read_details(path: str) -> tuple[str | None, float | None]:
    """(format, taken_at) from a file's header, without decoding its pixels; (None, None) if unreadable."""
    register_optional_formats()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                return _format(img), exif_taken_at(img)
    except Exception:  # noqa: BLE001 - any failure only means "unknown"; the file was indexed before
        return None, None


def _format(img: Image.Image) -> str | None:
    return format_name(img.format)


def exif_taken_at(img: Image.Image) -> float | None:
    """EXIF DateTimeOriginal as epoch seconds: with its OffsetTimeOriginal when present, else local time."""
    try:
        exif = img.getexif().get_ifd(0x8769)
        stamp, offset = exif.get(0x9003), exif.get(0x9011)
        if not stamp:
            return None
        when = datetime.datetime.strptime(str(stamp).strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
        if offset:
            when = datetime.datetime.strptime(f"{when:%Y-%m-%d %H:%M:%S}{str(offset).strip()}", "%Y-%m-%d %H:%M:%S%z")
        return when.timestamp()
    except (ValueError, TypeError, OSError, SyntaxError):  # "0000:00:00 00:00:00", garbage, a broken IFD
        return None


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # RGB, upright, possibly downscaled (never below min_side)
    details: ImageDetails


def load_image(path: str, min_side: int = 0, max_pixels: int = 128_000_000) -> LoadedImage:
    """Decode path as an upright RGB image, shrinking JPEGs in the decoder where it is free.

    ``min_side``: the decoded image keeps both sides at least this long (the model input size).
    Raises ImageSkipped with a reason for anything that is not a readable, sane image.
    """
    return decode_image(read_file(path), min_side, max_pixels, raw=is_raw_name(path))


def load_reference_image(path: str, min_side: int = 0, max_pixels: int = 128_000_000) -> LoadedImage:
    """Decode exactly as the CLIP_benchmark protocol does: full size, ``Image.convert("RGB")``, no EXIF rotation
    (``min_side`` is ignored). For evaluation, so that published numbers can be reproduced."""
    return decode_image(read_file(path), 0, max_pixels, reference=True, raw=is_raw_name(path))


def loader(decode: str = "fast"):
    """The Pillow decoder an indexing run uses: ``load_reference_image`` for "reference", else ``load_image``."""
    return load_reference_image if decode == "reference" else load_image


def skip_reason(exc: Exception) -> str:
    """Why an indexing run skips a file that raised ``exc``: an ImageSkipped's own reason; anything else (a decoder
    bug) named as such, since it must cost that one file, not the run."""
    return str(exc) if isinstance(exc, ImageSkipped) else f"could not decode: {type(exc).__name__}: {exc}"


def prepared(path: str, load, transform, min_side: int, max_pixels: int):
    """(transform(image), details, None) for one file to embed, or (None, None, reason) when it cannot be read:
    one file's failure, even a decoder bug, costs that file only."""
    try:
        loaded = load(path, min_side, max_pixels)
        return transform(loaded.image), loaded.details, None
    except Exception as exc:  # noqa: BLE001 - see above
        return None, None, skip_reason(exc)


def decode_image(
    data: bytes, min_side: int = 0, max_pixels: int = 128_000_000, reference: bool = False, raw: bool = False
) -> LoadedImage:
    """``load_image`` (or, with ``reference``, ``load_reference_image``) for bytes already in memory. ``raw``: the
    bytes are a camera RAW file's (known by its name: many are TIFFs to Pillow, which would read a thumbnail)."""
    if raw:
        from . import raw as camera_raw

        return LoadedImage(*camera_raw.decode(data, min_side, max_pixels))
    register_optional_formats()
    try:
        return _decode_reference(data, max_pixels) if reference else _decode(data, min_side, max_pixels)
    except ImageSkipped:
        raise
    except UnidentifiedImageError:
        if _is_heif(data) and "heic" not in register_optional_formats():
            raise ImageSkipped(HEIF_MISSING) from None
        raise ImageSkipped("not an image Pillow can read (unknown or unsupported format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageSkipped(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageSkipped(f"corrupt or truncated image: {exc}") from None


def read_file(path: str) -> bytes:
    """The whole file: one read serves both the hash and the decoder."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:  # gone since the scan, a dangling link, no permission, an I/O error
        raise ImageSkipped(f"unreadable: {exc.strerror or exc}") from None
    if not data:
        raise ImageSkipped("empty file (0 bytes)")
    return data


@contextlib.contextmanager
def _opened(data: bytes, max_pixels: int) -> Iterator[Image.Image]:
    """The image, opened (not decoded), once its size has passed the decompression-bomb check."""
    with warnings.catch_warnings():
        # max_pixels replaces Pillow's warning limit (89M), which would refuse e.g. a 96M panorama;
        # Pillow still raises DecompressionBombError past twice that.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as img:
            guard_size(img.size[0], img.size[1], max_pixels)
            yield img


def guard_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse a decompression bomb, and proportions no model input can take, before any pixel is decoded."""
    if width * height > max_pixels:
        raise ImageSkipped(
            f"decompression bomb: {width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}"
        )
    if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
        raise ImageSkipped(
            f"its proportions ({width}x{height}) are beyond {MAX_ASPECT}:1; scaled to a model's input it "
            f"would be {MAX_ASPECT}x too large to embed (crop it into pieces to index them)"
        )


def _decode_reference(data: bytes, max_pixels: int) -> LoadedImage:
    with _opened(data, max_pixels) as img:
        return LoadedImage(img.convert("RGB"), ImageDetails(img.width, img.height, bytes_hash(data), _format(img)))


def _decode(data: bytes, min_side: int, max_pixels: int) -> LoadedImage:
    with _opened(data, max_pixels) as img:
        details = _details(img, data)
        if min_side and img.format == "JPEG":
            img.draft("RGB", (min_side, min_side))
        img.load()
        # exif_transpose copies an image it leaves as it is: most photos (measured 0.4 ms of 8.5 per COCO photo)
        upright = ImageOps.exif_transpose(img) if orientation(img) != 1 else img
        rgb = _to_rgb(upright)
    return LoadedImage(rgb, details)


def orientation(img: Image.Image) -> int:
    """An opened image's EXIF orientation, 1-8; 1 (as stored) without one or for a value outside 1-8."""
    value = img.getexif().get(0x0112, 1)
    return value if value in range(1, 9) else 1


def _details(img: Image.Image, data: bytes) -> ImageDetails:
    """An opened image's details from its header: upright size, content hash, format, EXIF date."""
    width, height = img.size
    if orientation(img) in _TRANSPOSED:
        width, height = height, width
    return ImageDetails(width, height, bytes_hash(data), _format(img), exif_taken_at(img))


def jpeg_header(data: bytes, max_pixels: int) -> tuple[ImageDetails, int] | None:
    """(details, EXIF orientation 1-8) of a JPEG a tensor decoder can take (RGB or greyscale), from its header
    alone; None for anything else (other formats, CMYK, what Pillow cannot open), which the Pillow path decodes and
    judges. A decompression bomb raises ImageSkipped here, before any pixel is decoded."""
    try:
        with _opened(data, max_pixels) as img:
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None
            return _details(img, data), orientation(img)
    except ImageSkipped:
        raise
    except Exception:  # noqa: BLE001 - the Pillow path will say what is wrong with it
        return None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB; transparency (an alpha band or a transparent colour) is composited on white."""
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        img = _wide_to_grey(img)
    return img.convert("RGB")


def _wide_to_grey(img: Image.Image) -> Image.Image:
    """16/32-bit or float greyscale to 8 bits by the nominal range of its samples, not by its own
    brightest pixel, so mid-grey stays mid-grey (Pillow's convert would clip it all to white)."""
    wide = np.asarray(img, dtype=np.float64)
    peak = float(wide.max()) if wide.size else 0.0
    if img.mode == "F":
        full = max(1.0, peak)  # float samples are conventionally 0..1
    elif img.mode.startswith("I;16") or peak > 255:
        full = max(65535.0, peak)  # 16-bit samples; a 32-bit image beyond that scales by its peak
    else:
        full = 255.0  # an "I" image holding 8-bit values
    return Image.fromarray(np.clip(wide * (255.0 / full), 0, 255).round().astype(np.uint8), "L")
