"""Live folders: keep a collection in step with its folders as files change (``imgsearch watch``, ``serve --watch``).

The operating system's file events (watchdog: inotify, FSEvents, ReadDirectoryChangesW) say *where* something
changed; what changed is then decided by the ordinary incremental run (``Collection.index_folder``) over the
smallest folder holding every change, under the same writer lock as ``imgsearch index``. So new, changed, moved,
renamed and deleted files and folders follow the same rules as a manual run, and nothing is indexed twice.

- A file is indexed once it has *settled*: no event for it for ``settle`` seconds and the same size and
  modification time at two looks. A run waits until every pending change has settled, so a copy in progress is
  never read half-written; a burst is one run (ordinary batches, progress as ``index`` shows it).
- Temporary names of downloads and sync clients are ignored, as are the collection's excludes.
- Events can be lost (an overflowing inotify queue, a watcher that was down, a share without events): a
  reconciliation scan runs at start and every ``rescan`` seconds. Where the system cannot watch a folder (too few
  inotify watches), the watcher says so, with the fix, and scans every ``poll`` seconds instead.

This module alone imports watchdog.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import DEFAULT_EXCLUDES, IndexingConfig, WatchConfig
from .errors import BadInputError, ImgsearchError, NothingToIndexError
from .images import is_excluded, is_indexed_name
from .results import IndexReport

log = logging.getLogger(__name__)

# Names a file has while something is still writing it: browsers' downloads, rsync, Syncthing, Dropbox, Nextcloud,
# OneDrive, Resilio, editors' and Office's lock and swap files, macOS's metadata twins. Matched against names.
TEMPORARY_NAMES = (
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    "*.tmp",
    "*.temp",
    "*.!sync",
    "*.bts",
    ".*.tmp",
    ".syncthing.*",
    "~syncthing~*",
    ".~*",
    "~$*",
    "._*",
    ".*.sw?",
    "*.~tmp",
    ".dropbox*",
    ".owncloudsync.log*",
    ".nextcloudsync.log*",
)


@dataclass(frozen=True)
class WatchRun:
    """One run the watcher made: why (``"start"``, ``"events"``, ``"rescan"``, ``"poll"``, ``"lost events"``), over
    which folder."""

    reason: str
    folder: str
    report: IndexReport | None  # None when the run failed; ``error`` says why
    error: str | None = None
    changes: int = 0  # file events that led to it
    first_event: float | None = None  # time.monotonic() of the first and last of them
    last_event: float | None = None
    started: float = 0.0  # time.monotonic() when the run began and when its last batch was committed
    finished: float = 0.0


class Watcher:
    """Keeps ``collection`` in step with ``folders`` until ``stop``. ``on_run`` is told each run (from the
    watcher's thread); ``on_notice`` each message for the user (a fallback to scanning, a failed run).

    Use ``start`` and ``stop`` (or a ``with`` block); ``wait_for`` blocks until a condition holds after a run.
    """

    def __init__(
        self,
        collection,
        folders: Iterable[str | os.PathLike],
        settings: IndexingConfig = IndexingConfig(),
        config: WatchConfig = WatchConfig(),
        excludes: Sequence[str] = DEFAULT_EXCLUDES,
        on_run: Callable[[WatchRun], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
        progress=None,
    ):
        self.roots = [_watchable(f) for f in folders]
        if not self.roots:
            raise BadInputError("nothing to watch: name the folders whose photos the collection should follow")
        self.collection, self.settings, self.config = collection, settings, config
        self._own = str(Path(collection.folder).resolve())
        self.excludes = tuple(excludes)
        self.on_run, self.on_notice, self.progress = on_run, on_notice, progress
        self.runs: list[WatchRun] = []
        self.polled: list[Path] = []  # roots scanned every ``poll`` seconds because they cannot be watched
        self._pending: dict[str, float] = {}  # path -> when its last event came
        self._looks: dict[str, tuple[int, int] | None] = {}  # path -> (size, mtime) at the last look
        self._events = 0
        self._first: float | None = None  # when the first event of the pending changes came
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._observer = None
        self._overflow = _Overflow(self._lost_events)
        self._lost = False  # the system dropped events: a scan is due as soon as nothing is settling

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start the observer, then the thread that reconciles each folder once and follows events."""
        inotify_log = logging.getLogger(_WATCHDOG_INOTIFY)
        inotify_log.addHandler(self._overflow)
        if not inotify_log.isEnabledFor(logging.WARNING):  # the CLI quiets every logger to ERROR: not this line
            inotify_log.setLevel(logging.WARNING)
        self._observer = self._observe()
        self._thread = threading.Thread(target=self._loop, name="imgsearch-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
        if self._thread is not None:
            self._thread.join()
        logging.getLogger(_WATCHDOG_INOTIFY).removeHandler(self._overflow)

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Block until ``condition()`` holds, looking again after each run; False when ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0 or (self._thread is not None and not self._thread.is_alive()):
                    return bool(condition())
                self._cond.wait(left)
            return True

    # -- events ---------------------------------------------------------------------------------
    def _observe(self):
        if not self.config.events:
            self.polled = list(self.roots)
            self._notice(f"not following file events: scanning every {self.config.poll:g} s")
            return None
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return  # reads change nothing (and indexing's own reads would wake the watcher)
                if event.is_directory and event.event_type == "modified":
                    return  # a folder's listing changed: the events of the files in it say which
                paths = [event.src_path, getattr(event, "dest_path", "")]
                watcher._note([os.fsdecode(p) for p in paths if p], event.is_directory)

        observer = Observer()
        for root in self.roots:
            try:
                observer.schedule(Handler(), str(root), recursive=True)
            except OSError as exc:
                self._fall_back(root, exc)
        try:
            observer.start()
        except OSError as exc:  # inotify adds its watches on start: a limit shows here
            for root in self.roots:
                self._fall_back(root, exc)
            return None  # never started: nothing to stop
        return observer

    def _fall_back(self, root: Path, exc: OSError) -> None:
        if root not in self.polled:
            self.polled.append(root)
        self._notice(f"cannot watch {root} ({_why_unwatchable(exc)}); scanning it every {self.config.poll:g} s")

    def _note(self, paths: list[str], is_directory: bool) -> None:
        """Record an event's paths that may matter: folders, and images with neither temporary nor excluded names."""
        wanted = [p for p in paths if self._matters(p, is_directory)]
        if not wanted:
            return
        looks = {path: _look(path) for path in wanted}  # outside the lock: a stat may wait on a slow disk
        now = time.monotonic()
        with self._cond:
            for path in wanted:
                self._pending[path] = now
                self._looks[path] = looks[path]
            self._first = self._first or now
            self._events += 1
            self._cond.notify_all()

    def _lost_events(self) -> None:
        with self._cond:
            self._lost = True
            self._cond.notify_all()
        self._notice(
            "the system dropped file events (its inotify queue overflowed); scanning the folders to catch up. A "
            f"larger queue keeps up with bigger bursts: the limit is {_limit('max_queued_events')} events, "
            "`sudo sysctl fs.inotify.max_queued_events=65536` raises it"
        )

    def _matters(self, path: str, is_directory: bool) -> bool:
        root = _root_of(Path(path), self.roots)
        if root is None or path == self._own or path.startswith(self._own + os.sep):
            return False  # the collection's own files, when it lives inside a watched folder
        parts = Path(path).relative_to(root).parts
        if any(part.startswith(".") for part in parts):  # hidden, as `index` skips them
            return False
        folders = [os.path.join(*parts[:depth]) if depth else "." for depth in range(len(parts))]
        if any(is_excluded(part, folder, self.excludes) for part, folder in zip(parts, folders)):
            return False  # as the scan prunes them: any part of the path, by name or relative path
        if is_directory:
            return True
        name = parts[-1] if parts else ""
        return is_indexed_name(name) and not any(fnmatch.fnmatch(name, p) for p in TEMPORARY_NAMES)

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        for root in self.roots:
            self._run("start", root, 0)
        next_scan = self._next_scan()
        while True:
            with self._cond:
                if self._stopping:
                    return
                due = self._settled(time.monotonic())
                scan = due is None and not self._pending and (self._lost or time.monotonic() >= next_scan)
                lost = scan and self._lost
                self._lost = self._lost and not scan
                if due is None and not scan:
                    self._cond.wait(self._wait_time(next_scan))
                    continue
                changes, self._events = self._events, 0
                times = (self._first, max(self._pending.values(), default=None))
                self._first = None
                self._pending.clear()
                self._looks.clear()
            if scan:  # only while nothing is settling: a scan must not read a file still being written
                self._rescan_all("lost events" if lost else None)
                next_scan = self._next_scan()
            for folder in _scopes(due or (), self.roots):
                self._run("events", folder, changes, times)

    def _settled(self, now: float) -> list[str] | None:
        """The pending paths when every one has settled, else None (under ``_cond``). A path whose size or time
        changed since its last event starts every pending path's settle time again."""
        if not self._pending:
            return None
        if any(now - when < self.config.settle for when in self._pending.values()):
            return None
        changed = False
        for path in self._pending:
            look = _look(path)
            if self._looks.get(path) != look:  # changed since its last event without one (a share, a lost event)
                self._looks[path] = look
                changed = True
        if changed:
            for path in self._pending:
                self._pending[path] = now
            return None
        return list(self._pending)

    def _wait_time(self, next_scan: float) -> float | None:
        """Seconds until a pending change may have settled or a scan is due; None: until the next event."""
        now = time.monotonic()
        waits = [next_scan - now] if next_scan != float("inf") else []
        if self._pending:
            waits.append(min(self._pending.values()) + self.config.settle - now)
        return max(0.01, min(waits)) if waits else None

    def _next_scan(self) -> float:
        periods = [self.config.poll] if self.polled else []
        periods += [self.config.rescan] if self.config.rescan > 0 else []
        return time.monotonic() + min(periods) if periods else float("inf")

    def _rescan_all(self, reason: str | None = None) -> None:
        for root in self.roots:
            self._run(reason or ("poll" if root in self.polled else "rescan"), root, 0)

    def _run(
        self, reason: str, folder: Path, changes: int, times: tuple[float | None, float | None] = (None, None)
    ) -> None:
        started = time.monotonic()
        report: IndexReport | None = None
        error = None
        try:
            report = self.collection.index_folder(folder, self.settings, self.progress, self.excludes)
        except NothingToIndexError:  # an empty folder, waiting for its first photo
            report = IndexReport(str(folder))
        except ImgsearchError as exc:  # a folder gone, a full disk: say so, keep watching
            error = str(exc)
            self._notice(f"could not index {folder}: {exc}")
        except Exception as exc:  # a bug: said loudly, and the next change tries again
            log.exception("imgsearch watch: indexing %s failed", folder)
            error = f"{type(exc).__name__}: {exc}"
            self._notice(f"could not index {folder}: {error} (a bug: please report it)")
        run = WatchRun(reason, str(folder), report, error, changes, times[0], times[1], started, time.monotonic())
        with self._cond:
            self.runs.append(run)
            self._cond.notify_all()
        if self.on_run is not None:
            self.on_run(run)

    def _notice(self, message: str) -> None:
        log.warning(message)
        if self.on_notice is not None:
            self.on_notice(message)


_WATCHDOG_INOTIFY = "watchdog.observers.inotify_c"  # the logger that says when inotify's queue overflowed


class _Overflow(logging.Handler):
    """watchdog rebuilds its watches when the kernel's event queue overflows, and says so only in its log (its
    handlers are told nothing): this hears that line and tells the watcher that events were lost."""

    def __init__(self, told: Callable[[], None]):
        super().__init__(logging.WARNING)
        self.told = told

    def emit(self, record: logging.LogRecord) -> None:
        if "overflowed" in str(record.msg):
            self.told()


def _watchable(folder: str | os.PathLike) -> Path:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise BadInputError(f"not a folder: {folder}; pass a directory that holds your images")
    return root.resolve()


def _root_of(path: Path, roots: Sequence[Path]) -> Path | None:
    for root in roots:
        if path == root or root in path.parents:
            return root
    return None


def _look(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # gone (deleted, or moved on): the run notices
    return (st.st_size, st.st_mtime_ns)


def _scopes(paths: Iterable[str], roots: Sequence[Path]) -> list[Path]:
    """The smallest existing folder per root that holds every changed path (a file's folder, a folder's parent):
    one ordinary run over it finds what was added, changed, moved within it and removed.

    Folders where something arrived come first: a photo moved from one watched folder to another is then found at
    its new place while its row still exists, and followed by content (the other order removed it, then embedded
    it again as new)."""
    by_root: dict[Path, list[Path]] = {}
    arrived: set[Path] = set()
    for path in map(Path, paths):
        root = _root_of(path, roots)
        if root is not None:
            by_root.setdefault(root, []).append(path.parent if path != root else root)
            if path.exists():
                arrived.add(root)
    scopes = []
    for root, parents in sorted(by_root.items(), key=lambda item: item[0] not in arrived):
        common = Path(os.path.commonpath([str(p) for p in parents]))
        while common != root and not common.is_dir():  # a folder deleted or renamed away
            common = common.parent
        scopes.append(common if _root_of(common, [root]) else root)
    return scopes


def _why_unwatchable(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return (
            f"the system allows {_limit('max_user_watches')} inotify watches and this folder needs more; raise the "
            "limit with `sudo sysctl fs.inotify.max_user_watches=524288` (and the same line in /etc/sysctl.conf to "
            "keep it)"
        )
    if exc.errno == errno.EMFILE:
        return (
            f"the system allows {_limit('max_user_instances')} inotify instances and they are in use; raise the "
            "limit with `sudo sysctl fs.inotify.max_user_instances=1024`"
        )
    return exc.strerror or str(exc)


def _limit(name: str) -> str:
    try:
        return Path(f"/proc/sys/fs/inotify/{name}").read_text().strip()
    except OSError:
        return "a limited number of"
