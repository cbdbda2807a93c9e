"""Index structures at scale: build time, RAM, disk, single-query latency and recall@10 against exact search.

    python scripts/bench_scale.py                               # 1M and 10M vectors, ~35 min and ~16 GB of disk
    python scripts/bench_scale.py --sizes 1000000 --sqlite      # 1M, plus re-ranking from SQLite vs a float16 file
    python scripts/bench_scale.py --sizes 1000000 --factory "OPQ64,IVF{lists},PQ64" "IVF{lists},PQ128x4fs"
    python scripts/bench_scale.py --sizes 10000000 --collection   # a real compact collection, ~35 GB of disk

Data: seeded clustered synthetic 512-d unit vectors (scripts/bench_search.py's distribution), generated in chunks
into a float16 file on disk (a 10M set is 10 GB; float32 would not fit in RAM beside everything else), and 200
queries from the same clusters. Ground truth: exact top-10 by a chunked scan of the file.

Structures, built the way imgsearch builds them (VectorIndex.build_from: trained on a random sample of
training_size(N) vectors, then every vector added in chunks):
- "ivf": IVF-Flat (imgsearch's structure below VectorIndexConfig.compact_threshold); only where its 2 KB/vector fits RAM;
- "compact": IVF-PQ fast scan (VectorIndexConfig.compact_bytes of 4-bit codes, at most compact_max_lists lists), each query's top
  VectorIndexConfig.rerank candidates re-scored exactly against the full vectors (here: the float16 file, memory-mapped);
- any --factory spec (faiss index_factory, "{lists}" filled in), re-ranked the same way, for comparison.
RAM is the resident-memory growth of a fresh process loading the saved index (and its bytes per vector); disk is the
saved file. --sqlite also writes the vectors into an imgsearch store (its own write path) and times fetching each
query's candidates from it against the float16 file: the re-ranking source the library uses.
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
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reindex import write_rows  # noqa: E402 - the store's own write path, as the other benchmarks use it
from bench_reopen import fake_files  # noqa: E402
from bench_search import clustered_unit_vectors  # noqa: E402 - the same distribution as the search benchmark

import imgsearch  # noqa: E402
from imgsearch.config import VectorIndexConfig  # noqa: E402
from imgsearch.storage.store import Store  # noqa: E402
from imgsearch.storage.vector_index import VectorIndex, ivf_lists, structure_for, training_sample, training_size  # noqa: E402

DIM, CHUNK = 512, 100_000


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--structures", nargs="+", default=["ivf", "compact"], choices=["ivf", "compact"])
    p.add_argument("--factory", nargs="*", default=[], help="extra faiss index_factory specs, '{lists}' filled in")
    p.add_argument("--ivf-max", type=int, default=2_000_000, help="largest N built as IVF-Flat (2 KB/vector of RAM)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[VectorIndexConfig().nprobe])
    p.add_argument("--rerank", type=int, nargs="+", default=[VectorIndexConfig().rerank])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--sqlite", action="store_true", help="also compare re-ranking from SQLite (writes a store)")
    p.add_argument(
        "--collection",
        action="store_true",
        help="only a real compact collection: store written, index and float16 rows built by its first "
        "query, then queries re-ranked from the float16 file and from SQLite, interleaved",
    )
    p.add_argument("--workdir", type=Path, default=None)
    return p.parse_args(argv)


def generate(path: Path, n: int, queries: int, seed: int = 0) -> tuple[np.memmap, np.ndarray]:
    """n database vectors into a float16 file, chunk by chunk; the queries in memory (float32)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = np.linalg.qr(rng.standard_normal((DIM, 64)))[0].T.astype(np.float32) / np.float32(8.0)
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, DIM))
    for start in range(0, n, CHUNK):
        part = clustered_unit_vectors(min(CHUNK, n - start), centres, basis, 2.0, np.random.default_rng([seed, start]))
        data[start : start + len(part)] = part
    data.flush()
    return data, clustered_unit_vectors(queries, centres, basis, 2.0, np.random.default_rng([seed, 2**32 - 1]))


