"""The cache of exported towers (ONNX, with the checks made when each was exported) and what this machine can run.
Imports nothing heavy. Which backend runs a model is decided in ``imgsearch/encoders.py``, from what is here.

An export lives under ``$IMGSEARCH_CACHE/onnx/<key>``: the key names one set of weights run one way (model name,
weights: tag, checkpoint path and stat, or random; the tag a checkpoint is tied to; the open_clip version; the
export format). Its ``meta.json``, written last, holds the preprocessing and tokenizer the towers expect, the
recipe, torch fp32's vectors for the fixed probes, and the verdict of each path on them (``probes.judge``:
ONNX Runtime fp32 for both towers, its int8 image tower, OpenVINO's run of the image tower and of its int8 copy). A failed check is
believed only from the imgsearch version that made it: another version exports again.
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

from ..config import ModelConfig

CACHE_ENV = "IMGSEARCH_CACHE"
# 2: weights in side files (<tower>.onnx.data); 3: the int8 and OpenVINO checks; 4: exported from a model in eval
# mode, with its recipe (preprocessing, activation), keyed by the tag a checkpoint is tied to, each path's verdict
# (cosine and ranking error) and torch's probe vectors (issue #19).
_EXPORT_FORMAT = 4


def cache_dir() -> Path:
    """$IMGSEARCH_CACHE, else $XDG_CACHE_HOME/imgsearch, else ~/.cache/imgsearch."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imgsearch"


