"""A torch-free encoder for queries: the cached ONNX towers, CLIP's tokenizer and the PIL transform.

A text query in a fresh process then costs onnxruntime's import and one session, not torch's import and a model
build. It has the same ``embed_texts`` / ``embed_images`` / ``image_size`` / ``dim`` as ``Embedder``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from .backends import FromExport, OnnxExport
from .onnx import OnnxTowers
from .preprocess import preprocess
from .tokenizer import for_export

# One intra-op thread for one query: measured faster than two on a 2-core machine (docs/performance.md).
QUERY_THREADS = 1


class OnnxQueryEncoder(FromExport):
    def __init__(self, export: OnnxExport, threads: int | None = QUERY_THREADS):
        self.export = export
        self._towers = OnnxTowers(export, threads, lean=True)
        self._tokenizer: Callable | None = None  # read on the first text
        self.backend = "onnx fp32 (query)"

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        if self._tokenizer is None:
            self._tokenizer = for_export(self.export.meta, self.export.folder)
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(texts), batch_size):
            out.append(self._towers.encode_text(self._tokenizer(list(texts[start : start + batch_size]))))
        return np.concatenate(out)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        cfg, out = self.export.meta["preprocess"], [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            out.append(
                self._towers.encode_image(np.stack([preprocess(im, cfg) for im in images[start : start + batch_size]]))
            )
        return np.concatenate(out)