def exact_top(data: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for start in range(0, len(data), CHUNK):
        scores = queries @ np.asarray(data[start : start + CHUNK], np.float32).T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        merged_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
        merged_i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argsort(-merged_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(merged_s, keep, 1), np.take_along_axis(merged_i, keep, 1)
    return best_i


def chunks(data: np.ndarray):
    for start in range(0, len(data), CHUNK):
        yield np.arange(start, min(start + CHUNK, len(data))), np.asarray(data[start : start + CHUNK], np.float32)


def from_file(data: np.ndarray):
    """Full vectors by id from the float16 file (ids are row numbers)."""

    def exact(ids: np.ndarray) -> dict[int, np.ndarray]:
        return dict(zip(ids.tolist(), np.asarray(data[np.sort(ids)], np.float32)))

    return exact


def build(structure: str, data: np.ndarray, config: VectorIndexConfig) -> VectorIndex:
    n = len(data)
    if structure in ("ivf", "compact"):
        config = replace(config, compact_threshold=n + 1 if structure == "ivf" else 1)
        sample = training_sample(data, training_size(n, config)).astype(np.float32)
        return VectorIndex.build_from(DIM, n, sample, chunks(data), config, from_file(data))
    import faiss  # a comparison structure by name; imgsearch itself builds only through VectorIndex

    lists = ivf_lists(n, config, compact=True)
    index = faiss.index_factory(DIM, structure.format(lists=lists), faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).cp.niter = config.kmeans_iterations
    index.train(training_sample(data, min(n, max(lists * config.train_per_list, 256 * 256))).astype(np.float32))
    built = VectorIndex(index, config, from_file(data))
    for ids, vectors in chunks(data):
        built.add(ids, vectors)
    return built


def loaded_ram(path: Path) -> int:
    """Resident-memory growth of a fresh process reading the saved index."""
    code = (
        "import re, sys, faiss; kb = lambda: int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())"
        ".group(1)); base = kb(); index = faiss.read_index(sys.argv[1]); print((kb() - base) * 1024)"
    )
    return int(
        subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    )


def latencies(index: VectorIndex, queries: np.ndarray, truth: np.ndarray) -> dict:
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        found.append(index.search(q, 10).ids[0])
        times.append(time.perf_counter() - start)
    recall = np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth)])
    return {
        "p50_ms": round(1000 * float(np.percentile(times, 50)), 2),
        "p95_ms": round(1000 * float(np.percentile(times, 95)), 2),
        "recall@10": round(float(recall), 4),
    }


def measure(structure: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, args, work: Path) -> None:
    started = time.perf_counter()
    index = build(structure, data, VectorIndexConfig())
    build_s = time.perf_counter() - started
    path = work / "index.faiss"
    index.save(path)
    ram = loaded_ram(path)
    base = {
        "n": len(data),
        "structure": structure if structure in ("ivf", "compact") else f"factory {structure}",
        "kind": index.kind,
        "nlist": index.nlist,
        "build_s": round(build_s, 1),
        "ram_bytes_per_vector": round(ram / len(data), 1),
        "disk_bytes_per_vector": round(path.stat().st_size / len(data), 1),
    }
    for nprobe in args.nprobe:
        for rerank in args.rerank if index.kind == "compact" else [0]:
            index.config = replace(index.config, rerank=rerank)
            index._ivf().nprobe = nprobe
            print(
                json.dumps({**base, "nprobe": nprobe, "rerank": rerank, **latencies(index, queries, truth)}), flush=True
            )
    if args.sqlite and index.kind == "compact":
        compare_sources(index, data, queries, work)
    path.unlink()


def write_store(db: Path, data: np.ndarray) -> float:
    """Every vector as an image row (ids from 1), through the store's own write path; returns the seconds taken."""
    store = Store(db)
    started = time.perf_counter()
    for ids, vectors in chunks(data):
        write_rows(store, fake_files(int(ids[0]), len(ids)), vectors)
    store.close()
    return time.perf_counter() - started


