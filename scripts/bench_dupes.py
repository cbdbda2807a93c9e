"""Near-duplicate search: its cost at scale, and what each threshold catches on real derived copies.

    python scripts/bench_dupes.py --n 200000            # scale: a 200k-image collection, ~2 minutes on 2 cores
    python scripts/bench_dupes.py --transforms --model ViT-B-32 --pretrained laion2b_s34b_b79k

Scale: a collection written through imgsearch's store (as in bench_filters.py) with bench_search.py's clustered unit vectors, of
which 1% are exact copies (same content hash) and 2% near copies (the vector plus noise, cosine ~0.97-0.99).
``Collection.duplicates`` is timed end to end (vectors read from SQLite, faiss range search, grouping), and the
share of planted near copies found in their original's group is printed.

Transforms: the first --photos shared COCO photos and copies of the first (resized to half, re-encoded at JPEG
quality 60, cropped 3% per side, flipped) are indexed with the given model; the cosine of each copy to its
original and the highest cosine between two distinct photos are printed, with which thresholds catch each.
Random weights (--pretrained none) say nothing about a real model's numbers: use a pretrained one where it can be
downloaded.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_filters import build, metadata  # noqa: E402
from bench_search import make_data  # noqa: E402

import imgsearch  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_mini"
THRESHOLDS = (0.90, 0.93, 0.95, 0.97, 0.99)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--transforms", action="store_true", help="the derived-copies table instead of scale")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def scale(args) -> None:
    vectors, _ = make_data(
        argparse.Namespace(n=args.n, dim=args.dim, clusters=100, spread=2.0, intrinsic=64, queries=1, seed=args.seed)
    )
    rng = np.random.default_rng(args.seed + 1)
    hashes = [f"{i:032x}" for i in range(args.n)]
    n_exact, n_near = args.n // 100, args.n // 50
    planted = rng.choice(args.n // 2, n_exact + n_near, replace=False)
    copies = args.n - 1 - np.arange(n_exact + n_near)  # the last rows become copies of planted originals
    for k, (src, dst) in enumerate(zip(planted, copies)):
        if k < n_exact:
            vectors[dst], hashes[dst] = vectors[src], hashes[src]
        else:
            noisy = vectors[src] + rng.standard_normal(args.dim).astype(np.float32) * 0.012
            vectors[dst] = noisy / np.linalg.norm(noisy)
    near_cos = np.einsum("ij,ij->i", vectors[planted[n_exact:]], vectors[copies[n_exact:]])
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        build(Path(tmp), vectors, metadata(args.n, rng), hashes=hashes)
        print(
            f"built a {args.n:,}-image store in {time.perf_counter() - started:.1f} s; planted {n_exact} exact and "
            f"{n_near} near copies (cosine to original {near_cos.min():.3f}-{near_cos.max():.3f})"
        )
        with imgsearch.open(tmp) as engine:
            for threshold in (None, args.threshold):
                started = time.perf_counter()
                groups = engine.duplicates(threshold)
                seconds = time.perf_counter() - started
                group_of = {i.id: g for g, group in enumerate(groups) for i in group.images}
                found = [group_of.get(s + 1, -1) == group_of.get(d + 1, -2) for s, d in zip(planted, copies)]
                exact_found, near_found = np.mean(found[:n_exact]), np.mean(found[n_exact:])
                label = "identical files only" if threshold is None else f"threshold {threshold}"
                print(
                    f"{label}: {seconds:.1f} s, {len(groups)} groups; planted exact copies found {exact_found:.3f}"
                    + ("" if threshold is None else f", near copies found {near_found:.3f}")
                )


def transforms(args) -> None:
    from PIL import Image

    sources = sorted(SHARED.rglob("*.jpg"))[: args.photos]
    pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        root.mkdir()
        for src in sources:
            shutil.copy(src, root / src.name)
        original = Image.open(sources[0])
        w, h = original.size
        derived = {
            "resized to 50%": lambda p: original.resize((w // 2, h // 2), Image.LANCZOS).save(p, quality=95),
            "JPEG quality 60": lambda p: original.save(p, quality=60),
            "cropped 3% per side": lambda p: original.crop(
                (w * 3 // 100, h * 3 // 100, w - w * 3 // 100, h - h * 3 // 100)
            ).save(p, quality=95),
            "flipped left-right": lambda p: original.transpose(Image.FLIP_LEFT_RIGHT).save(p, quality=95),
        }
        for n, make in enumerate(derived.values()):
            make(root / f"copy{n}.jpg")
        model = imgsearch.ModelConfig(args.model, pretrained)
        with imgsearch.open(Path(tmp) / "c", model=model) as engine:
            engine.index_folder(root)
            vector = {
                Path(h.path).name: engine.query_vector(h.path) for h in engine.search(sources[0], k=len(sources) + 4)
            }
        first = vector[sources[0].name]
        rows = [(label, float(vector[f"copy{n}.jpg"] @ first)) for n, label in enumerate(derived)]
        distinct = np.array([vector[s.name] for s in sources])
        sims = distinct @ distinct.T
        rows.append(
            (f"two distinct photos (highest of {len(sources)})", float(sims[~np.eye(len(sources), dtype=bool)].max()))
        )
        print(
            f"model {model.label}\n\n| copy | cosine to original | "
            + " | ".join(f"≥ {t}" for t in THRESHOLDS)
            + " |\n|---|---|"
            + "---|" * len(THRESHOLDS)
        )
        for label, cos in rows:
            print(f"| {label} | {cos:.4f} | " + " | ".join("caught" if cos >= t else "-" for t in THRESHOLDS) + " |")


def main(argv=None) -> None:
    args = parse_args(argv)
    transforms(args) if args.transforms else scale(args)


if __name__ == "__main__":
    main()
