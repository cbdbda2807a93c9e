"""Reopening a large collection after a crash: what the first and the second query cost.

    python scripts/bench_reopen.py                 # 1M images, ~10 min on 2 cores, ~6 GB of disk
    python scripts/bench_reopen.py --n 100000      # quicker

A collection of N images is written through the store's own write path (Store.apply, 10k rows a batch, seeded
clustered synthetic 512-d vectors from scripts/bench_search.py), with no FAISS file: what a first `index` run
killed before its first checkpoint leaves. Then, each a fresh `imgsearch query id:K` process (no model is needed
to search by id), timed with its peak RSS:
- killed first run:  query 1 (no saved index: rebuilt from the store, then saved since no writer runs), query 2;
- killed later run:  1% more rows committed without an index save (a run killed between checkpoints), then
  query 3 (the saved index is caught up with the rows written since its stamp, then saved), query 4.
Before this change every one of these queries rebuilt the index and threw it away (the issue measured 127 s and
177 s for two consecutive queries at 1M, 5.4 GB peak RSS each).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reindex import write_rows  # noqa: E402 - the same write path and manifest as the re-index benchmark
from bench_search import make_data  # noqa: E402

from imgsearch.storage.store import Store  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--workdir", type=Path, default=None, help="where the collection goes (default: a temp dir)")
    return p.parse_args(argv)


def fake_files(start: int, n: int) -> list[tuple[str, int, int, str]]:
    """Rows for files that need not exist: a by-id query never opens them."""
    return [
        (f"/photos/d{i // 1000:04d}/img{i:07d}.jpg", 1000 + i, 10**18 + i, f"{i:032x}") for i in range(start, start + n)
    ]


def query(coll: Path, image_id: int) -> dict:
    """One fresh CLI process: wall seconds and peak RSS (GNU time), and whether it found the image."""
    cmd = [
        "/usr/bin/time",
        "-f",
        "%e %M",
        sys.executable,
        "-m",
        "imgsearch.cli",
        "query",
        f"id:{image_id}",
        "--index",
        str(coll),
        "-k",
        "10",
        "--server",
        "off",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"query failed ({out.returncode}): {out.stderr[-2000:]}")
    seconds, kib = out.stderr.strip().splitlines()[-1].split()
    return {
        "s": float(seconds),
        "peak_rss_gb": round(int(kib) / 2**20, 2),
        "found_itself": f"img{image_id - 1:07d}" in out.stdout,
    }


def stamp(coll: Path) -> str:
    path = coll / "images.faiss.generation"
    return path.read_text().split()[0] if path.exists() else "none"


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"# bench_reopen {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; {' '.join(sys.argv)}", flush=True)
    extra = args.n // 100
    data = argparse.Namespace(n=args.n + extra, dim=512, clusters=100, spread=2.0, intrinsic=64, queries=1, seed=0)
    vectors, _ = make_data(data)
    work = Path(tempfile.mkdtemp(prefix=f"reopen{args.n}_", dir=args.workdir))
    try:
        coll = work / "collection"
        coll.mkdir()
        store = Store(coll / "imgsearch.db")
        started = time.perf_counter()
        write_rows(store, fake_files(0, args.n), vectors[: args.n])
        print(
            json.dumps(
                {
                    "n": args.n,
                    "write_rows_s": round(time.perf_counter() - started, 1),
                    "db_gb": round((coll / "imgsearch.db").stat().st_size / 1e9, 2),
                }
            ),
            flush=True,
        )
        for label in ("killed first run: query 1", "killed first run: query 2"):
            print(
                json.dumps(
                    {"step": label, **query(coll, 7), "stamp": stamp(coll), "generation": store.generation("images")}
                ),
                flush=True,
            )
        write_rows(store, fake_files(args.n, extra), vectors[args.n :])  # committed, never saved to the index
        for label in ("killed later run (+1%): query 3", "killed later run (+1%): query 4"):
            print(
                json.dumps(
                    {
                        "step": label,
                        **query(coll, args.n + 5),
                        "stamp": stamp(coll),
                        "generation": store.generation("images"),
                    }
                ),
                flush=True,
            )
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
