"""Search speed and recall: IVF (the VectorIndexConfig defaults past 50k vectors) against exact Flat search.

    python scripts/bench_search.py                       # 200k x 512, about a minute on 2 cores
    python scripts/bench_search.py --n 50000 --repeat 1  # quicker

Data: seeded synthetic unit vectors around --clusters random centres, varying mostly within a
--intrinsic-dimensional subspace (so nearest neighbours have structure for IVF to exploit, as in
CLIP embeddings); queries are fresh draws from the same distribution. Both indexes are built
through imgsearch.storage.vector_index.VectorIndex: one with VectorIndexConfig() (IVF, 4*sqrt(N) lists), one forced
flat (ivf_threshold above N); below 50k vectors the IVF one is forced (ivf_threshold = N). The
IVF index is built once, saved, and reopened with each --nprobe value.

Columns: build seconds; queries/s one query per call (--single of them, what a user's search does)
and in one batch of --queries; recall@10 = share of the exact top 10 that IVF also returns.
Timings are the median of --repeat; all rows come from this one process, side by side.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from imgsearch.config import VectorIndexConfig
from imgsearch.storage.vector_index import VectorIndex

K = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="vectors in the index (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=512, help="dimension (default: %(default)s, ViT-B-32's)")
    parser.add_argument("--clusters", type=int, default=100, help="Gaussian clusters (default: %(default)s)")
    parser.add_argument(
        "--spread",
        type=float,
        default=2.0,
        help="offset length relative to the unit centre; cosine to it ~1/sqrt(1+spread^2)",
    )
    parser.add_argument(
        "--intrinsic",
        type=int,
        default=64,
        help="dimensions the points vary in around their centre (default: %(default)s)",
    )
    parser.add_argument("--queries", type=int, default=1000, help="queries in the batched search")
    parser.add_argument("--single", type=int, default=100, help="queries searched one per call")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64, 128])
    parser.add_argument("--repeat", type=int, default=3, help="timings are the median of this many runs")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def clustered_unit_vectors(
    n: int, centres: np.ndarray, basis: np.ndarray, spread: float, rng: np.random.Generator
) -> np.ndarray:
    """Points around random centres, varying mostly within a low-dimensional subspace (as embeddings do)."""
    labels = rng.integers(len(centres), size=n)
    offsets = rng.standard_normal((n, len(basis)), dtype=np.float32) @ basis
    vectors = centres[labels] + np.float32(spread) * offsets
    vectors += rng.standard_normal(vectors.shape, dtype=np.float32) * np.float32(0.1 / np.sqrt(vectors.shape[1]))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def make_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(database vectors, query vectors): float32, L2-normalised, from the same clusters."""
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Orthonormal rows scaled so an offset has expected length 1 (then ``spread`` is relative to a centre).
    basis = np.linalg.qr(rng.standard_normal((args.dim, args.intrinsic)))[0].T.astype(np.float32)
    basis /= np.sqrt(args.intrinsic)
    database = clustered_unit_vectors(args.n, centres, basis, args.spread, rng)
    queries = clustered_unit_vectors(args.queries, centres, basis, args.spread, rng)
    return database, queries


def build(vectors: np.ndarray, config: VectorIndexConfig) -> tuple[VectorIndex, float]:
    start = time.perf_counter()
    index = VectorIndex.build(vectors.shape[1], np.arange(len(vectors)), vectors, config)
    return index, time.perf_counter() - start


def median_seconds(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(index: VectorIndex, queries: np.ndarray, args: argparse.Namespace) -> tuple[float, float, np.ndarray]:
    """(single queries/s, batched queries/s, batched result ids)."""
    singles = queries[: args.single]
    single = median_seconds(lambda: [index.search(q, K) for q in singles], args.repeat)
    batched = median_seconds(lambda: index.search(queries, K), args.repeat)
    return len(singles) / single, len(queries) / batched, index.search(queries, K).ids


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], e)) for f, e in zip(found, exact))
    return hits / exact.size


def print_row(name: str, nprobe: str, build_s: str, single: float, batched: float, recall: float) -> None:
    print(f"{name:16} {nprobe:>7} {build_s:>8} {single:11.0f} {batched:11.0f} {recall:10.3f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    database, queries = make_data(args)
    default = VectorIndexConfig()
    print(
        f"{args.n:,} x {args.dim} unit vectors in {args.clusters} clusters (seed {args.seed}), "
        f"{args.queries} queries, k={K}; median of {args.repeat}; VectorIndexConfig defaults: "
        f"ivf_threshold {default.ivf_threshold:,}, nprobe {default.nprobe}, "
        f"lists {default.ivf_lists_factor}*sqrt(N)\n"
    )
    flat, flat_build = build(database, replace(default, ivf_threshold=args.n + 1))
    ivf, ivf_build = build(database, replace(default, ivf_threshold=min(default.ivf_threshold, args.n)))
    print(f"{'index':16} {'nprobe':>7} {'build s':>8} {'single q/s':>11} {'batch q/s':>11} {'recall@10':>10}")
    single, batched, exact = measure(flat, queries, args)
    print_row(flat.kind, "-", f"{flat_build:.1f}", single, batched, 1.0)
    del flat
    with tempfile.TemporaryDirectory(prefix="imgsearch-bench-") as tmp:
        saved = Path(tmp) / "ivf.faiss"
        ivf.save(saved)
        name = f"ivf {ivf.nlist} lists"
        del ivf
        for nprobe in args.nprobe:
            index = VectorIndex.load(saved, replace(default, nprobe=nprobe))
            single, batched, found = measure(index, queries, args)
            mark = "*" if nprobe == default.nprobe else ""
            print_row(name, f"{mark}{nprobe}", f"{ivf_build:.1f}", single, batched, recall_at_k(found, exact))
    print("\n* the default nprobe; build s is the same IVF build (training included) for every nprobe row")


if __name__ == "__main__":
    main()
