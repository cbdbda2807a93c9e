"""Which backend runs a model, and where its exported ONNX towers are cached. Imports nothing heavy.

The rule behind ``auto`` (measured, docs/performance.md):
- on a CUDA device, torch (fp16 autocast);
- on a CPU with native bf16 (AVX512-BF16 or AMX), torch with bf16 weights: 2.8x fp32 on ViT-B-32;
- on other CPUs, ONNX Runtime fp32 (2.0x torch fp32) when its export exists and passed its check;
- a single query on CPU uses the ONNX towers whenever they are cached: no torch import, a sub-second process.
A path that failed its quality check (cosine to torch fp32 below ``MIN_COSINE``) is never chosen by ``auto``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError

BACKENDS = ("auto", "torch", "onnx")
CACHE_ENV = "IMGSEARCH_CACHE"
# Quality guard for 16-bit and exported paths: every probe vector's cosine to torch fp32.
MIN_COSINE = 0.999
_EXPORT_FORMAT = 1


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


def cpu_plan(backend: str, precision: str) -> tuple[str, str]:
    """(backend, precision) for bulk work on a CPU under ``auto``; explicit choices are kept."""
    if backend == "auto":
        wants_torch = precision in ("bf16", "fp16") or (precision == "auto" and native_bf16())
        backend = "torch" if wants_torch or not onnxruntime_installed() else "onnx"
    if precision == "auto":
        precision = "bf16" if backend == "torch" and native_bf16() else "fp32"
    return backend, precision
