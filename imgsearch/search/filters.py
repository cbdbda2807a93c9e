"""Filters on image metadata (folder, date, size, format, orientation), evaluated over in-memory columns.

The columns are read from the store once per change of the collection and kept as numpy arrays, so a filter
over 200k images costs well under a millisecond (a SQL scan per query cost tens). ``ImageColumns.select``
returns the ids that pass; the index then searches only those (see ``index.VectorIndex.search``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import cast

import numpy as np

from ..errors import BadInputError
from ..records import FORMATS, VIDEO_FORMATS, format_name

ORIENTATIONS = ("landscape", "portrait", "square")
KINDS = ("image", "video")
_DATE_FORMS = ("%Y", "%Y-%m", "%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S")


def parse_date(text: str | float | dt.date | None, field: str = "date") -> float | None:
    """Seconds since the epoch at the start of a date given as YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DD HH:MM[:SS]
    (local time, like EXIF dates and file times), a datetime/date, or already a number (``"@1700000000"``
    as text: seconds since the epoch, as GNU date writes them)."""
    if text is None:
        return None
    if isinstance(text, (int, float)) or (isinstance(text, str) and text.startswith("@")):
        return _seconds(text, field)
    if isinstance(text, dt.datetime):
        return text.timestamp()
    if isinstance(text, dt.date):
        return dt.datetime(text.year, text.month, text.day).timestamp()
    for form in _DATE_FORMS:
        try:
            return dt.datetime.strptime(text.strip(), form).timestamp()
        except ValueError:
            continue
    raise _bad(
        field, f"cannot read {text!r} as a date; write YYYY, YYYY-MM, YYYY-MM-DD or 'YYYY-MM-DD HH:MM' (local time)"
    )


def _seconds(value: str | float, field: str) -> float:
    """Seconds since the epoch, given as a number or "@SECONDS": finite, and a date a calendar holds."""
    try:
        seconds = float(value[1:] if isinstance(value, str) else value)
        dt.datetime.fromtimestamp(seconds)  # NaN, inf and 1e400 (inf) fail here too, as do years past 9999
    except (ValueError, OverflowError, OSError):
        raise _bad(
            field,
            f"{value!r} is not a time: give @SECONDS since the epoch (a finite number between years 1 and 9999) "
            "or a date",
        ) from None
    return seconds


_OPTIONS = {"formats": "format", "kind": "type"}  # a filter's command-line option, where it is not the field's name


def _bad(field: str, text: str) -> BadInputError:
    """A filter's error, naming the filter as Python does (``after: ...``) and as the command line does
    (``--after: ...``)."""
    error = BadInputError(f"{field}: {text}")
    if field != "date":
        error.cli_text = f"--{_OPTIONS.get(field, field).replace('_', '-')}: {text}"
    return error


def _folder(path: str | os.PathLike) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _split(values: str | Iterable[str]) -> tuple[str, ...]:
    items = values.split(",") if isinstance(values, str) else values
    return tuple(v.strip() for v in items if v and v.strip())


@dataclass(frozen=True)
class Filters:
    """Which images a search may return. Every condition set must hold; unset ones allow everything.

    ``after``/``before``: when the photo was taken (EXIF DateTimeOriginal, else the file's modification time);
    ``after`` includes its start, ``before`` excludes its start (``before="2024"`` ends on 31 Dec 2023).
    """

    folders: tuple[str, ...] = ()  # only images under one of these folders
    after: float | str | dt.date | None = None
    before: float | str | dt.date | None = None
    min_width: int | None = None  # pixels, upright (EXIF orientation applied)
    min_height: int | None = None
    formats: tuple[str, ...] | str = ()  # "jpeg", "png", ... (aliases such as "jpg" accepted; "jpg,png" too)
    orientation: str | None = None  # "landscape" (wider than tall), "portrait" or "square"
    kind: str | None = None  # "image" (photos only) or "video" (videos only)

    def __post_init__(self) -> None:
        put = object.__setattr__
        folders = (self.folders,) if isinstance(self.folders, (str, os.PathLike)) else self.folders
        put(self, "folders", tuple(_folder(f) for f in folders if str(f).strip()))  # names may hold commas
        put(self, "after", parse_date(self.after, "after"))
        put(self, "before", parse_date(self.before, "before"))
        put(self, "formats", tuple(sorted({self._format(f) for f in _split(self.formats)})))
        for name in ("min_width", "min_height"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < 1):
                raise _bad(name, f"must be a whole number of pixels >= 1, got {value}")
        if self.orientation is not None:
            put(self, "orientation", self.orientation.lower())
            if self.orientation not in ORIENTATIONS:
                raise _bad("orientation", f"unknown {self.orientation!r}; use {', '.join(ORIENTATIONS)}")
        if self.kind is not None:
            put(self, "kind", self.kind.lower())
            if self.kind not in KINDS:
                raise _bad("kind", f"unknown {self.kind!r}; use {' or '.join(KINDS)}")
        after, before = cast("float | None", self.after), cast("float | None", self.before)  # read above
        if after is not None and before is not None and after >= before:
            error = BadInputError("after must be earlier than before: no image can be taken in between")
            error.cli_text = "--after must be earlier than --before: no image can be taken in between"
            raise error

    @staticmethod
    def _format(name: str) -> str:
        found = format_name(name)
        if found is None:
            raise _bad("formats", f"unknown format {name!r}; use some of {', '.join(FORMATS)} (or jpg, tif, heic)")
        return found

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) not in (None, ()) for f in fields(self))

    def to_params(self) -> dict[str, object]:
        """The filters as the query parameters of the server's ``/api/search`` (``server/app._filters`` reads them
        into ``Filters`` again): folders absolute, dates as ``@seconds`` (already read here), formats joined."""

        def seconds(value) -> str | None:
            return None if value is None else f"@{value!r}"

        return {
            "in": list(self.folders),
            "after": seconds(self.after),
            "before": seconds(self.before),
            "min_width": self.min_width,
            "min_height": self.min_height,
            "format": ",".join(self.formats) or None,
            "orientation": self.orientation,
            "type": self.kind,
        }


@dataclass(frozen=True)
class ImageColumns:
    """The filterable fields of every image, one numpy array per field (the order of ``ids``)."""

    ids: np.ndarray  # int64
    width: np.ndarray  # int32, -1 unknown
    height: np.ndarray
    taken: np.ndarray  # float64 seconds: EXIF DateTimeOriginal, else mtime
    format_codes: np.ndarray  # uint8 index into format_names
    format_names: tuple[str | None, ...]  # None: a format not known (the file's extension says nothing either)
    folder_codes: np.ndarray  # int32 index into folders
    folders: tuple[str, ...]

    @classmethod
    def from_rows(cls, rows: Sequence[tuple]) -> ImageColumns:
        """rows: (id, path, width, height, taken, format) in id order; format None (not read yet) or "" (unknown)."""
        folder_index: dict[str, int] = {}
        format_index: dict[str | None, int] = {}
        n = len(rows)
        ids, width, height = np.empty(n, np.int64), np.empty(n, np.int32), np.empty(n, np.int32)
        taken, fmt, folder = np.empty(n, np.float64), np.empty(n, np.uint8), np.empty(n, np.int32)
        for i, (row_id, path, w, h, when, stored) in enumerate(rows):
            ids[i], width[i], height[i], taken[i] = row_id, w or -1, h or -1, when
            name = stored or format_name(os.path.splitext(path)[1])  # not read yet, or unreadable: the extension
            fmt[i] = format_index.setdefault(name, len(format_index))
            folder[i] = folder_index.setdefault(os.path.dirname(path), len(folder_index))
        return cls(ids, width, height, taken, fmt, tuple(format_index), folder, tuple(folder_index))

    def select(self, filters: Filters) -> np.ndarray:
        """Ids (sorted, as the rows were) of the images that pass every condition."""
        return self.ids[self._passing(filters)]

    def newest_first(self, filters: Filters) -> np.ndarray:
        """Ids of the images that pass, most recently taken first (ties: higher id first)."""
        keep = np.flatnonzero(self._passing(filters))
        order = np.lexsort((-self.ids[keep], -self.taken[keep]))
        return self.ids[keep[order]]

    def folders_without_images(self, wanted: Sequence[str]) -> list[str]:
        """Those of ``wanted`` under which no image of the collection lies."""
        return [f for f in wanted if not any(_under(d, (f,)) for d in self.folders)]

    def describe_folders(self, most: int = 3) -> str:
        """The outermost folders holding the collection's images, for a message: "/a, /b and 4 more"."""
        outer: list[str] = []
        for folder in sorted(self.folders, key=lambda d: d.split(os.sep)):  # a folder's subfolders follow it
            if not (outer and _under(folder, (outer[-1],))):
                outer.append(folder)
        outer = outer or ["(none)"]
        more = f" and {len(outer) - most} more" if len(outer) > most else ""
        return ", ".join(outer[:most]) + more

    def _passing(self, filters: Filters) -> np.ndarray:
        keep = np.ones(len(self.ids), bool)
        if filters.folders:
            keep &= _in_codes(self.folder_codes, [_under(f, filters.folders) for f in self.folders])
        if filters.after is not None:
            keep &= self.taken >= filters.after
        if filters.before is not None:
            keep &= self.taken < filters.before
        if filters.min_width is not None:
            keep &= self.width >= filters.min_width
        if filters.min_height is not None:
            keep &= self.height >= filters.min_height
        if filters.formats:
            keep &= _in_codes(self.format_codes, [n in filters.formats for n in self.format_names])
        if filters.orientation is not None:
            keep &= _orientation(self.width, self.height, filters.orientation)
        if filters.kind is not None:
            videos = _in_codes(self.format_codes, [n in VIDEO_FORMATS for n in self.format_names])
            keep &= videos if filters.kind == "video" else ~videos
        return keep


def _in_codes(codes: np.ndarray, wanted: list[bool]) -> np.ndarray:
    """codes[i] is one of the wanted codes: a comparison per code when few are (~20x faster than a gather)."""
    chosen = np.flatnonzero(wanted)
    if len(chosen) > 8:
        return np.array(wanted, bool)[codes]
    keep = np.zeros(len(codes), bool)
    for code in chosen:
        keep |= codes == code
    return keep


def _under(folder: str, roots: tuple[str, ...]) -> bool:
    return any(folder == r or folder.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _orientation(width: np.ndarray, height: np.ndarray, which: str) -> np.ndarray:
    compare = {"landscape": np.greater, "portrait": np.less, "square": np.equal}[which]
    return (width > 0) & (height > 0) & compare(width, height)
