"""ONNX Runtime and the onnx package: the only module that imports them. Runs the towers an export left in the cache.

Exported towers keep their weights in a side file (``text.onnx.data``) that ONNX Runtime maps instead of parsing
out of one protobuf: a query's text session opens in 0.09-0.13 s instead of 0.5-0.65 s (docs/performance.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .backends import OnnxExport


def externalise(path) -> None:
    """Re-save an ONNX file with its weights in ``<name>.data`` beside it, which ONNX Runtime maps at load."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=1024)
    os.chmod(path.with_name(f"{path.name}.data"), path.stat().st_mode & 0o777)  # onnx writes it owner-only


def quantize_int8(source, target) -> None:
    """An int8 copy of a tower: MatMul/Gemm weights quantized per tensor, activations quantized on the fly
    (ONNX Runtime's dynamic quantization; VNNI where the CPU has it). Needs no calibration data."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    before = root.level
    root.setLevel(max(before, logging.ERROR))  # its per-node chatter goes to the root logger, for this call only
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(before)


def _session(path, threads: int | None, lean: bool = False):
    """A CPU session. ``lean`` (one query at a time): weights stay mapped, not re-packed for batch GEMMs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    if lean:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def normalised(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


class OnnxTowers:
    """Both towers of one export, each session created on first use; ``int8``: the image tower's int8 copy."""

    def __init__(self, export: OnnxExport, threads: int | None = None, lean: bool = False, int8: bool = False):
        self.export, self.threads, self.lean, self.int8 = export, threads, lean, int8
        self._text = self._image = None

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        if self._text is None:
            self._text = _session(self.export.text_path, self.threads, self.lean)
        return normalised(self._text.run(None, {"tokens": np.ascontiguousarray(tokens, np.int64)})[0])

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        if self._image is None:
            path = self.export.image_int8_path if self.int8 else self.export.image_path
            self._image = _session(path, self.threads, self.lean)
        return normalised(self._image.run(None, {"pixels": np.ascontiguousarray(pixels, np.float32)})[0])
