"""Live folders: how soon a watched photo is searchable, what a burst costs against `index`, and the idle cost.

    python scripts/bench_watch.py --model ViT-B-32 --pretrained none --burst 1000

Offline, ``--pretrained none`` (random weights) costs exactly the compute of the trained model. Everything runs
in this one process, side by side; photos are distinct generated JPEGs (640x480, so decoding is realistic).

- one new photo: from its file being closed to a live reader (what ``serve`` holds) finding it, split into
  event delay (closed -> first event), settle (last event -> run start: ``WatchConfig.settle`` plus the look at
  size and time), model load, embed, commit (the rest of the run) and reader catch-up (run end -> the reader sees
  it; ``serve`` looks every 0.2 s, this reader as fast as it can). Median of ``--repeat`` photos.
- burst: ``--burst`` photos copied into the watched folder, from the first copy to all searchable, against
  ``index_folder`` over the same photos into a fresh collection (both with the model already loaded).
- idle: CPU seconds this process used over ``--idle`` seconds of watching an unchanged folder, as % of a core, and
  the reads it made meanwhile (``/proc/self/io``: read calls, bytes through them, bytes from the disk).
- soak (``--soak SECONDS``): a photo added or deleted every ``--soak-every`` seconds while the watcher runs; the
  process's resident memory at the start, each minute and the end.
- tree (``--tree FILES``): a second watcher on a tree of FILES files in folders of 100 (non-image names: the
  question is the watch limit, which counts folders, not files): the inotify watches it holds, against the
  system's ``max_user_watches``, and how long starting it took.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import imgsearch
from imgsearch.config import ModelConfig, WatchConfig
from imgsearch.watching import Watcher


def photo(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(np.kron(blocks, np.ones((40, 40, 1), np.uint8))).save(path, quality=90)
    return path


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_photo(watcher: Watcher, reader, root: Path, staging: Path, seed: int) -> dict[str, float]:
    source = photo(staging / f"one{seed}.jpg", seed)
    runs = len(watcher.runs)
    closed = time.monotonic()
    shutil.copyfile(source, root / source.name)  # closed when copyfile returns
    watcher.wait_for(lambda: len(watcher.runs) > runs, 120)
    run = watcher.runs[-1]
    while not any(h.path.endswith(source.name) for h in reader.search_text("a photo", k=len(reader) + 1)):
        reader.refresh()
    seen = time.monotonic()
    report = run.report
    return {
        "event delay": run.first_event - closed,
        "settle": run.started - run.last_event,
        "model load": report.model_seconds,
        "embed": report.embed_seconds,
        "commit": (run.finished - run.started) - report.model_seconds - report.embed_seconds,
        "reader catch-up": seen - run.finished,
        "total": seen - closed,
    }


def io_counts() -> dict[str, int]:
    """This process's read counters (/proc/self/io): read calls, bytes read through them, bytes from the disk."""
    with open("/proc/self/io") as io:
        fields = dict(line.split(": ") for line in io.read().splitlines())
    return {key: int(fields[key]) for key in ("syscr", "rchar", "read_bytes")}


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def inotify_watches() -> int:
    """Watches held by this process's inotify instances (each ``inotify wd:`` line of their fdinfo)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                with open(f"/proc/self/fdinfo/{fd}") as info:
                    count += sum(line.startswith("inotify wd:") for line in info)
        except OSError:
            continue
    return count


def soak(watcher: Watcher, writer, root: Path, staging: Path, seconds: float, every: float) -> None:
    folder = root / "soak"
    folder.mkdir()
    samples, started, step = [(0.0, rss_mb())], time.monotonic(), 0
    while time.monotonic() - started < seconds:
        step_started, runs = time.monotonic(), len(watcher.runs)
        if step % 2 == 0:
            shutil.copyfile(photo(staging / f"soak{step}.jpg", 50_000 + step), folder / f"s{step}.jpg")
        else:
            (folder / f"s{step - 1}.jpg").unlink()
        watcher.wait_for(lambda runs=runs: len(watcher.runs) > runs, 120)
        step += 1
        elapsed = time.monotonic() - started
        if elapsed - samples[-1][0] >= 60:
            samples.append((elapsed, rss_mb()))
        time.sleep(max(0.0, every - (time.monotonic() - step_started)))  # the pace of the changes
    samples.append((time.monotonic() - started, rss_mb()))
    print(f"\nsoak: {step} changes over {seconds:g} s; resident memory (MB) by minute:")
    print("  " + ", ".join(f"{t / 60:.0f}m {mb:.0f}" for t, mb in samples))
    print(f"  first minute to end: {samples[-1][1] - samples[1][1] if len(samples) > 2 else 0:+.1f} MB")


def tree(writer, work: Path, files: int) -> None:
    top = work / "tree"
    for i in range(files):
        folder = top / f"d{i // 100:04}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        (folder / f"f{i:06}.dat").write_bytes(b"")
    limit = Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    before = inotify_watches()
    started = time.monotonic()
    notices: list[str] = []
    watcher = Watcher(writer, [top], config=WatchConfig(rescan=0), on_notice=notices.append)
    with watcher:
        watcher.wait_for(lambda: len(watcher.runs) >= 1, 600)
        ready = time.monotonic() - started
        held = inotify_watches() - before
    print(f"\ntree of {files:,} files in {files // 100 + 1:,} folders: {held:,} inotify watches (limit {limit}),")
    print(f"  watching and the start-up scan in {ready:.1f} s; fell back to scanning: {notices or 'no'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=WatchConfig.settle)
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of soak (0: none)")
    parser.add_argument("--soak-every", type=float, default=5.0)
    parser.add_argument("--tree", type=int, default=0, help="files in the watched tree (0: none)")
    args = parser.parse_args()
    model = ModelConfig(args.model, None if args.pretrained == "none" else args.pretrained, device=args.device)
    work = Path(tempfile.mkdtemp(prefix="bench_watch_"))
    root, staging, burst = work / "photos", work / "staging", work / "burst"
    for folder in (root, staging, burst):
        folder.mkdir()
    photo(root / "seed.jpg", 0)
    for i in range(args.burst):
        photo(burst / f"b{i:05}.jpg", 1000 + i)
    print(f"{args.model} ({args.pretrained}) on {os.cpu_count()} cores; settle {args.settle} s; {work}")

    writer = imgsearch.open(work / "coll", model=model, wait=float("inf"))
    with Watcher(writer, [root], config=WatchConfig(settle=args.settle, rescan=0)) as watcher:
        watcher.wait_for(lambda: len(watcher.runs) >= 1, 600)
        reader = imgsearch.open(work / "coll", live=True)
        reader.search_text("warm up", k=1)
        splits = [one_photo(watcher, reader, root, staging, seed) for seed in range(1, args.repeat + 1)]
        print(f"\none new photo, median of {args.repeat} (seconds):")
        for key in splits[0]:
            print(f"  {key:16} {statistics.median(s[key] for s in splits):6.3f}")

        before, read_before = cpu_seconds(), io_counts()
        time.sleep(args.idle)  # the measurement itself: a quiet folder for this long
        idle = (cpu_seconds() - before) / args.idle
        reads = {key: value - read_before[key] for key, value in io_counts().items()}
        print(f"\nidle: {100 * idle:.2f}% of a core over {args.idle:g} s; reads meanwhile: {reads['syscr']} calls,")
        print(f"  {reads['rchar']} bytes through read calls, {reads['read_bytes']} bytes from the disk")

        target, runs = root / "burst", len(watcher.runs)
        target.mkdir()
        started = time.monotonic()
        for path in sorted(burst.iterdir()):
            shutil.copyfile(path, target / path.name)
        expected = 1 + args.repeat + args.burst
        watcher.wait_for(lambda: len(writer) >= expected, 3600)
        watched = time.monotonic() - started
        burst_runs = len(watcher.runs) - runs
        if args.soak:
            soak(watcher, writer, root, staging, args.soak, args.soak_every)
    if args.tree:
        tree(writer, work, args.tree)
    plain = imgsearch.open(work / "plain", model=model)  # the same backend choice as the watcher's
    report = plain.index_folder(burst)
    indexing = report.seconds - report.model_seconds  # the watcher's model was loaded by its start-up run
    print(f"\nburst of {args.burst}: watched {watched:.1f} s in {burst_runs} runs (from the first copy to the last")
    print(
        f"  commit); index_folder {indexing:.1f} s ({report.backend}, model load excluded); ratio {watched / indexing:.2f}"
    )
    shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
