"""ONNX Runtime and the onnx package: the only module that imports them. Runs the towers an export left in the cache.

Exported towers keep their weights in a side file (``text.onnx.data``) that ONNX Runtime maps instead of parsing
out of one protobuf: a query's text session opens in 0.09-0.13 s instead of 0.5-0.65 s (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any, cast

import numpy as np

from .backends import OnnxExport


def externalise(path) -> None:
    """Re-save an ONNX file with its weights in ``<name>.data`` beside it, which ONNX Runtime maps at load."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{path.name}.data",
        size_threshold=1024,
    )
    _like_its_graph(path)


def _like_its_graph(path: Path) -> None:
    """Give a graph's side file (``<name>.data``) the graph's permissions: onnx writes it owner-only."""
    data = path.with_name(f"{path.name}.data")
    if data.exists():
        os.chmod(data, path.stat().st_mode & 0o777)


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantizers chatter per node on the root logger: errors only, for the call inside."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(max(before, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(before)


def quantize_int8(source, target, reduce_range: bool = False) -> None:
    """An int8 copy of a tower: MatMul/Gemm weights quantized per tensor, activations quantized on the fly
    (ONNX Runtime's dynamic quantization; VNNI where the CPU has it). Needs no calibration data. ``reduce_range``:
    7-bit weights, for x86 CPUs without VNNI, whose int8 products saturate otherwise (measured on an AVX2-only
    EPYC: the tiny model's ranking error 1.9 of its spread, against 0.3 allowed; within bounds with it)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            reduce_range=reduce_range,
        )


def with_int8(export: OnnxExport) -> OnnxExport:
    """The export with its int8 image tower, made and judged against torch fp32's probe vectors on first use.

    Only ``--backend onnx-int8`` runs it (it misses the ranking guard, so ``auto`` never does), so an export does not
    make it up front: that cost every first run 4-6 s and 96 MB (docs/performance.md)."""
    from . import backends, probes

    return backends.add_tower(
        export,
        "int8",
        export.image_int8_path,
        lambda path: quantize_int8(export.image_path, path, reduce_range=backends.int8_saturates()),
        lambda path, pixels: OnnxTowers._run_image(_session(path, threads=1), pixels),
        probes.MIN_COSINE_INT8,
    )


def quantize_mlp(source, target, calibration: np.ndarray) -> None:
    """A copy of an image tower with only its MLP layers' MatMuls in int8 (static: activation ranges calibrated once
    on ``calibration``, preprocessed pixels; weights per channel; QDQ, which OpenVINO runs with VNNI), and the
    weights in ``<target>.data`` beside it. Attention, the patch embedding and the projection stay as they were:
    quantizing them too missed the ranking guard on the shared photos, the MLP layers alone kept it
    (docs/performance.md). ValueError if the tower has no MLP layers."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(source), load_external_data=False).graph
    names = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and "/mlp/" in n.name]
    if not names:
        raise ValueError("its image tower has no MLP layers to quantize")

    class Feed(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(calibration)

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {graph.input[0].name: row[None]}

    with _quiet_root_logger():
        quantize_static(
            str(source),
            str(target),
            Feed(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=names,
            use_external_data_format=True,
            extra_options={"WeightSymmetric": True},
        )
    _like_its_graph(Path(target))


def _session(path, threads: int | None, lean: bool = False):
    """A CPU session. ``lean`` (one query at a time): weights stay mapped, not re-packed for batch GEMMs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    if lean:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def trimmed(tokens: np.ndarray) -> np.ndarray:
    """CLIP BPE tokens cut after the batch's last column that holds a token (it pads with zeros): what a text tower
    exported with ``text_trim`` takes (``clip/export.py``), for the same vectors at a fraction of the work."""
    tokens = np.asarray(tokens)
    used = np.flatnonzero(tokens.any(axis=0))
    return tokens[:, : int(used[-1]) + 1 if used.size else 1]


def normalised(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


# Probes run through a tower when its session is made, against what torch computed when it was exported: one image
# or one text, one forward pass, catches a damaged file (docs/design.md has the cost).
CHECK_IMAGES, CHECK_TEXTS = 1, 1


class OnnxTowers:
    """Both towers of one export, each session created on first use and checked against the export's probes
    (``verify``: False while the export is being made, before it has any); ``int8``: the image tower's int8 copy."""

    def __init__(
        self,
        export: OnnxExport,
        threads: int | None = None,
        lean: bool = False,
        int8: bool = False,
        verify: bool = True,
    ):
        self.export, self.threads, self.lean, self.int8, self.verify = export, threads, lean, int8, verify
        self._text: Any = None  # onnxruntime InferenceSessions, made on first use
        self._image: Any = None

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        if self._text is None:
            self._text, first = self._opened("text", tokens)
            return cast(np.ndarray, first)
        return self._run_text(self._text, tokens)

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        if self._image is None:
            self._image, first = self._opened("image", pixels)
            return cast(np.ndarray, first)
        return self._run_image(self._image, pixels)

    def check(self) -> None:
        """Make (and so check) both sessions now; ExportDamagedError if either tower is damaged."""
        if self._text is None:
            self._text, _ = self._opened("text")
        if self._image is None:
            self._image, _ = self._opened("image")

    def _run_text(self, session, tokens: np.ndarray) -> np.ndarray:
        if self.export.meta.get("text_trim"):
            tokens = trimmed(tokens)
        return normalised(session.run(None, {"tokens": np.ascontiguousarray(tokens, np.int64)})[0])

    @staticmethod
    def _run_image(session, pixels: np.ndarray) -> np.ndarray:
        return normalised(session.run(None, {"pixels": np.ascontiguousarray(pixels, np.float32)})[0])

    def _opened(self, tower: str, first: np.ndarray | None = None) -> tuple[object, np.ndarray | None]:
        """A session for one tower, which a damaged file cannot give or gives wrong vectors from, and what it
        computes for ``first`` (the caller's input). The probe runs on a second thread while ``first`` runs on this
        one: a cold query's check then costs next to nothing on a machine with two cores (scripts/bench_checks.py),
        and nothing computed is returned before the check has passed."""
        from ..errors import first_sentence
        from . import backends, probes

        path = (
            self.export.text_path
            if tower == "text"
            else (self.export.image_int8_path if self.int8 else self.export.image_path)
        )
        try:
            session = _session(path, self.threads, self.lean)
        except Exception as exc:  # truncated or altered: InvalidProtobuf, "Deserialize tensor ... out of bounds"...
            raise backends.discard(self.export, f"{Path(path).name} cannot be loaded ({first_sentence(exc)})") from None
        run = self._run_text if tower == "text" else self._run_image
        if not self.verify:
            return session, None if first is None else run(session, first)
        if tower == "text":
            tokens = self.export.meta.get("probes", {}).get("tokens")
            if not tokens:
                raise backends.discard(self.export, "it holds no probe tokens to check it with")
            probe = np.asarray(tokens)[:CHECK_TEXTS]
        else:
            probe = probes.pixels(self.export.meta["preprocess"], CHECK_IMAGES)
        probed: list[np.ndarray] = []
        checker = threading.Thread(target=lambda: probed.append(run(session, probe)), name=f"imgsearch-{tower}-probe")
        checker.start()
        try:
            computed = None if first is None else run(session, first)
        finally:
            checker.join()
        if not probed:
            raise backends.discard(self.export, f"its {tower} tower failed on its probe")
        backends.verify(self.export, tower, probed[0], "int8" if self.int8 and tower == "image" else "onnx")
        return session, computed
