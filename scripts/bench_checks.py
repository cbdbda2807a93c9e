"""What verifying derived files costs: the CRC-32 of a FAISS file at load (1M vectors IVF-Flat, and a file the
size of a 10M-vector compact index), the float16 rows' checksums per query, and an export's probes when a session
is made, against a cold text query.

    .venv/bin/python scripts/bench_checks.py [--vectors 1000000] [--skip-export | --only-export]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def faiss_file(folder: Path, n: int, dim: int = 512) -> None:
    from imgsearch.config import VectorIndexConfig
    from imgsearch.storage.vector_index import VectorIndex, file_crc

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex.build(dim, np.arange(n), vectors, VectorIndexConfig())
    del vectors
    path = folder / "images.faiss"
    index.save(path)
    size, crc_value = file_crc(path)
    crc = best(lambda: file_crc(path))
    load = best(lambda: VectorIndex.load(path))
    verified = best(lambda: VectorIndex.load_verified(path, size, crc_value))
    print(
        f"{n:,} vectors, {index.kind}: file {size / 1e9:.2f} GB; CRC-32 alone {crc:.2f} s ({size / crc / 1e9:.1f} "
        f"GB/s), faiss read_index {load:.2f} s; checked before loading {crc + load:.2f} s (+{crc / load:.0%}), "
        f"checked while loading (load_verified) {verified:.2f} s (+{verified / load - 1:.0%})"
    )


def compact_sized_file(folder: Path, n: int = 10_000_000, code_bytes: int = 64) -> None:
    from imgsearch.storage.vector_index import file_crc

    path, size = folder / "compact-sized", n * (code_bytes + 8)
    with open(path, "wb") as fh:
        for _ in range(size // (1 << 24)):
            fh.write(os.urandom(1 << 24))
    crc = best(lambda: file_crc(path))
    print(f"a file of a {n:,}-vector compact index's size ({size / 1e9:.2f} GB): CRC-32 {crc:.2f} s")
    path.unlink()


def half_rows(folder: Path, dim: int = 512, rows: int = 200_000) -> None:
    from imgsearch.storage.halfvectors import HalfVectors

    half = HalfVectors(folder / "images.f16", dim)
    rng = np.random.default_rng(0)
    half.write(np.arange(rows), rng.standard_normal((rows, dim), dtype=np.float32))
    ids = np.sort(rng.choice(rows, 200, replace=False))
    half.read(ids)
    per_query = best(lambda: half.read(ids), 20)
    print(f"float16 rows: reading and checking a query's 200 candidates {per_query * 1e3:.2f} ms")


def export_probes(folder: Path) -> None:
    from imgsearch.clip.embedder import Embedder
    from imgsearch.config import ModelConfig
    from imgsearch.inference import backends
    from imgsearch.inference.onnx import OnnxTowers

    os.environ["IMGSEARCH_CACHE"] = str(folder / "cache")
    model = ModelConfig("ViT-B-32", None, device="cpu")
    Embedder(model).load()
    export = backends.find_export(model)
    tokens = np.asarray(export.meta["probes"]["tokens"])[:1]
    pixels = np.zeros((1, 3, 224, 224), np.float32)
    for tower, first in (("text", tokens), ("image", pixels)):

        def first_use(verify: bool, tower=tower, first=first) -> None:  # a new session, its first input
            towers = OnnxTowers(export, threads=1, lean=True, verify=verify)
            (towers.encode_text if tower == "text" else towers.encode_image)(first)

        plain = best(lambda: first_use(False))
        checked = best(lambda: first_use(True))
        print(
            f"ViT-B-32 {tower} session and its first input (a query's, 1 thread): {plain:.3f} s unchecked, "
            f"{checked:.3f} s with its probe run beside it (+{checked - plain:.3f} s)"
        )
    from imgsearch import open as open_collection

    photos = folder / "photos"
    photos.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 20, 20)).save(photos / "a.png")
    with open_collection(folder / "coll", model=model) as engine:
        engine.index_folder(photos)
    env = dict(os.environ, IMGSEARCH_SERVER="off")
    cold = best(
        lambda: subprocess.run(
            [sys.executable, "-m", "imgsearch", "query", "a red car", "--index", str(folder / "coll")],
            env=env,
            check=True,
            capture_output=True,
        )
    )
    print(f"a cold text query, whole process (best of 3): {cold:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--only-export", action="store_true", help="only the export's probes and the cold query")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not args.only_export:
            faiss_file(folder, args.vectors)
            compact_sized_file(folder)
            half_rows(folder)
        if not args.skip_export:
            export_probes(folder)


if __name__ == "__main__":
    main()
