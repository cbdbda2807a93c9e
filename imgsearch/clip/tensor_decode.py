"""Decoding on the model's device: JPEGs decoded by torchvision (nvJPEG on a CUDA GPU, batched), then resized,
cropped and normalised as tensors there. The only module that imports torchvision's decoders.

Decode workers (CPU processes) only read each file, hash it and read its header (size, format, EXIF date and
orientation); the pixels never pass through Pillow. Files that are not JPEGs, JPEGs torchvision rejects (CMYK,
corrupt), and images whose transform is not the plain CLIP one fall back to the Pillow path, one file at a time.
The same code runs on a CPU (``decode_jpeg`` on the CPU), which is how CI tests it; its agreement with the Pillow
path is measured by ``scripts/bench_decode.py`` (``--device cuda`` on a GPU).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch

from ..images import ImageSkipped, jpeg_header, prepared, read_file, skip_reason
from ..inference.preprocess import input_size, shortest_to
from ..records import ImageDetails

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class Transform:
    """CLIP's inference transform as tensors: shortest side to ``size`` (bicubic, antialiased), centre crop."""

    size: tuple[int, int]  # (height, width)
    mean: Triple
    std: Triple

    @classmethod
    def for_model(cls, cfg: dict) -> Transform | None:
        """From a model's preprocess config; None for transforms other than the plain one (Pillow handles those)."""
        if cfg.get("resize_mode", "shortest") != "shortest" or cfg.get("interpolation", "bicubic") != "bicubic":
            return None
        mean, std = (float(m) for m in cfg["mean"]), (float(s) for s in cfg["std"])
        return cls(input_size(cfg["size"]), cast(Triple, tuple(mean)), cast(Triple, tuple(std)))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) on any device -> normalised float (3, height, width) on the same device."""
        from torchvision.transforms.v2 import functional as F

        height, width = self.size
        h, w = image.shape[-2:]
        new_w, new_h = shortest_to(w, h, min(height, width))
        if (new_h, new_w) != (h, w):
            image = F.resize(image, [new_h, new_w], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
        image = F.center_crop(image, [height, width])
        mean, std = _stats(self.mean, self.std, str(image.device))
        return image.float().div_(255.0).sub_(mean).div_(std)


@functools.lru_cache(maxsize=8)
def _stats(mean: tuple, std: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (3, 1, 1) tensors on the device, made once (not one host-to-device copy per image)."""
    return torch.tensor(mean, device=device).view(3, 1, 1), torch.tensor(std, device=device).view(3, 1, 1)


class TensorFiles(torch.utils.data.Dataset):
    """Runs in decode workers: (position, kind, payload, details, reason) per file, where kind is "jpeg" (payload:
    the file's bytes as a uint8 tensor, decoded later on the device), "pixels" (payload: the Pillow path's tensor)
    or None (a failure; reason says why)."""

    def __init__(self, paths: list[str], fallback: Callable, load: Callable, min_side: int, max_pixels: int):
        self.paths, self.fallback, self.load = paths, fallback, load
        self.min_side, self.max_pixels = min_side, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            data = read_file(self.paths[i])
            header = jpeg_header(data, self.max_pixels)
        except ImageSkipped as exc:
            return i, None, None, None, skip_reason(exc)
        if header is not None:
            details, orientation = header
            return i, "jpeg", (torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation), details, None
        pixels, details, reason = self.pillow(i)
        return i, ("pixels" if pixels is not None else None), pixels, details, reason

    def pillow(self, i: int):
        """File i through the Pillow path: (pixels, details, None), or (None, None, reason)."""
        return prepared(self.paths[i], self.load, self.fallback, self.min_side, self.max_pixels)


def collate(items):
    return items


class DeviceDecoder:
    """Turns a batch of ``TensorFiles`` items into (positions, details, pixels on the device, failures)."""

    def __init__(self, transform: Transform, device: str, fallback_item: Callable):
        self.transform, self.device, self.fallback_item = transform, device, fallback_item

    def __call__(self, items) -> tuple[list[int], list[ImageDetails], torch.Tensor | None, list[tuple[int, str]]]:
        jpegs = [it for it in items if it[1] == "jpeg"]
        decoded = self._decode([it[2][0] for it in jpegs])
        ready: dict[int, tuple[torch.Tensor, ImageDetails]] = {}
        failures: list[tuple[int, str]] = []
        for item, image in zip(jpegs, decoded):
            if image is not None:
                ready[item[0]] = (self.transform(upright(image, item[2][1])), item[3])
            else:  # torchvision rejected it: the Pillow path, which also says why it cannot be read
                pixels, details, reason = self.fallback_item(item[0])
                if pixels is None:
                    failures.append((item[0], reason))
                else:
                    ready[item[0]] = (pixels.to(self.device, non_blocking=True), details)
        for position, kind, payload, details, reason in items:
            if kind == "pixels":
                ready[position] = (payload.to(self.device, non_blocking=True), details)
            elif kind is None:
                failures.append((position, reason))
        positions = sorted(ready)
        pixels = torch.stack([ready[p][0] for p in positions]) if positions else None
        return positions, [ready[p][1] for p in positions], pixels, sorted(failures)

    def _decode(self, datas: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """RGB uint8 images as stored (torchvision ignores EXIF orientation on CUDA, so it is applied by ``upright``
        on every device alike); the whole batch at once (nvJPEG batches it), else one at a time to find the files
        torchvision rejects (None)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if not datas:
            return []
        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device))
        except (RuntimeError, ValueError):
            pass
        out = []
        for data in datas:
            try:
                out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
            except (RuntimeError, ValueError):
                out.append(None)
        return out


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A (C, H, W) image as displayed under its EXIF orientation (1-8), as Pillow's ``exif_transpose`` turns it."""
    if orientation in (5, 6, 7, 8):  # stored sideways: transpose first, then flip as 1-4 would
        image = image.transpose(-1, -2)
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip((-2, -1))
    if orientation == 4:
        return image.flip(-2)
    return image
