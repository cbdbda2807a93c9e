"""What a collection's writer is doing now, for readers in other processes (``imgsearch info``, the gallery): a
small JSON file beside the database that the writer rewrites as its run goes and removes when it ends.

It is believed only while someone holds the writer lock: a run killed with -9 leaves its file behind, and a file
with the lock free says nothing (the next writer replaces it). It is a report, never a source of truth: a damaged
or foreign file is ignored, not repaired.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .locking import LOCK_NAME, held

ACTIVITY_NAME = "activity.json"
WRITE_EVERY = 0.5  # seconds between rewrites while the counts move (a new stage is written at once)

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Activity:
    """An index run in progress: ``done`` of ``total`` images under ``folder``, at ``stage`` ("loading model",
    "embedding", ...); ``started`` and ``updated`` are Unix times."""

    folder: str
    stage: str
    done: int
    total: int
    started: float
    updated: float
    pid: int

    def to_dict(self) -> dict:
        return asdict(self)


class Recorder:
    """A progress callback ``(done, total, stage)`` that keeps the activity file current, then calls ``forward``
    (the caller's own progress bar), if any."""

    def __init__(self, collection: Path, folder: Path, forward: Progress | None = None, every: float = WRITE_EVERY):
        self.path, self.folder, self.forward, self.every = collection / ACTIVITY_NAME, str(folder), forward, every
        self.started = time.time()
        self._written: tuple[str, float] | None = None  # (stage, when) of the last write

    def __call__(self, done: int, total: int, stage: str = "indexing") -> None:
        now = time.time()
        last = self._written
        if last is None or last[0] != stage or done >= total or now - last[1] >= self.every:
            self._write(Activity(self.folder, stage, done, total, self.started, now, os.getpid()))
            self._written = (stage, now)
        if self.forward is not None:
            self.forward(done, total, stage)

    def _write(self, activity: Activity) -> None:
        temporary = self.path.with_name(f"{ACTIVITY_NAME}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(activity.to_dict()))
            os.replace(temporary, self.path)
        except OSError:  # a full disk must not stop the run a report is about
            with contextlib.suppress(OSError):
                temporary.unlink()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


@contextlib.contextmanager
def recording(collection: Path, folder: Path, forward: Progress | None = None) -> Iterator[Recorder]:
    """A ``Recorder`` for one run, its file gone when the run ends (whichever way); call it under the writer lock."""
    recorder = Recorder(collection, folder, forward)
    recorder.close()  # a killed run's file: this run's own replaces it
    try:
        yield recorder
    finally:
        recorder.close()


def current(collection: Path) -> Activity | None:
    """The run in progress in ``collection``, or None: no run, or a file no running writer vouches for."""
    try:
        raw = json.loads((collection / ACTIVITY_NAME).read_text())
        activity = Activity(
            str(raw["folder"]),
            str(raw["stage"]),
            int(raw["done"]),
            int(raw["total"]),
            float(raw["started"]),
            float(raw["updated"]),
            int(raw["pid"]),
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return activity if held(collection / LOCK_NAME) else None
