"""Which backend runs a model, and where its exported ONNX towers are cached. Imports nothing heavy.

The rule behind ``auto`` (measured, docs/performance.md):
- on a CUDA device, torch (fp16 autocast);
- on a CPU, OpenVINO running the exported image tower when it is installed and passed its check (bf16 on CPUs
  with native bf16, else fp32): the fastest path measured on CPU that passes the quality guard, and indexing
  then never imports torch;
- else, on a CPU with native bf16 (AVX512-BF16 or AMX), torch with bf16 weights: 2.2x fp32 on ViT-B-32;
- else ONNX Runtime fp32 when its export exists and passed its check;
- a single query on CPU uses the fp32 ONNX towers whenever they are cached: no torch import, a sub-second process.
``onnx-int8`` (the image tower quantized to int8 by ONNX Runtime) is faster still but is only run when asked for:
on the shared photos its top-10 overlap with fp32 was 0.941-0.949, under the 0.95 guard (docs/performance.md).
A path that failed its quality check (cosine to torch fp32 below ``MIN_COSINE``, ``MIN_COSINE_INT8`` for int8) is
never chosen by ``auto``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError

BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "openvino")
CACHE_ENV = "IMGSEARCH_CACHE"
# Quality guard for 16-bit and exported paths: every probe vector's cosine to torch fp32.
MIN_COSINE = 0.999
MIN_COSINE_INT8 = 0.99  # issue #6's bar for 8-bit paths
_EXPORT_FORMAT = 3  # 2: weights in side files (<tower>.onnx.data); 3: the int8 and OpenVINO checks


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise BadInputError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    return name


def cache_dir() -> Path:
    """$IMGSEARCH_CACHE, else $XDG_CACHE_HOME/imgsearch, else ~/.cache/imgsearch."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imgsearch"


def model_key(name: str, pretrained: str | None) -> str:
    """A name for one set of weights under one open_clip version: tag, checkpoint file (by stat), or random."""
    if pretrained and os.path.isfile(pretrained):
        st = os.stat(pretrained)
        weights = f"file:{os.path.abspath(pretrained)}:{st.st_size}:{st.st_mtime_ns}"
    else:
        weights = f"tag:{pretrained}" if pretrained else "random:seed0"
    try:
        version = importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.blake2b(f"{name}|{weights}|{version}|{_EXPORT_FORMAT}".encode(), digest_size=8).hexdigest()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"{safe}-{digest}"


@dataclass(frozen=True)
class OnnxExport:
    """A cached export: both towers, what preprocessing and tokenizing they expect, and their check."""

    folder: Path
    meta: dict

    @property
    def passed(self) -> bool:
        return bool(self.meta.get("check", {}).get("passed"))

    @property
    def int8_passed(self) -> bool:
        """Whether the int8 image tower exists and kept its probes within MIN_COSINE_INT8 of torch fp32."""
        return self.passed and bool(self.meta.get("check", {}).get("int8_passed")) and self.image_int8_path.is_file()

    @property
    def openvino_passed(self) -> bool:
        """Whether OpenVINO ran the image tower within MIN_COSINE of torch fp32 when the export was checked."""
        return self.passed and bool(self.meta.get("check", {}).get("openvino_passed"))

    @property
    def image_int8_path(self) -> Path:
        return self.folder / "image.int8.onnx"

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def image_size(self) -> int:
        """The longer side of the model's input, the least a decoder may shrink an image to."""
        from .preprocess import input_size  # PIL and numpy: only when asked

        return max(input_size(self.meta["preprocess"]["size"]))

    @property
    def text_path(self) -> Path:
        return self.folder / "text.onnx"

    @property
    def image_path(self) -> Path:
        return self.folder / "image.onnx"

    @property
    def torch_free_text(self) -> bool:
        """Whether texts can be tokenized without open_clip (its CLIP BPE tokenizer)."""
        return self.meta.get("tokenizer") == "clip-bpe"

    @property
    def torch_free_images(self) -> bool:
        return self.meta.get("preprocess", {}).get("resize_mode") in ("shortest", "squash")


class FromExport:
    """``dim`` and ``image_size`` of an encoder built on ``self.export``, as ``Embedder`` has them."""

    export: OnnxExport

    @property
    def dim(self) -> int:
        return self.export.dim

    @property
    def image_size(self) -> int:
        return self.export.image_size


def export_folder(name: str, pretrained: str | None) -> Path:
    return cache_dir() / "onnx" / model_key(name, pretrained)


def find_export(name: str, pretrained: str | None) -> OnnxExport | None:
    """The cached export of this model, or None (absent, incomplete or from another format)."""
    folder = export_folder(name, pretrained)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    found = OnnxExport(folder, meta)
    if meta.get("format") != _EXPORT_FORMAT or not (found.text_path.is_file() and found.image_path.is_file()):
        return None
    return found


def remove_stale_exports() -> list[Path]:
    """Delete cached exports in an older format (never read again: their keys include the format)."""
    removed = []
    for meta in (cache_dir() / "onnx").glob("*/meta.json"):
        try:
            stale = json.loads(meta.read_text()).get("format") != _EXPORT_FORMAT
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(meta.parent, ignore_errors=True)
            removed.append(meta.parent)
    return removed


def write_meta(folder: Path, meta: dict) -> None:
    """meta.json last and atomically: its presence means both towers are complete."""
    tmp = folder / f"meta.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"format": _EXPORT_FORMAT, **meta}, indent=1))
    os.replace(tmp, folder / "meta.json")


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (else bf16 is emulated and slower than fp32)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_plan(backend: str, precision: str, export: OnnxExport | None = None) -> tuple[str, str]:
    """(backend, precision) for bulk work on a CPU, given the model's cached export (or None); explicit choices
    are kept. ("onnx", "int8") runs the int8 image tower; ("openvino", "auto") lets OpenVINO pick (bf16 or fp32)."""
    if backend == "onnx-int8":
        return "onnx", "int8"
    if backend == "openvino" or (backend == "auto" and precision == "auto" and export is not None
                                 and export.openvino_passed and openvino_installed()):
        return "openvino", "auto"
    if backend == "auto":
        wants_torch = precision in ("bf16", "fp16") or (precision == "auto" and native_bf16())
        backend = "torch" if wants_torch or not onnxruntime_installed() else "onnx"
    if precision == "auto":
        precision = "bf16" if backend == "torch" and native_bf16() else "fp32"
    return backend, precision


def export_plan(backend: str, precision: str, export: OnnxExport | None) -> str | None:
    """What runs an export's image tower for bulk work on a CPU: "openvino", "int8" or "fp32" (ONNX Runtime), or
    None when torch runs (the plan says so, or there is no export auto may use). A backend named explicitly runs
    an export that failed its check, as asked; ``auto`` never does. Missing pieces fall back to ONNX fp32."""
    if export is None:
        return None
    plan_backend, plan_precision = cpu_plan(backend, precision, export)
    if plan_backend not in ("onnx", "openvino") or not (export.passed or backend != "auto"):
        return None
    if plan_backend == "openvino" and openvino_installed():
        return "openvino"
    if plan_precision == "int8" and export.image_int8_path.is_file() and (export.int8_passed or backend == "onnx-int8"):
        return "int8"
    return "fp32"


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def cuda_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process, asked without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return os.path.exists("/dev/nvidia0")
