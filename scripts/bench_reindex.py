"""Re-indexing a large collection: what an `index` run costs when little or nothing changed.

    python scripts/bench_reindex.py                          # 100k and 1M images, ~15 min on 2 cores
    python scripts/bench_reindex.py --sizes 100000           # quicker
    python scripts/bench_reindex.py --sizes 1000000 --only-ivf --train-per-list 39 64 128

For each size N it makes N real (tiny) files on disk and writes their rows, with seeded clustered
synthetic 512-d vectors (scripts/bench_search.py's generator), through the store's own write path
(Store.apply, 10k rows a batch), as a real indexing run would. Then, each timed in this process:
- first run: `index_folder` finds everything unchanged, builds the FAISS index from the store, saves it;
- no-change run: a fresh Collection, `index_folder` again (the goal: it loads the saved index and writes nothing);
- 1% change: 0.5% of files deleted and 0.5% renamed, then `index_folder` (moves recognised by content);
- image_states: the scan of stored rows at the start of every run;
- read-back: every vector read back from SQLite, in a child process: its peak RSS growth / vector bytes;
- metadata bytes per image: the `images` table and its indexes (SQLite dbstat), divided by N;
- IVF build for each --train-per-list: seconds, and recall@10 at nprobe 32 against exact search.
Nothing here embeds an image: the model's cost is bench_index.py's subject.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import make_data  # noqa: E402 - same seeded generator as the search benchmark

import imgsearch  # noqa: E402
from imgsearch import stale  # noqa: E402
from imgsearch.clip.models import recipe_for  # noqa: E402
from imgsearch.config import IndexingConfig, ModelConfig, VectorIndexConfig  # noqa: E402
from imgsearch.records import Changes, NewImage  # noqa: E402
from imgsearch.storage.store import Store  # noqa: E402
from imgsearch.storage.vector_index import VectorIndex  # noqa: E402

BATCH = 10_000
MANIFEST = {"model": {"name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}, "dim": 512}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--train-per-list", type=int, nargs="+", default=[39, 64, 128])
    p.add_argument("--only-ivf", action="store_true", help="only the IVF build comparison")
    p.add_argument("--workdir", type=Path, default=None, help="where files and collections go (default: a temp dir)")
    p.add_argument("--queries", type=int, default=200)
    return p.parse_args(argv)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def make_files(root: Path, n: int) -> list[tuple[str, int, int, str]]:
    """n small distinct files in folders of 1000: (path, size, mtime_ns, content hash)."""
    rows = []
    for i in range(n):
        folder = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        path = folder / f"img{i:07d}.jpg"
        data = i.to_bytes(4, "little") * (1 + i % 7)
        path.write_bytes(data)
        st = path.stat()
        rows.append((str(path), st.st_size, st.st_mtime_ns, hashlib.blake2b(data, digest_size=16).hexdigest()))
    return rows


def write_rows(store: Store, files, vectors: np.ndarray) -> None:
    """The rows through the store's write path, and the embedding record a real run writes with them (without it,
    the run would treat the rows as an earlier imgsearch's, load the model to judge them, and mark them stale)."""
    recipe = recipe_for(ModelConfig(MANIFEST["model"]["name"], MANIFEST["model"]["pretrained"])).to_dict()
    store.put(stale.EMBEDDING_KEY, stale.entry(recipe))
    for start in range(0, len(files), BATCH):
        batch = [
            NewImage(p, size, mtime, h, 640, 480, vectors[start + j])
            for j, (p, size, mtime, h) in enumerate(files[start : start + BATCH])
        ]
        store.apply(Changes(new=batch, manifest=MANIFEST if start == 0 else {}))


