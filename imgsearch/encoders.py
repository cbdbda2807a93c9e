"""What encodes a query or a batch of image files: decided here, and nowhere else.

The rule behind ``--backend auto`` (measured, docs/performance.md):
- on a CUDA device, torch (fp16 autocast; JPEGs decoded on the device);
- on a CPU, for image files: OpenVINO running the exported image tower, when it is installed (x86) and passed its
  check (bf16 on CPUs with native bf16, else fp32): the fastest path measured that keeps the quality guard, and
  later runs then never import torch. On CPUs with VNNI (native int8) its copy with the MLP layers in int8, made
  and judged by the first run worth it (``with_asked_towers``), runs instead where it passed the fp32 bound
  (ViT-B-32: 1.33x OpenVINO bf16 model-only, 1.15x end to end, top-10 overlap 0.963 against bf16's 0.971); else
  torch with bf16 weights on CPUs with native bf16 (AVX512-BF16, AMX), checked against fp32 at load; else ONNX
  Runtime fp32 from a passed export; else torch fp32;
- a query in a process that has no model loaded: the export's fp32 ONNX towers with the torch-free tokenizer and
  transform, whenever the export passed its check: no torch import, a sub-second process;
- ``onnx-int8`` (the image tower quantized to int8) is only run when asked for: it missed the ranking guard
  (top-10 overlap 0.941-0.949 < 0.95 on the shared photos, docs/performance.md); so it is made, and checked, on
  its first run (``with_asked_towers``), not with the export.
Every path is checked against torch fp32 in eval mode (``clip/export.py``) before ``auto`` may take it; a backend
named explicitly runs even an export that failed, as asked. Whenever ``auto`` does not take the fastest path, the
plan says why (``reason``), and ``imgsearch info`` and the index run show it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import ModelConfig
from .inference import backends
from .inference.backends import OnnxExport


@dataclass(frozen=True)
class Plan:
    """What runs: ``runner`` "torch", "onnx" (ONNX Runtime fp32), "onnx-int8", "openvino" or "openvino-int8";
    ``precision`` for torch ("fp32", "bf16", "fp16", "auto": autocast on CUDA); ``reason``: why a faster path was
    not taken, or None."""

    runner: str
    precision: str = "fp32"
    reason: str | None = None

    @property
    def uses_export(self) -> bool:
        return self.runner != "torch"


def on_cuda(model: ModelConfig) -> bool:
    """Whether torch would run this model on a CUDA device (asked without importing torch)."""
    return model.device.startswith("cuda") or (model.device == "auto" and backends.cuda_visible())


def export_problem(export: OnnxExport | None) -> str | None:
    """Why ``auto`` may not use this export, or None."""
    if not backends.onnxruntime_installed():
        return "onnxruntime is not installed (pip install onnxruntime)"
    if export is None:
        return "the model has no usable ONNX export"
    return export.failure()


def for_files(model: ModelConfig, export: OnnxExport | None, cuda: bool) -> Plan:
    """What embeds image files in bulk, given the model's cached export (None: none could be made)."""
    backend, precision = model.backend, model.precision
    if cuda:
        return Plan("torch", precision)
    if backend == "torch":
        return Plan("torch", _torch_precision(precision))
    if backend != "auto":
        return _explicit(backend, export)
    if precision in ("bf16", "fp16"):
        return Plan("torch", precision)
    problem = export_problem(export)
    usable = export if problem is None else None  # the export, when its paths may run
    if precision == "auto" and usable is not None and usable.openvino_passed and backends.openvino_installed():
        if not backends.fast_int8():
            return Plan("openvino")
        if usable.openvino_int8_passed:
            return Plan("openvino-int8")
        failed = "openvino-int8" in usable.check  # else not made yet: nothing failed
        return Plan("openvino", reason=f"int8 is not used: {usable.failure('openvino-int8')}" if failed else None)
    why = _why_not_openvino(export, problem) if precision == "auto" else None
    bf16_failed = usable is not None and usable.bf16_failed
    if precision == "auto" and backends.native_bf16() and not bf16_failed:
        return Plan("torch", "bf16", why)
    if usable is not None:
        bf16_why = usable.failure("torch-bf16") if bf16_failed else None
        return Plan("onnx", "fp32", "; ".join(filter(None, [why, bf16_why])) or None)
    return Plan("torch", "fp32", why or f"torch fp32 runs: {problem}")


def _explicit(backend: str, export: OnnxExport | None) -> Plan:
    """A backend named by the user: run it (even from an export that failed its check), or say why it cannot."""
    if export is None or not backends.onnxruntime_installed():
        return Plan(
            "torch",
            "fp32",
            f"--backend {backend} needs the model's ONNX export: {export_problem(export)}; torch fp32 runs instead",
        )
    if backend.startswith("openvino") and not backends.openvino_installed():
        return Plan(
            "onnx",
            "fp32",
            f"--backend {backend}: OpenVINO is not installed (pip install openvino); ONNX Runtime fp32 runs instead",
        )
    if backend == "openvino-int8" and not export.openvino_int8_path.is_file():
        made = export.check.get("openvino-int8", {}).get("error", "see the export's check")
        return Plan(
            "openvino", reason=f"--backend openvino-int8: no int8 tower could be made ({made}); OpenVINO runs instead"
        )
    if backend == "onnx-int8" and not export.image_int8_path.is_file():
        made = export.check.get("int8", {}).get("error", "see the export's check")
        return Plan(
            "onnx", "fp32", f"--backend onnx-int8: no int8 tower could be made ({made}); ONNX Runtime fp32 runs instead"
        )
    return Plan(backend)


