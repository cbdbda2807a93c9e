"""Filtered search cost and recall on a real collection of --n images (SQLite store + IVF index), no model needed.

    python scripts/bench_filters.py              # 200k images, ~2 minutes on 2 cores (most of it building)
    python scripts/bench_filters.py --n 50000

The collection is written through imgsearch's own store (synthetic metadata: 100 folders, dates over 10 years,
widths 200-6000, 80% jpeg) with bench_search.py's clustered unit vectors, then opened with imgsearch.open
and searched with ``Collection.search_vector`` -- the same path as a query once its vector is encoded: filter
columns, id selection, faiss, row lookup. For each filter: the share of images it keeps, the median time per
query (warm, one query per call, --queries of them), its ratio to the unfiltered query measured in the same run,
and recall@10 against exact filtered search (brute force over the kept vectors). Two timings per filter: a new
filter for every query (ids selected, bitmap built), and the same filter again (the collection keeps its last
selection: paging, or a new query typed under the same filters).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_search import make_data  # noqa: E402

import imgsearch  # noqa: E402
from imgsearch.records import Changes, NewImage  # noqa: E402
from imgsearch.search import Filters  # noqa: E402
from imgsearch.storage.store import Store  # noqa: E402

K = 10
START = dt.datetime(2015, 1, 1).timestamp()
YEARS = 10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def metadata(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "folder": rng.integers(0, 100, n),
        "width": rng.integers(200, 6001, n),
        "height": rng.integers(200, 4001, n),
        "taken": START + rng.random(n) * YEARS * 365.25 * 86400,
        "png": rng.random(n) < 0.2,
    }


def build(folder: Path, vectors: np.ndarray, meta: dict, chunk: int = 20_000, hashes=None) -> None:
    """A collection of len(vectors) images written through imgsearch's store; ``hashes``: content hash per image."""
    store = Store(folder / "imgsearch.db")
    store.put("model", {"name": "ViT-B-32", "pretrained": None})
    store.put("dim", vectors.shape[1])
    for start in range(0, len(vectors), chunk):
        rows = [
            NewImage(
                f"/photos/f{meta['folder'][i]:03d}/img{i:07d}.{'png' if meta['png'][i] else 'jpg'}",
                1000 + i,
                int(meta["taken"][i] * 1e9),
                hashes[i] if hashes else f"{i:032x}",
                int(meta["width"][i]),
                int(meta["height"][i]),
                vectors[i],
                "png" if meta["png"][i] else "jpeg",
                None,
            )
            for i in range(start, min(start + chunk, len(vectors)))
        ]
        store.apply(Changes(new=rows))
    store.close()


def filters_to_test(meta: dict) -> list[tuple[str, Filters, np.ndarray]]:
    t0 = dt.datetime.fromtimestamp(START + 5 * 365.25 * 86400)
    narrow = (t0, t0 + dt.timedelta(days=36))  # ~1% of ten years
    return [
        ("--in one folder (1%)", Filters(folders=("/photos/f007",)), meta["folder"] == 7),
        (
            "--after/--before 36 days (1%)",
            Filters(after=narrow[0], before=narrow[1]),
            (meta["taken"] >= narrow[0].timestamp()) & (meta["taken"] < narrow[1].timestamp()),
        ),
        ("--min-width 5943 (1%)", Filters(min_width=5943), meta["width"] >= 5943),
        (
            "--format png --orientation portrait (~6%)",
            Filters(formats="png", orientation="portrait"),
            meta["png"] & (meta["width"] < meta["height"]),
        ),
        ("--orientation landscape (~60%)", Filters(orientation="landscape"), meta["width"] > meta["height"]),
        (
            "--in 3 folders --min-width 1000 (~2.5%)",
            Filters(folders=("/photos/f001", "/photos/f002", "/photos/f003"), min_width=1000),
            np.isin(meta["folder"], [1, 2, 3]) & (meta["width"] >= 1000),
        ),
    ]


def timed_search(engine, queries, filters, fresh: bool = False) -> tuple[float, list[list[int]]]:
    """Median seconds per query; ``fresh``: the filter is selected anew for each query (no kept selection)."""
    times, found = [], []
    for q in queries:
        if fresh:
            engine._engine._selection = None  # what a new filter costs: the ids are selected and the bitmap built again
        started = time.perf_counter()
        hits = engine.search_vector(q, K, filters)
        times.append(time.perf_counter() - started)
        found.append([h.id for h in hits])
    return statistics.median(times), found


def main(argv=None) -> None:
    args = parse_args(argv)
    vectors, queries = make_data(
        argparse.Namespace(
            n=args.n, dim=args.dim, clusters=100, spread=2.0, intrinsic=64, queries=args.queries, seed=args.seed
        )
    )
    meta = metadata(args.n, np.random.default_rng(args.seed + 1))
    ids = np.arange(1, args.n + 1)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        build(Path(tmp), vectors, meta)
        print(f"built a {args.n:,}-image store in {time.perf_counter() - started:.1f} s")
        with imgsearch.open(tmp) as engine:
            started = time.perf_counter()
            engine.search_vector(queries[0], K)  # builds the IVF index from the store
            print(
                f"index: {engine.info().image_index}, {engine.info().image_index_lists} lists, nprobe "
                f"{engine.info().nprobe} (first open {time.perf_counter() - started:.1f} s)"
            )
            started = time.perf_counter()
            engine.search_vector(queries[0], K, Filters(min_width=1))
            print(f"filter columns, first load: {time.perf_counter() - started:.3f} s")
            base, plain = timed_search(engine, queries, None)
            exact_all = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :K]]
            plain_recall = np.mean([len(set(f) & set(e)) / K for f, e in zip(plain, exact_all)])
            print(
                "\n| filter | keeps | ms/query, new filter | × unfiltered | ms/query, same filter again | "
                "× unfiltered | recall@10 vs exact filtered |\n|---|---|---|---|---|---|---|"
            )
            print(f"| none | 100% | {base * 1e3:.2f} | 1.00 | | | {plain_recall:.3f} |")
            for label, flt, mask in filters_to_test(meta):
                fresh, _ = timed_search(engine, queries, flt, fresh=True)
                median, found = timed_search(engine, queries, flt)
                kept = ids[mask]
                exact = kept[np.argsort(-(queries @ vectors[mask].T), axis=1)[:, :K]]
                recall = np.mean([len(set(f) & set(e)) / min(K, len(kept)) for f, e in zip(found, exact)])
                short = sum(len(f) < min(K, len(kept)) for f in found)
                print(
                    f"| {label} | {mask.mean():.2%} | {fresh * 1e3:.2f} | {fresh / base:.2f} | {median * 1e3:.2f} | "
                    f"{median / base:.2f} | {recall:.3f}"
                    f"{f' ({short} queries short of k)' if short else ''} |"
                )


if __name__ == "__main__":
    main()
