"""ONNX Runtime: the only module that imports onnxruntime. Runs the towers an export left in the cache."""

from __future__ import annotations

import os

import numpy as np

from .backends import OnnxExport


def _session(path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def normalised(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


class OnnxTowers:
    """Both towers of one export, each session created on first use."""

    def __init__(self, export: OnnxExport, threads: int | None = None):
        self.export, self.threads = export, threads
        self._text = self._image = None

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        if self._text is None:
            self._text = _session(self.export.text_path, self.threads)
        return normalised(self._text.run(None, {"tokens": np.ascontiguousarray(tokens, np.int64)})[0])

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        if self._image is None:
            self._image = _session(self.export.image_path, self.threads)
        return normalised(self._image.run(None, {"pixels": np.ascontiguousarray(pixels, np.float32)})[0])
