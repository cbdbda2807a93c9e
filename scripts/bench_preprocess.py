"""CPU time to decode and preprocess one photo on the export path (what each decoding thread of a CPU run does).

    python scripts/bench_preprocess.py --size 224 --runs 5
    git worktree add /tmp/before <commit> && python scripts/bench_preprocess.py --before /tmp/before

Each photo under --images is read, decoded (JPEG drafts included) and preprocessed as ``ExportImageFiles`` does
(``images.prepared`` with ``preprocess``, open_clip's OpenAI mean and std, bicubic, shortest side then centre crop)
in this thread; the figure is process CPU time per photo, median (min) of --runs passes over the folder. With
--before, the same is measured in child processes for this checkout and the one at PATH, interleaved, so that the
two figures come from the same minutes of a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "coco_mini"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--size", type=int, default=224, help="the model's input side (ViT-B-32: 224; -256: 256)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--before", type=Path, default=None, help="another checkout to measure side by side")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one measurement, for the parent
    return p.parse_args(argv)


def per_photo_ms(images: Path, size: int, runs: int) -> list[float]:
    """CPU milliseconds per photo of each pass over the folder."""
    from imgsearch.config import INDEXED_EXTENSIONS, IndexingConfig
    from imgsearch.images import loader, prepared
    from imgsearch.inference.preprocess import preprocess

    cfg = {
        "size": size,
        "mean": (0.48145466, 0.4578275, 0.40821073),  # open_clip's OPENAI_DATASET_MEAN and _STD
        "std": (0.26862954, 0.26130258, 0.27577711),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    settings = IndexingConfig()
    decode = partial(
        prepared,
        load=loader(settings.decode),
        transform=partial(preprocess, cfg=cfg),
        min_side=size,
        max_pixels=settings.max_pixels,
    )
    paths = sorted(str(p) for p in images.rglob("*") if p.suffix.lower() in INDEXED_EXTENSIONS)
    for path in paths[:8]:  # imports and first-call costs out of the clock
        decode(path)
    passes = []
    for _ in range(runs):
        start = time.process_time()
        for path in paths:
            pixels, _, reason = decode(path)
            if pixels is None:
                sys.exit(f"{path}: {reason}")
        passes.append((time.process_time() - start) / len(paths) * 1000)
    return passes


def child(checkout: Path, args: argparse.Namespace) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, __file__, "--json", "--runs", "1", "--size", str(args.size), "--images", str(args.images)]
    return json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.json:
        print(json.dumps(per_photo_ms(args.images, args.size, args.runs)))
        return
    if args.before is None:
        passes = per_photo_ms(args.images, args.size, args.runs)
        print(
            f"decode + preprocess at {args.size} px: {statistics.median(passes):.2f} ms CPU per photo "
            f"(min {min(passes):.2f}, {args.runs} passes)"
        )
        return
    checkouts = {"before": args.before.resolve(), "this checkout": REPO}
    figures: dict[str, list[float]] = {name: [] for name in checkouts}
    for _ in range(args.runs):
        for name, checkout in checkouts.items():
            figures[name] += child(checkout, args)
    print(f"decode + preprocess at {args.size} px, ms CPU per photo, {args.runs} interleaved processes each:")
    for name, passes in figures.items():
        print(f"  {name:14} median {statistics.median(passes):.2f}  min {min(passes):.2f}  max {max(passes):.2f}")
    ratio = statistics.median(figures["this checkout"]) / statistics.median(figures["before"])
    print(f"  this checkout / before: {ratio:.2f}")


if __name__ == "__main__":
    main()
