"""OpenVINO: the only module that imports it. Runs an export's image tower for bulk work on a CPU.

On a CPU with native bf16 (AVX512-BF16, AMX) OpenVINO computes in bf16 by default, and elsewhere in fp32.
Measured on ViT-B-32 (docs/performance.md): 45 images/s against ONNX Runtime fp32's 19.5 and torch bf16's 37 on
the same 2 cores, cosine to fp32 0.99995 and top-10 overlap 0.971, compiled from the cached ONNX file in ~1 s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import OnnxExport
from .onnx import normalised


class OpenVinoImageTower:
    """An export's image tower compiled for this CPU (on first use) for one batch at a time; ``int8``: its copy with
    the MLP layers in int8 (``with_int8``)."""

    def __init__(self, export: OnnxExport, verify: bool = True, int8: bool = False, path=None):
        self.export, self.verify, self.int8 = export, verify, int8
        self.path = path or (export.openvino_int8_path if int8 else export.image_path)
        self._compiled: Any = None  # OpenVINO CompiledModel and its InferRequest, made on first use
        self._request: Any = None

    def _compile(self):
        if self._compiled is None:
            import openvino

            from ..errors import first_sentence
            from . import backends, probes
            from .onnx import CHECK_IMAGES

            try:
                # LATENCY: one stream over every core for each batch; THROUGHPUT splits the cores between streams
                # that one synchronous caller never fills (measured half the speed).
                self._compiled = openvino.Core().compile_model(str(self.path), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
            except Exception as exc:  # a truncated or altered file
                raise backends.discard(
                    self.export, f"OpenVINO cannot load its image tower ({first_sentence(exc)})"
                ) from None
            self._request = self._compiled.create_infer_request()
            if self.verify:
                got = self._infer(probes.pixels(self.export.meta["preprocess"], CHECK_IMAGES))
                backends.verify(self.export, "image", got, "openvino-int8" if self.int8 else "openvino")
        return self._compiled

    def _infer(self, pixels: np.ndarray) -> np.ndarray:
        out = self._request.infer({0: np.ascontiguousarray(pixels, np.float32)})
        return normalised(np.asarray(out[0]))

    @property
    def precision(self) -> str:
        """What the CPU computes in: "bf16", "fp16" or "fp32"."""
        name = self._compile().get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "bf16", "f16", "f32"
        return {"bf16": "bf16", "f16": "fp16"}.get(name, "fp32")

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        self._compile()
        return self._infer(pixels)


def with_int8(export: OnnxExport) -> OnnxExport:
    """The export with OpenVINO's int8 image tower (``onnx.quantize_mlp``, calibrated on ``probes.calibration_pixels``),
    made and judged against torch fp32's probe vectors on first use, at the fp32 bound (MIN_COSINE): where it passes,
    ``auto`` runs it on CPUs with VNNI (encoders.py). Made on first use, not with the export: 10-15 s and 180 MB
    for ViT-B-32, which only those CPUs need."""
    from . import backends, probes
    from .onnx import quantize_mlp

    return backends.add_tower(
        export,
        "openvino-int8",
        export.openvino_int8_path,
        lambda path: quantize_mlp(export.image_path, path, probes.calibration_pixels(export.meta["preprocess"])),
        lambda path, pixels: OpenVinoImageTower(export, verify=False, path=path).encode_image(pixels),
        probes.MIN_COSINE,
    )