def compare_sources(index: VectorIndex, data: np.ndarray, queries: np.ndarray, work: Path) -> None:
    """Fetching each query's re-ranking candidates: from an imgsearch store (SQLite) and from the float16 file."""
    (work / "imgsearch.db").unlink(missing_ok=True)
    write_s = write_store(work / "imgsearch.db", data)
    store = Store(work / "imgsearch.db", read_only=True)
    index.exact = None
    candidates = [index.search(q, VectorIndexConfig().rerank).ids[0] + 1 for q in queries]  # store ids start at 1
    exact_file = from_file(data)
    timings = {"sqlite": [], "float16_file": []}
    for ids in candidates:
        for name, fetch in (
            ("sqlite", lambda i: store.vectors("images", i)),
            ("float16_file", lambda i: exact_file(i - 1)),
        ):
            start = time.perf_counter()
            fetch(ids)
            timings[name].append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "n": len(data),
                "rerank_source": "fetch of each query's candidates",
                "write_store_s": round(write_s, 1),
                **{f"{name}_p50_ms": round(1000 * float(np.median(t)), 2) for name, t in timings.items()},
                **{f"{name}_p95_ms": round(1000 * float(np.percentile(t, 95)), 2) for name, t in timings.items()},
                "db_gb": round((work / "imgsearch.db").stat().st_size / 1e9, 2),
            }
        ),
        flush=True,
    )
    store.close()


def measure_collection(data: np.ndarray, queries: np.ndarray, truth: np.ndarray, work: Path) -> None:
    """A compact collection end to end, through the library: Collection.search_vector, re-ranked from its float16
    file (halfvectors.py) and, forced, from SQLite; one query each way in turn, so both see the same machine."""
    coll = work / "collection"
    coll.mkdir()
    write_s = write_store(coll / "imgsearch.db", data)
    config = VectorIndexConfig(compact_threshold=min(len(data), VectorIndexConfig().compact_threshold))
    engine = imgsearch.open(coll, index_config=config)
    started = time.perf_counter()
    engine.search_vector(queries[0], k=10)  # no index yet: built by streaming the store, saved with its float16 rows
    first_s = time.perf_counter() - started
    synced = engine._synced("images")
    assert synced.index.kind == "compact" and synced.half.read_stamp() == synced.stamp.read_text()
    times, found = {"float16": [], "sqlite": []}, {"float16": [], "sqlite": []}
    for q in queries:
        for source in ("float16", "sqlite"):
            synced._half_ok = source == "float16"  # the benchmark's switch; the library decides by its stamps
            start = time.perf_counter()
            hits = engine.search_vector(q, k=10)
            times[source].append(time.perf_counter() - start)
            found[source].append([h.id - 1 for h in hits])  # store ids start at 1, rows at 0
    engine.close()
    row = {
        "n": len(data),
        "collection": "compact",
        "write_store_s": round(write_s, 1),
        "first_query_build_and_save_s": round(first_s, 1),
        "db_gb": round((coll / "imgsearch.db").stat().st_size / 1e9, 2),
        "float16_file_gb": round((coll / "images.f16").stat().st_size / 1e9, 2),
    }
    for source in times:
        recall = np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found[source], truth)])
        row.update(
            {
                f"{source}_p50_ms": round(1000 * float(np.percentile(times[source], 50)), 2),
                f"{source}_p95_ms": round(1000 * float(np.percentile(times[source], 95)), 2),
                f"{source}_recall@10": round(float(recall), 4),
            }
        )
    print(json.dumps(row), flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"# bench_scale {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; {' '.join(sys.argv)}", flush=True)
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"scale{n}_", dir=args.workdir))
        try:
            started = time.perf_counter()
            data, queries = generate(work / "vectors.npy", n, args.queries)
            truth = exact_top(data, queries)
            print(
                json.dumps(
                    {
                        "n": n,
                        "data_and_truth_s": round(time.perf_counter() - started, 1),
                        "default_structure": structure_for(n, VectorIndexConfig()),
                    }
                ),
                flush=True,
            )
            if args.collection:
                measure_collection(data, queries, truth, work)
                continue
            for structure in [s for s in args.structures if s != "ivf" or n <= args.ivf_max] + args.factory:
                measure(structure, data, queries, truth, args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