def read_back_peak(db: Path, dim: int) -> float:
    """Peak RSS growth of a child process reading every vector back, over the vectors' own size."""
    # /proc's VmHWM belongs to this address space (ru_maxrss would carry the parent's peak across exec).
    code = (
        "import re, sys; from imgsearch.storage.store import Store; s = Store(sys.argv[1], read_only=True);"
        "kb = lambda k: int(re.search(k + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1));"
        "base = kb('VmRSS'); g, ids, v = s.snapshot_vectors('images', int(sys.argv[2]));"
        "print((kb('VmHWM') - base) * 1024 / v.nbytes)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(db), str(dim)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def metadata_bytes(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'images'")]
        marks = ",".join("?" * len(names))
        return conn.execute(f"SELECT sum(pgsize) FROM dbstat WHERE name IN ({marks})", names).fetchone()[0]


def ivf_study(vectors: np.ndarray, queries: np.ndarray, per_list: list[int]) -> list[dict]:
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    rows = []
    for t in per_list:
        index, seconds = timed(
            lambda t=t: VectorIndex.build(
                vectors.shape[1], np.arange(len(vectors)), vectors, VectorIndexConfig(train_per_list=t)
            )
        )
        found = index.search(queries, 10).ids
        recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
        rows.append(
            {
                "train_per_list": t,
                "nlist": index.nlist,
                "build_s": round(seconds, 1),
                "recall@10": round(float(recall), 4),
                "nprobe": VectorIndexConfig().nprobe,
            }
        )
        print(json.dumps({"n": len(vectors), **rows[-1]}), flush=True)
        del index
    return rows


def lifecycle(work: Path, n: int, vectors: np.ndarray) -> dict:
    photos, coll = work / "photos", work / "collection"
    files, t_files = timed(lambda: make_files(photos, n))
    coll.mkdir(parents=True)
    store = Store(coll / "imgsearch.db")
    _, t_write = timed(lambda: write_rows(store, files, vectors))
    store.close()
    settings = IndexingConfig(workers=0)

    def run():
        with imgsearch.open(coll) as engine:
            return engine.index_folder(photos, settings)

    _, t_first = timed(run)
    faiss_file = coll / "images.faiss"
    before = faiss_file.stat().st_mtime_ns
    report, t_same = timed(run)
    assert report.unchanged == n and faiss_file.stat().st_mtime_ns == before, "a no-change run wrote the index"
    rng = np.random.default_rng(1)
    picked = rng.choice(n, n // 100, replace=False)
    for i in picked[: len(picked) // 2]:
        os.remove(files[i][0])
    for i in picked[len(picked) // 2 :]:
        os.rename(files[i][0], files[i][0].replace(".jpg", "_renamed.jpg"))
    report, t_change = timed(run)
    assert report.removed == len(picked) // 2 and report.moved == len(picked) - len(picked) // 2, report
    reader = Store(coll / "imgsearch.db", read_only=True)
    _, t_states = timed(lambda: reader.image_states(os.path.join(str(photos), "")))
    reader.close()
    db = coll / "imgsearch.db"
    return {
        "n": n,
        "make_files_s": round(t_files, 1),
        "write_rows_s": round(t_write, 1),
        "first_run_s": round(t_first, 1),
        "no_change_run_s": round(t_same, 2),
        "one_percent_change_s": round(t_change, 2),
        "image_states_s": round(t_states, 2),
        "read_back_peak_over_size": round(read_back_peak(db, 512), 3),
        "metadata_bytes_per_image": round(metadata_bytes(db) / n, 1),
        "db_bytes_per_image": round(db.stat().st_size / n),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"# bench_reindex {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; {' '.join(sys.argv)}", flush=True)
    for n in args.sizes:
        data_args = argparse.Namespace(
            n=n, dim=512, clusters=100, spread=2.0, intrinsic=64, queries=args.queries, seed=0
        )
        vectors, queries = make_data(data_args)
        ivf_study(vectors, queries, args.train_per_list)
        if args.only_ivf:
            continue
        work = Path(tempfile.mkdtemp(prefix=f"reindex{n}_", dir=args.workdir))
        try:
            print(json.dumps(lifecycle(work, n, vectors)), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"# peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
