"""A no-change `index` run over a large collection, and where its time goes.

    python scripts/bench_nochange.py --workdir /tmp/nochange                       # 1M files, kept for re-runs
    python scripts/bench_nochange.py --workdir /tmp/nochange --baseline ../old-checkout   # side by side

The first call makes N real (tiny) files in folders of 1000 and their stored rows (bench_reindex.py's files and
rows), then one `index_folder` that builds and saves the index; all of it stays in --workdir for later calls. Each
timed run is a fresh child process: a no-change `index_folder` timed with the imports it makes, then again (the
goal's figure: "beyond imports"), then its parts timed alone: the scan (`images.scan` listed), the stored rows
(`Store.image_states`) and `make_plan` over both, ready. With --baseline, each round runs the same child with that
checkout's imgsearch first, then this one's: interleaved, so a busy moment hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CHILD = r"""
import json, os, sys, time
from pathlib import Path
import imgsearch
assert imgsearch.__file__.startswith(os.getcwd()), imgsearch.__file__
from imgsearch import images, planning
from imgsearch.config import DEFAULT_EXCLUDES, IndexingConfig
from imgsearch.storage.store import Store
work = Path(sys.argv[1]); photos, coll = work / "photos", work / "collection"
def timed(fn):
    t = time.perf_counter(); out = fn(); return out, time.perf_counter() - t
def run():
    with imgsearch.open(coll) as engine:
        return engine.index_folder(photos, IndexingConfig(workers=0))
report, t_cold = timed(run)  # with the imports a run makes lazily (open_clip's recipe tables where no export is cached)
report, t_run = timed(run)
assert report.unchanged == int(sys.argv[2]) and not report.added, report
entries, t_scan = timed(lambda: list(images.scan(photos.resolve(), DEFAULT_EXCLUDES)))
store = Store(coll / "imgsearch.db", read_only=True)
prefix = os.path.join(str(photos.resolve()), "")
known, t_states = timed(lambda: store.image_states(prefix))
skipped = store.skipped_states(prefix)
plan, t_plan = timed(lambda: planning.make_plan(entries, known, skipped))
assert plan.unchanged == len(entries)
print(json.dumps({"with_imports_s": round(t_cold, 2), "no_change_run_s": round(t_run, 2), "scan_s": round(t_scan, 2),
                  "image_states_s": round(t_states, 2), "make_plan_s": round(t_plan, 2)}))
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--workdir", type=Path, required=True, help="where the files and the collection are kept")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", type=Path, default=None, help="another checkout's root, run side by side")
    return p.parse_args(argv)


def prepare(work: Path, n: int) -> None:
    """The files, their rows and a saved index, once per workdir."""
    marker = work / f"ready-{n}"
    if marker.exists():
        return
    sys.path.insert(0, str(HERE))
    from bench_reindex import make_files, write_rows  # noqa: PLC0415 - only when the data is made
    from bench_search import make_data  # noqa: PLC0415

    import imgsearch
    from imgsearch.config import IndexingConfig
    from imgsearch.storage.store import Store

    photos, coll = work / "photos", work / "collection"
    data = argparse.Namespace(n=n, dim=512, clusters=100, spread=2.0, intrinsic=64, queries=1, seed=0)
    vectors, _ = make_data(data)
    files = make_files(photos, n)
    coll.mkdir(parents=True)
    store = Store(coll / "imgsearch.db")
    write_rows(store, files, vectors)
    store.close()
    with imgsearch.open(coll) as engine:
        engine.index_folder(photos, IndexingConfig(workers=0))  # builds and saves the index
    marker.touch()


def child(src: Path, work: Path, n: int) -> dict:
    # Run in src: `python -c` puts the working folder first on sys.path, before PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-c", CHILD, str(work.resolve()), str(n)]
    out = subprocess.run(command, cwd=src, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the run with {src} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"# bench_nochange {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores; {' '.join(sys.argv)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    prepare(args.workdir, args.n)
    sides = ([("baseline", args.baseline.resolve())] if args.baseline else []) + [("this", REPO)]
    for round_no in range(args.rounds):
        for name, src in sides:
            print(json.dumps({"round": round_no + 1, "code": name, "n": args.n, **child(src, args.workdir, args.n)}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