def _why_not_openvino(export: OnnxExport | None, problem: str | None) -> str | None:
    if problem is not None and export is not None:
        return f"the model's ONNX export is not used: {problem}"
    if not backends.openvino_installed():
        return None  # not offered on this platform: nothing to explain
    if problem is not None or export is None:
        return f"OpenVINO is not used: {problem}"
    if "openvino" not in export.check:
        return "OpenVINO is not used: the export has no OpenVINO check"
    return f"OpenVINO is not used: {export.failure('openvino')}"


def _torch_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if backends.native_bf16() else "fp32"
    return precision


def for_query(model: ModelConfig, export: OnnxExport | None) -> Plan:
    """What encodes a query in a process that has no model loaded: the torch-free ONNX towers, or torch."""
    if model.backend == "torch" or model.device not in ("auto", "cpu") or model.precision not in ("auto", "fp32"):
        return Plan("torch", model.precision)  # asked for outright
    problem = export_problem(export)
    if problem is None and export is not None and not export.torch_free_text:
        problem = f"its tokenizer ({export.meta.get('tokenizer')}) needs open_clip"
    if problem is None and export is not None and not export.torch_free_images:
        problem = f"its image transform ({export.meta.get('preprocess', {}).get('resize_mode')}) needs torchvision"
    if problem is None:
        return Plan("onnx")
    return Plan("torch", model.precision, f"queries load torch: {problem}")


def query_encoder(model: ModelConfig) -> tuple[Any, Plan]:
    """(the torch-free query encoder, or None when torch must encode; the plan, with its reason)."""
    export = backends.runnable_export(model)
    plan = for_query(model, export)
    if plan.runner == "torch" or export is None:
        return None, plan
    from .inference.query import OnnxQueryEncoder

    return OnnxQueryEncoder(export), plan


# How many images one run must embed before ``auto`` spends the one-time making of OpenVINO's int8 tower on it
# (ViT-B-32: ~15 s to calibrate, quantize and judge, for ~4.5 ms an image saved end to end: docs/performance.md).
# A smaller run goes on with bf16; once made, the int8 tower runs for any run.
INT8_WORTH_FILES = 2000


def with_asked_towers(model: ModelConfig, export: OnnxExport | None, files: int = 0, stage=None) -> OnnxExport | None:
    """The export with what ``model`` asks for that an export does not make up front, made and judged on first use:
    ONNX Runtime's int8 image tower for ``--backend onnx-int8`` (``auto`` never runs it), OpenVINO's for
    ``--backend openvino-int8``, and for ``auto`` on a CPU with VNNI where OpenVINO passed its check, in a run that
    embeds at least INT8_WORTH_FILES images (``files``). ``stage`` is told when it is being made."""
    if export is None or not backends.onnxruntime_installed():
        return export
    if model.backend == "onnx-int8":
        from .inference.onnx import with_int8

        return with_int8(export)
    if _wants_openvino_int8(model, export, files):
        from .inference.openvino import with_int8 as with_openvino_int8

        if stage is not None and "openvino-int8" not in export.check:
            stage("quantizing the image tower to int8 for this CPU (once per model)")
        return with_openvino_int8(export)
    return export


def _wants_openvino_int8(model: ModelConfig, export: OnnxExport, files: int) -> bool:
    if not backends.openvino_installed():
        return False
    if model.backend == "openvino-int8":
        return True
    if "openvino-int8" not in export.check and files < INT8_WORTH_FILES:
        return False  # not worth making for this run
    chosen = model.backend == "auto" and model.precision == "auto" and backends.fast_int8()
    return chosen and export_problem(export) is None and export.openvino_passed


def file_encoder(model: ModelConfig, decode: str, files: int = 0, stage=None) -> tuple[Any, Plan | None]:
    """(the torch-free file encoder, its plan) when the model's cached export runs the files on this CPU, else
    (None, None): torch embeds them (and makes the export on a model's first run). ``files``: how many images the
    run embeds; ``stage``: told of a slow step (``with_asked_towers``)."""
    if decode == "tensor" or on_cuda(model) or model.backend == "torch" or not backends.onnxruntime_installed():
        return None, None
    export = with_asked_towers(model, backends.find_export(model), files, stage)
    plan = for_files(model, export, cuda=False)
    if export is None or not plan.uses_export or not export.torch_free_images:
        return None, None
    from .inference.files import ExportImageFiles

    return ExportImageFiles(export, plan.runner), plan
