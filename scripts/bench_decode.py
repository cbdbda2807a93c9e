"""What indexing's fast decode changes against the reference decode, on the shared COCO photos.

    python scripts/bench_decode.py                              # ViT-B-32, random weights (same input pipeline)
    python scripts/bench_decode.py --model ViT-B-32 --pretrained laion2b_s34b_b79k

Indexing decodes JPEGs at reduced size in the decoder (Pillow's draft mode, DCT scaling, never below the model's
input size) and applies EXIF orientation; evaluation decodes as CLIP_benchmark does (full size, convert("RGB")).
Printed: per-image decode + preprocess time of each, and the cosine between the two vectors of each photo
(min, 1st percentile, mean). Photos with an EXIF rotation are counted apart, since there the two differ on purpose.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_mini"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    args = parser.parse_args(argv)
    from PIL import Image

    from imgsearch.config import IndexingConfig, ModelConfig
    from imgsearch.embedder import Embedder
    from imgsearch.images import load_image, load_reference_image

    paths = [str(p) for p in sorted(SHARED.rglob("*.jpg"))]
    embedder = Embedder(ModelConfig(args.model, None if args.pretrained == "none" else args.pretrained)).load()
    preprocess, side = embedder.preprocess, embedder.image_size
    for name, load in (("fast (draft)", lambda p: load_image(p, side)), ("reference", load_reference_image)):
        started = time.perf_counter()
        for p in paths:
            preprocess(load(p).image)
        print(f"{name:14} decode + preprocess: {(time.perf_counter() - started) / len(paths) * 1e3:.1f} ms/image")
    vectors = {}
    for mode in ("fast", "reference"):
        config = IndexingConfig(workers=0, decode=mode)
        vectors[mode] = np.concatenate([b.vectors for b in embedder.embed_files(paths, config)])
    cos = np.einsum("ij,ij->i", vectors["fast"], vectors["reference"])
    rotated = np.array([Image.open(p).getexif().get(0x0112, 1) != 1 for p in paths])
    same = cos[~rotated]
    print(f"{embedder.config.label}, {len(paths)} photos ({rotated.sum()} with an EXIF rotation, left out): cosine "
          f"fast vs reference min {same.min():.4f}, 1st percentile {np.percentile(same, 1):.4f}, mean {same.mean():.5f}")


if __name__ == "__main__":
    main()
