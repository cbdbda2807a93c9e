"""open_clip's inference transform in PIL and numpy: resize, centre crop, scale, normalise. No torch.

It matches torchvision on PIL images exactly (torchvision resizes PIL images with PIL itself); tested against
the model's own transform.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def preprocess(image: Image.Image, cfg: dict) -> np.ndarray:
    """(3, H, W) float32 for one image, per an export's preprocess config (size, mean, std, interpolation, mode)."""
    height, width = input_size(cfg["size"])
    resample = _RESAMPLE.get(cfg.get("interpolation", "bicubic"), Image.Resampling.BICUBIC)
    image = image.convert("RGB")
    if cfg.get("resize_mode", "shortest") == "squash":
        image = image.resize((width, height), resample)
    else:
        image = _crop_centre(_resize_shortest(image, min(height, width), resample), height, width)
    pixels: np.ndarray = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(cfg["mean"], np.float32)) / np.asarray(cfg["std"], np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def input_size(size) -> tuple[int, int]:
    """(height, width) of a model input given as one side or a pair."""
    return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))


def shortest_to(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) scaled so that the shorter side is ``side``, truncated as torchvision's Resize(int) does."""
    return (side, int(side * height / width)) if width <= height else (int(side * width / height), side)


def _resize_shortest(image: Image.Image, side: int, resample) -> Image.Image:
    new = shortest_to(*image.size, side)
    return image if new == image.size else image.resize(new, resample)


def _crop_centre(image: Image.Image, height: int, width: int) -> Image.Image:
    w, h = image.size
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return image.crop((left, top, left + width, top + height))
