"""The one decision of what encodes files and queries (imgsearch/encoders.py), over every combination of what is
installed, what the CPU computes natively, what the export's checks said and what was asked for."""

from __future__ import annotations

from dataclasses import replace

import pytest

from imgsearch import encoders
from imgsearch.config import ModelConfig
from imgsearch.inference import backends

MODEL = ModelConfig("imgsearch-tiny", None, device="cpu")
GOOD = {"cosine": 0.9999, "rank_error": 0.05, "bound": 0.999, "passed": True}
PASSED = {"onnx": GOOD, "int8": GOOD, "openvino": {**GOOD, "precision": "bf16"}, "openvino-int8": GOOD}


def _export(tmp_path, check=PASSED, tokenizer="clip-bpe", resize="shortest"):
    folder = tmp_path / "export"
    folder.mkdir(exist_ok=True)
    (folder / "image.int8.onnx").write_bytes(b"")
    (folder / "image.mlp-int8.onnx").write_bytes(b"")
    return backends.OnnxExport(
        folder, {"check": dict(check), "tokenizer": tokenizer, "preprocess": {"resize_mode": resize}, "imgsearch": "x"}
    )


@pytest.fixture
def machine(monkeypatch):
    """A CPU whose capabilities the test sets: (openvino installed, native bf16, native int8)."""

    def set_(openvino=True, native=True, ort=True, vnni=False):
        monkeypatch.setattr(backends, "openvino_installed", lambda: openvino)
        monkeypatch.setattr(backends, "native_bf16", lambda: native)
        monkeypatch.setattr(backends, "fast_int8", lambda: vnni)
        monkeypatch.setattr(backends, "onnxruntime_installed", lambda: ort)

    return set_


@pytest.mark.parametrize(
    "backend, precision, openvino, native, runner, why",
    [
        ("auto", "auto", True, True, ("openvino", "fp32"), None),
        ("auto", "auto", False, True, ("torch", "bf16"), None),  # OpenVINO absent (not x86): torch bf16, nothing to say
        ("auto", "auto", False, False, ("onnx", "fp32"), None),  # ... else ONNX Runtime fp32; auto never runs int8
        ("auto", "fp32", True, True, ("onnx", "fp32"), None),
        ("auto", "bf16", True, True, ("torch", "bf16"), None),
        ("onnx", "auto", True, True, ("onnx", "fp32"), None),
        ("onnx-int8", "auto", True, True, ("onnx-int8", "fp32"), None),
        ("openvino", "auto", True, False, ("openvino", "fp32"), None),
        ("openvino", "auto", False, False, ("onnx", "fp32"), "OpenVINO is not installed"),  # asked for, not installed
        ("torch", "auto", True, True, ("torch", "bf16"), None),
        ("torch", "auto", True, False, ("torch", "fp32"), None),
    ],
)
def test_files_on_a_cpu(machine, tmp_path, backend, precision, openvino, native, runner, why):
    machine(openvino, native)
    plan = encoders.for_files(replace(MODEL, backend=backend, precision=precision), _export(tmp_path), cuda=False)
    assert (plan.runner, plan.precision) == runner
    assert (plan.reason is None) if why is None else (why in plan.reason)


@pytest.mark.parametrize(
    "backend, openvino, runner, why",
    [
        ("auto", True, "openvino-int8", None),  # native int8 and a passed int8 tower: auto runs it
        ("openvino", True, "openvino", None),
        ("openvino-int8", True, "openvino-int8", None),
        ("openvino-int8", False, "onnx", "OpenVINO is not installed"),
        ("auto", False, "torch", None),
    ],
)
def test_files_on_a_cpu_with_native_int8(machine, tmp_path, backend, openvino, runner, why):
    machine(openvino, native=True, vnni=True)
    plan = encoders.for_files(replace(MODEL, backend=backend), _export(tmp_path), cuda=False)
    assert plan.runner == runner
    assert (plan.reason is None) if why is None else (why in plan.reason)


