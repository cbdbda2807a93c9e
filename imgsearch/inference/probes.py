"""Fixed probe inputs, and the check of an exported tower against what torch fp32 computed for them.

An export records torch fp32's vectors for these probes (``meta.json``: ``probes``), made from a model in eval
mode. Any runner of the export (ONNX Runtime fp32 or int8, OpenVINO) can then be checked without torch, whenever
it is built, by running the same probes through it: a damaged cache file, or a runtime that computes something
else, shows as a cosine below the guard. Torch-free: numpy and Pillow only.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

TEXTS = ("a photo of a dog", "a red car parked on a street", "two people on a beach at sunset",
         "a plate of food", "snow on mountains", "a cat sleeping on a sofa", "city lights at night", "")


@functools.lru_cache(maxsize=1)
def _images(n: int) -> tuple[Image.Image, ...]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:320].astype(np.float32)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([xx / 320 * a, yy / 256 * b, (xx + yy) / 576 * c], axis=-1) * 255
        noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(noisy))
    return tuple(out)


def images(n: int = 4) -> list[Image.Image]:
    """Seeded, photo-like test images: smooth colour gradients with noise."""
    return [im.copy() for im in _images(n)]


def pixels(cfg: dict) -> np.ndarray:
    """The probe images through an export's preprocessing (``inference/preprocess.py``)."""
    from .preprocess import preprocess

    return np.stack([preprocess(im, cfg) for im in _images(4)])


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine between two sets of normalised vectors."""
    return float(np.min(np.sum(np.asarray(a, np.float32) * np.asarray(b, np.float32), axis=1)))