def imgsearch_version() -> str:
    try:
        return importlib.metadata.version("imgsearch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def model_key(model: ModelConfig) -> str:
    """A name for one set of weights run one way under one open_clip version: tag, checkpoint file (by stat) and
    the tag it is tied to, or random."""
    name, pretrained = model.name, model.pretrained
    if pretrained and os.path.isfile(pretrained):
        st = os.stat(pretrained)
        weights = f"file:{os.path.abspath(pretrained)}:{st.st_size}:{st.st_mtime_ns}"
    else:
        weights = f"tag:{pretrained}" if pretrained else "random:seed0"
    try:
        version = importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    tied = f"|as:{model.pretrained_as}" if model.pretrained_as else ""
    digest = hashlib.blake2b(f"{name}|{weights}{tied}|{version}|{_EXPORT_FORMAT}".encode(), digest_size=8).hexdigest()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"{safe}-{digest}"


@dataclass(frozen=True)
class OnnxExport:
    """A cached export: both towers, what preprocessing and tokenizing they expect, and their check."""

    folder: Path
    meta: dict

    @property
    def check(self) -> dict:
        """Each path's verdict on the probes (``probes.Verdict.to_dict``, or {"error": ...}): "onnx" (both towers in
        ONNX Runtime fp32), "int8" (its int8 image tower), "openvino" (OpenVINO's run of the image tower),
        "openvino-int8" (OpenVINO's run of the image tower with its MLP layers in int8)."""
        return self.meta.get("check", {})

    def _passed(self, path: str) -> bool:
        return bool(self.check.get(path, {}).get("passed"))

    @property
    def passed(self) -> bool:
        return self._passed("onnx")

    def failure(self, path: str = "onnx") -> str | None:
        """Why ``auto`` may not use a path of this export (its check failed), or None."""
        if self.passed and self._passed(path):
            return None
        failed = path if self.passed else "onnx"
        what = {
            "onnx": "the export",
            "int8": "its int8 tower",
            "openvino": "OpenVINO",
            "openvino-int8": "OpenVINO's int8 tower",
            "torch-bf16": "torch with bf16 weights",
        }[failed]
        from .probes import Verdict  # numpy and Pillow: only when there is something to say

        return f"{what} failed its check against torch fp32: {Verdict.describe(self.check.get(failed, {}))}"

    @property
    def int8_passed(self) -> bool:
        """Whether the int8 image tower exists and passed its check (cosine bound MIN_COSINE_INT8)."""
        return self.passed and self._passed("int8") and self.image_int8_path.is_file()

    @property
    def openvino_passed(self) -> bool:
        """Whether OpenVINO ran the image tower within the guard when the export was checked."""
        return self.passed and self._passed("openvino")

    @property
    def openvino_int8_passed(self) -> bool:
        """Whether OpenVINO's int8 image tower exists and passed its check (the fp32 bound, MIN_COSINE)."""
        return self.openvino_passed and self._passed("openvino-int8") and self.openvino_int8_path.is_file()

    @property
    def bf16_failed(self) -> bool:
        """Whether torch with bf16 weights was judged at export and failed (not judged: False)."""
        record = self.check.get("torch-bf16")
        return record is not None and not record.get("passed")

    @property
    def image_int8_path(self) -> Path:
        return self.folder / "image.int8.onnx"

    @property
    def openvino_int8_path(self) -> Path:
        return self.folder / "image.mlp-int8.onnx"

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
        """Whether texts can be tokenized without open_clip: its CLIP BPE tokenizer, or a Hugging Face tokenizer
        saved beside the towers (read with the ``tokenizers`` package)."""
        kind = self.meta.get("tokenizer")
        if kind == "clip-bpe":
            return True
        return (
            kind == "hf"
            and (self.folder / "tokenizer.json").is_file()
            and importlib.util.find_spec("tokenizers") is not None
        )

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

    @property
    def recipe_record(self) -> dict:
        """The recipe the export was made with (``clip.models.Recipe.to_dict``)."""
        return self.export.meta["recipe"]


def export_folder(model: ModelConfig) -> Path:
    return cache_dir() / "onnx" / model_key(model)


def find_export(model: ModelConfig) -> OnnxExport | None:
    """The cached export of this model, or None: absent, incomplete, from another format, or failed by another
    imgsearch version (whose export code may have been the cause: it is made again)."""
    folder = export_folder(model)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    found = OnnxExport(folder, meta)
    if meta.get("format") != _EXPORT_FORMAT or not (found.text_path.is_file() and found.image_path.is_file()):
        return None
    if not found.passed and meta.get("imgsearch") != imgsearch_version():
        return None
    return found


def discard(export: OnnxExport, reason: str):
    """Remove a damaged export (a later run that loads the model in torch makes it again) and return the error
    that says so. Renamed first, so that no process finds it half removed."""
    from ..errors import ExportDamagedError

    gone = export.folder.with_name(f"{export.folder.name}.damaged.{os.getpid()}")
    try:
        os.rename(export.folder, gone)
    except OSError:
        pass  # removed by another process already
    shutil.rmtree(gone, ignore_errors=True)
    return ExportDamagedError(
        f"the cached export of {export.meta.get('model')} ({export.folder}) was damaged: {reason}; it was removed, "
        "and the next index run makes it again"
    )


# How far below its cosine at export a loaded tower may fall on the probes before it is taken for damaged: the
# same graph computes the same vectors (to ~1e-6 on one machine); a damaged weight file falls far below.
_INTACT_SLACK = 0.01


def verify(export: OnnxExport, tower: str, vectors, path: str = "onnx") -> None:
    """Raise ExportDamagedError (removing the export) unless ``vectors``, what a loaded ``tower`` ("image" or
    "text") of ``path`` ("onnx", "int8", "openvino") computed for the first probes, match what torch computed for
    them when the export was made, as closely as that path did then."""
    from .probes import min_cosine

    bound = float(export.check.get(path, {}).get("cosine", 1.0)) - _INTACT_SLACK
    recorded = export.meta.get("probes", {}).get(tower)
    if not recorded:
        raise discard(export, "it holds no probe vectors to check it with")
    cosine = min_cosine(vectors, recorded[: len(vectors)])
    if not cosine >= bound:  # NaN fails too
        raise discard(
            export,
            f"its {tower} tower computes other vectors than when it was made (cosine {cosine:.4f} "
            f"on the probes, at least {bound} expected)",
        )


def add_tower(export: OnnxExport, key: str, target: Path, make, run, bound: float) -> OnnxExport:
    """The export with one more image tower, made on first use and judged against torch fp32's probe vectors:
    ``make(path)`` writes it at ``path`` (side files beside it), ``run(path, pixels)`` computes its vectors, ``bound``
    is the least cosine it must keep. The verdict is recorded in ``meta.json`` under ``key`` like the export's own
    checks, a failure included, so that it is made at most once; its files are made in a private folder and
    published whole (renamed, the tower itself last)."""
    import numpy as np

    from ..errors import first_sentence
    from . import probes

    if key in export.check and (target.is_file() or not export.check[key].get("passed")):
        return export
    recorded = export.meta.get("probes", {})
    remove_dead_work(export.folder)  # a quantization killed half way: ~100 MB
    work = export.folder / f"{key}.{os.getpid()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        made = work / target.name
        make(made)
        pixels = probes.pixels(export.meta["preprocess"], len(recorded["image"]))
        texts = np.asarray(recorded["text"], np.float32)
        images = run(made, pixels)
        verdict = probes.judge(np.asarray(recorded["image"], np.float32), texts, images, texts, bound).to_dict()
        for part in sorted(work.iterdir(), key=lambda f: f.name == target.name):
            os.replace(part, export.folder / part.name)
    except Exception as exc:  # an op the quantizer cannot handle, a full disk: the other paths still work
        verdict = {"passed": False, "error": first_sentence(exc)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {k: v for k, v in export.meta.items() if k not in ("format", "imgsearch")}
    meta["check"] = {**export.check, key: verdict}
    return OnnxExport(export.folder, write_meta(export.folder, meta))


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


def remove_dead_work(folder: Path) -> list[Path]:
    """Private folders of exports, or files in an export, whose process is gone (killed: up to ~700 MB each), and
    half-removed exports."""
    removed = []
    for work in folder.glob("*.*.tmp"):
        pid = work.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            if work.is_dir():
                shutil.rmtree(work, ignore_errors=True)
            else:
                work.unlink(missing_ok=True)
            removed.append(work)
    for gone in folder.glob("*.damaged.*"):
        shutil.rmtree(gone, ignore_errors=True)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def write_meta(folder: Path, meta: dict) -> dict:
    """meta.json last and atomically: its presence means both towers are complete. Returns what it wrote."""
    written = {"format": _EXPORT_FORMAT, "imgsearch": imgsearch_version(), **meta}
    tmp = folder / f"meta.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(written, indent=1))
    os.replace(tmp, folder / "meta.json")
    return written


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def runnable_export(model: ModelConfig) -> OnnxExport | None:
    """The model's cached export when ONNX Runtime is here to run it, else None."""
    return find_export(model) if onnxruntime_installed() else None


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


# The flags of x86 CPUs that multiply int8 natively.
_NATIVE_INT8 = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_saturates() -> bool:
    """Whether this is an x86 CPU without VNNI, where ONNX Runtime's u8 x s8 products saturate (its docs: quantize
    with reduce_range there)."""
    flags = cpu_flags()
    return "sse2" in flags and not flags & _NATIVE_INT8


def fast_int8() -> bool:
    """Whether this CPU multiplies int8 natively (VNNI, AMX): where int8 runs faster than bf16 (docs/performance.md)."""
    return bool(cpu_flags() & _NATIVE_INT8)


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


@dataclass(frozen=True)
class CachedExport:
    """One export in the cache, as `imgsearch cache` lists it."""

    folder: Path
    model: str
    pretrained: str | None
    pretrained_as: str | None
    bytes: int
    last_used: float  # when a process last opened it (its meta.json's access time, or its modification time)
    current: bool  # in this imgsearch's format, so a run may use it

    def to_dict(self) -> dict:
        return {**self.__dict__, "folder": str(self.folder)}


def cached_exports() -> list[CachedExport]:
    """Every export in the cache (largest first), current or not, and the leftovers of killed ones."""
    found = []
    for folder in sorted((cache_dir() / "onnx").glob("*")):
        if not folder.is_dir():
            continue
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        try:
            st = (folder / "meta.json").stat()
            used = max(st.st_atime, st.st_mtime)
        except OSError:
            used = folder.stat().st_mtime
        found.append(
            CachedExport(
                folder,
                meta.get("model", folder.name),
                meta.get("pretrained"),
                meta.get("pretrained_as"),
                size,
                used,
                meta.get("format") == _EXPORT_FORMAT,
            )
        )
    return sorted(found, key=lambda e: -e.bytes)


def remove_exports(model: str | None = None, unused_days: float | None = None) -> list[CachedExport]:
    """Remove the exports of ``model`` (every tag and file of it), or those not used for ``unused_days`` (and any
    of another format or left by a killed export); the next run that needs one makes it again."""
    import time

    now, removed = time.time(), []
    for export in cached_exports():
        if model is not None and export.model != model:
            continue
        if model is None and export.current and (unused_days is None or now - export.last_used < unused_days * 86400):
            continue
        shutil.rmtree(export.folder, ignore_errors=True)
        removed.append(export)
    return removed
