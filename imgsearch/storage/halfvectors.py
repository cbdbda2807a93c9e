"""Full vectors as float16, one row per id, in a file beside a compact index: what it re-ranks with.

Measured at 10M vectors (docs/scale.md), fetching a query's 200 candidates took 4.2 ms from such a file against
29 ms from SQLite, whose 25 GB no longer fit in RAM; float16 is half the bytes and keeps cosine to float32 above
0.9999. Row ``i`` holds the vector of id ``i`` (ids are the store's row ids: dense, growing), so a read is one
gather from a memory map. Only processes holding the writer lock write rows (``SyncedIndex`` decides which rows may be
trusted; see its ``_half_ok`` and ``_overlay``), and a stamp file says which saved index the rows are complete for.

Each row also has a checksum in ``<file>.sums`` (4 bytes a row), checked whenever the row is read: a row that does
not match (random bytes written over it: 64 of 80 result ids changed in 0.1, with an intact stamp) is left out, and
the caller reads it from the store instead. A whole-file checksum would cost seconds per open at 10M rows (10 GB);
a query reads 200 rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class HalfVectors:
    def __init__(self, path: Path, dim: int):
        self.path, self.dim = Path(path), dim
        self.stamp = self.path.with_name(self.path.name + ".generation")
        self.sums = self.path.with_name(self.path.name + ".sums")
        self._map: np.ndarray | None = None  # memory-mapped, or empty
        self._sums: np.ndarray | None = None
        self._weights = (np.arange(dim, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(1)) | np.uint64(1)
        self.mismatched = 0  # rows read that did not match their checksum (left out)

    @property
    def row_bytes(self) -> int:
        return self.dim * 2

    def write(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Rows for these ids (any order), growing the file as needed; one write per run of consecutive ids."""
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return
        order = np.argsort(ids, kind="stable")
        ids, rows = ids[order], np.asarray(vectors, np.float32)[order].astype(np.float16)
        breaks = np.flatnonzero(np.diff(ids) != 1) + 1
        sums = self._checksums(rows)
        fd, fs = (
            os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644),
            os.open(self.sums, os.O_WRONLY | os.O_CREAT, 0o644),
        )
        try:
            for run_ids, run_rows, run_sums in zip(
                np.split(ids, breaks), np.split(rows, breaks), np.split(sums, breaks)
            ):
                os.pwrite(fd, run_rows.tobytes(), int(run_ids[0]) * self.row_bytes)
                os.pwrite(fs, run_sums.tobytes(), int(run_ids[0]) * 4)
        finally:
            os.close(fd)
            os.close(fs)
        self._map = self._sums = None  # a longer file: map it again on the next read

    def _checksums(self, rows: np.ndarray) -> np.ndarray:
        """One 32-bit checksum per float16 row: its bit patterns weighted by position, summed (numpy, no loop)."""
        bits = np.ascontiguousarray(rows, np.float16).view(np.uint16).astype(np.uint64)
        return ((bits * self._weights).sum(axis=1) & np.uint64(0xFFFFFFFF)).astype(np.uint32)

    def sync(self) -> None:
        for path in (self.path, self.sums):
            if path.exists():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def read(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids found in the file whose rows match their checksums, their vectors as float32); ids past its end,
        and rows that do not match, are left out (``mismatched`` counts the latter)."""
        rows, sums = self._rows()
        ids = np.asarray(ids, np.int64)
        inside = ids[(ids >= 0) & (ids < min(len(rows), len(sums)))]
        found = rows[inside]
        good = self._checksums(found) == sums[inside]
        self.mismatched += int((~good).sum())
        return inside[good], found[good].astype(np.float32)

    def _rows(self) -> tuple[np.ndarray, np.ndarray]:
        if self._map is None or self._sums is None:
            count = (self.path.stat().st_size if self.path.exists() else 0) // self.row_bytes
            self._map = (
                np.memmap(self.path, np.float16, "r", shape=(count, self.dim))
                if count
                else np.zeros((0, self.dim), np.float16)
            )
            sums = (self.sums.stat().st_size if self.sums.exists() else 0) // 4
            self._sums = np.memmap(self.sums, np.uint32, "r", shape=(sums,)) if sums else np.zeros(0, np.uint32)
        return self._map, self._sums

    def read_stamp(self) -> str | None:
        try:
            return self.stamp.read_text()
        except OSError:
            return None
