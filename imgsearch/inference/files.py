"""Indexing on a CPU without torch: files decoded on threads, preprocessed in PIL and numpy, embedded from the export.

Once a model's export is cached (its first indexing run makes it, in torch), later runs on a CPU come here and
never import torch: the process is ready in well under a second instead of the ~4 s torch and open_clip take to
import, which is most of a small run. Files are decoded on a thread pool (Pillow releases the GIL while it decodes
and resizes) a bounded number of batches ahead of the model, so memory stays flat on any folder size.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

import numpy as np

from ..config import IndexingConfig
from ..images import loader, prepared
from ..records import EmbeddedBatch
from .backends import FromExport, OnnxExport
from .onnx import OnnxTowers
from .preprocess import preprocess

_AHEAD = 2  # batches decoded ahead of the one the model is on


def image_tower(export: OnnxExport, runner: str):
    """(tower with ``encode_image(pixels) -> vectors``, label) for an ``encoders.Plan`` runner: "openvino",
    "openvino-int8", "onnx-int8" or "onnx" (fp32)."""
    if runner.startswith("openvino"):
        from .openvino import OpenVinoImageTower

        tower = OpenVinoImageTower(export, int8=runner == "openvino-int8")
        return tower, "openvino int8" if tower.int8 else f"openvino {tower.precision}"
    int8 = runner == "onnx-int8"
    return OnnxTowers(export, int8=int8), f"onnx {'int8' if int8 else 'fp32'}"


class ExportImageFiles(FromExport):
    """Embeds image files with an export's image tower (OpenVINO bf16 or int8, ONNX Runtime int8 or fp32), as
    ``Embedder.embed_files`` does with torch."""

    def __init__(self, export: OnnxExport, runner: str = "onnx"):
        self.export = export
        self._tower, self.backend = image_tower(export, runner)
        self.notes: list[str] = []

    def load(self, stage=None, files: int = 0) -> ExportImageFiles:
        """Open the session now (and warm it with one blank image), so that a broken export fails before any work.
        (``stage``, ``files``: as ``Embedder.load``'s; what a run makes was made by ``encoders.file_encoder``.)"""
        side = self.image_size
        self._tower.encode_image(np.zeros((1, 3, side, side), np.float32))
        return self

    def embed_files(self, paths: Sequence[str], settings: IndexingConfig = IndexingConfig()) -> Iterator[EmbeddedBatch]:
        """Embed files batch by batch; unreadable ones come back as failures with a reason, never stopping the run."""
        assert settings.decode != "tensor", "tensor decoding runs in torch (encoders.file_encoder never sends it here)"
        decode = partial(
            prepared,
            load=loader(settings.decode),
            transform=partial(preprocess, cfg=self.export.meta["preprocess"]),
            min_side=self.image_size,
            max_pixels=settings.max_pixels,
        )
        batches = [
            range(i, min(i + settings.batch_size, len(paths))) for i in range(0, len(paths), settings.batch_size)
        ]
        threads = decode_threads(settings)
        if threads == 0:
            for batch in batches:
                yield self._embedded(batch, [decode(paths[i]) for i in batch])
            return
        pool = ThreadPoolExecutor(threads, thread_name_prefix="imgsearch-decode")
        try:
            pending: deque[tuple[range, list[Future]]] = deque()
            for batch in batches:
                pending.append((batch, [pool.submit(decode, paths[i]) for i in batch]))
                if len(pending) > _AHEAD:
                    done, futures = pending.popleft()
                    yield self._embedded(done, [f.result() for f in futures])
            while pending:
                done, futures = pending.popleft()
                yield self._embedded(done, [f.result() for f in futures])
        finally:  # a run stopped early (Ctrl-C, an error) drops the decodes queued ahead instead of finishing them
            pool.shutdown(wait=True, cancel_futures=True)

    def embed_images(self, images: Sequence, batch_size: int = IndexingConfig.batch_size) -> np.ndarray:
        """PIL images (a video's frames), as ``Embedder.embed_images`` embeds them with torch."""
        cfg, out = self.export.meta["preprocess"], [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            out.append(self._tower.encode_image(np.stack([preprocess(im, cfg) for im in chunk])))
        return np.concatenate(out)

    def _embedded(self, positions: range, decoded: list[tuple]) -> EmbeddedBatch:
        good = [(i, pixels, details) for i, (pixels, details, _) in zip(positions, decoded) if pixels is not None]
        failures = [(i, reason) for i, (pixels, _, reason) in zip(positions, decoded) if pixels is None]
        vectors = (
            self._tower.encode_image(np.stack([pixels for _, pixels, _ in good]))
            if good
            else np.zeros((0, self.dim), np.float32)
        )
        return EmbeddedBatch([i for i, _, _ in good], [d for _, _, d in good], vectors, failures)


def decode_threads(settings: IndexingConfig) -> int:
    """Decoding threads: ``settings.workers`` when set, else one per core (threads cost no start-up or copies)."""
    return settings.workers if settings.workers is not None else (os.cpu_count() or 1)