def test_openvino_int8_that_failed_or_was_not_made_gives_way_to_openvino(machine, tmp_path):
    machine(openvino=True, native=True, vnni=True)
    failed = _export(tmp_path, {**PASSED, "openvino-int8": {"cosine": 0.9927, "rank_error": 0.92, "passed": False}})
    plan = encoders.for_files(MODEL, failed, cuda=False)
    assert plan.runner == "openvino" and "OpenVINO's int8 tower failed its check" in plan.reason
    assert "ranking error 0.92" in plan.reason
    asked = encoders.for_files(replace(MODEL, backend="openvino-int8"), failed, cuda=False)
    assert asked.runner == "openvino-int8"  # asked for: run although it failed
    failed.openvino_int8_path.unlink()
    plan = encoders.for_files(replace(MODEL, backend="openvino-int8"), failed, cuda=False)
    assert plan.runner == "openvino" and "no int8 tower could be made" in plan.reason
    assert encoders.for_files(MODEL, failed, cuda=False).runner == "openvino"


def test_a_failed_export_is_never_run_by_auto_and_the_reason_is_given(machine, tmp_path):
    machine(openvino=True, native=False)
    failed = _export(tmp_path, {"onnx": {"cosine": 0.074, "rank_error": 40.0, "bound": 0.999, "passed": False}})
    plan = encoders.for_files(MODEL, failed, cuda=False)
    assert plan.runner == "torch" and "cosine 0.07400, ranking error 40.00" in plan.reason
    assert encoders.for_files(replace(MODEL, backend="onnx"), failed, cuda=False).runner == "onnx"  # asked: run
    query = encoders.for_query(MODEL, failed)
    assert query.runner == "torch" and "failed" in query.reason


def test_openvino_that_failed_its_check_is_explained(machine, tmp_path):
    machine(openvino=True, native=True)
    export = _export(tmp_path, {**PASSED, "openvino": {"cosine": 0.9999, "rank_error": 0.66, "passed": False}})
    plan = encoders.for_files(MODEL, export, cuda=False)
    assert (plan.runner, plan.precision) == ("torch", "bf16") and "ranking error 0.66" in plan.reason


def test_no_export_no_onnxruntime(machine, tmp_path):
    machine(openvino=False, native=False, ort=False)
    plan = encoders.for_files(MODEL, _export(tmp_path), cuda=False)
    assert plan.runner == "torch" and "onnxruntime is not installed" in plan.reason
    machine(openvino=False, native=False)
    assert encoders.for_files(MODEL, None, cuda=False).runner == "torch"
    assert "no usable ONNX export" in encoders.for_query(MODEL, None).reason


def test_cuda_runs_torch(machine, tmp_path):
    machine()
    assert encoders.for_files(MODEL, _export(tmp_path), cuda=True).runner == "torch"


@pytest.mark.parametrize(
    "change, runner",
    [
        ({}, "onnx"),
        ({"backend": "torch"}, "torch"),
        ({"device": "cuda"}, "torch"),
        ({"precision": "bf16"}, "torch"),
    ],
)
def test_queries(machine, tmp_path, change, runner):
    machine()
    plan = encoders.for_query(replace(MODEL, **change), _export(tmp_path))
    assert plan.runner == runner and plan.reason is None  # asked for outright: nothing to explain


def test_a_query_needs_a_torch_free_tokenizer_and_transform(machine, tmp_path):
    machine()
    assert "needs open_clip" in encoders.for_query(MODEL, _export(tmp_path, tokenizer="open_clip")).reason
    assert "needs torchvision" in encoders.for_query(MODEL, _export(tmp_path, resize="longest")).reason


def test_bf16_that_failed_at_export_gives_way_to_onnx_fp32(machine, tmp_path):
    """RN50 with random weights: OpenVINO and torch bf16 both move its crowded scores too far (docs/models.md)."""
    machine(openvino=True, native=True)
    moved = {"cosine": 0.99993, "rank_error": 2.7, "bound": 0.999, "passed": False}
    export = _export(tmp_path, {**PASSED, "openvino": moved, "torch-bf16": moved})
    plan = encoders.for_files(MODEL, export, cuda=False)
    assert plan.runner == "onnx" and "OpenVINO" in plan.reason and "torch with bf16 weights failed" in plan.reason
