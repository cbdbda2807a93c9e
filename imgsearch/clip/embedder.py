"""CLIP embeddings in torch: the towers, and the pipeline that decodes files in worker processes for them.

Every vector leaving this module is L2-normalised float32, shape (n, dim), from a model in eval mode. The model
is created lazily, on first use, never at import time. Which runner embeds (torch, or the model's exported towers)
is decided by ``imgsearch/encoders.py``; this module runs what it decides.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from .. import encoders
from ..config import IndexingConfig, ModelConfig
from ..errors import BadInputError, ExportDamagedError
from ..images import loader, prepared
from ..inference import backends, probes
from ..inference.onnx import OnnxTowers
from ..inference.preprocess import input_size
from ..records import EmbeddedBatch
from .export import export, normalised
from .models import ClipModel, Loaded, first_sentence, load_model, model_dim, preprocess_cfg, resolve_device

_TEXT_BATCH = 256


class _TorchTowers:
    """The model's towers in torch: fp32, fp16/bf16 autocast on CUDA, or bf16 weights on CPU. The model must be in
    eval mode: in training mode BatchNorm, dropout and drop-path compute wrong vectors that look right."""

    def __init__(self, model: ClipModel, device: str, precision: str):
        self.model, self.device, self.precision = model, device, precision
        self.label = f"torch {precision}" if precision != "auto" else "torch"

    def _eval_mode(self) -> None:
        training = [name for name, m in self.model.named_modules() if m.training]
        if training:  # an internal invariant: something put the model into training mode
            raise RuntimeError(
                f"the model is in training mode ({len(training)} modules, e.g. {training[0]!r}); "
                "its vectors would be wrong"
            )

    def _autocast(self):
        if self.device.startswith("cuda") and self.precision in ("auto", "fp16", "bf16"):
            return torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
        return contextlib.nullcontext()

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.to(torch.bfloat16) if x.is_floating_point() and self._bf16_weights else x

    @property
    def _bf16_weights(self) -> bool:
        return self.precision == "bf16" and not self.device.startswith("cuda")

    def encode_image(self, pixels: torch.Tensor) -> np.ndarray:
        self._eval_mode()
        with torch.inference_mode(), self._autocast():
            return normalised(self.model.encode_image(self._input(pixels)))

    def encode_text(self, tokens: torch.Tensor) -> np.ndarray:
        self._eval_mode()
        with torch.inference_mode(), self._autocast():
            return normalised(self.model.encode_text(self._input(tokens)))


class _ExportRunner:
    """The exported towers fed from torch tensors (the indexing pipeline and tokenizer stay): images by OpenVINO
    or ONNX Runtime (fp32, int8), texts by ONNX Runtime fp32."""

    def __init__(self, images, texts, label: str):
        self.images, self.texts, self.label = images, texts, label

    def encode_image(self, pixels: torch.Tensor) -> np.ndarray:
        return self.images.encode_image(pixels.numpy())

    def encode_text(self, tokens: torch.Tensor) -> np.ndarray:
        return self.texts.encode_text(tokens.numpy())


class Embedder:
    """Turns texts, PIL images and image files into normalised CLIP vectors.

    What runs the towers (torch fp32/bf16/fp16, or the exported towers in OpenVINO or ONNX Runtime) is decided on
    first use by ``encoders.for_files``; ``backend`` names it and ``notes`` say why a faster path was not taken.
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        self.config = config
        self._loaded: Loaded | None = None
        self._device: str | None = None
        self._towers = None
        self.notes: list[str] = []  # why a faster path was not taken, for `info` and the index run's report
        self.stage: Callable[[str], None] = lambda name: None  # told each slow step of loading, for a progress bar
        self._files = 0  # how many images the run loading the model embeds (``load``)

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self.config.device)
        return self._device

    def _parts(self) -> Loaded:
        if self._loaded is None:
            self._loaded = load_model(self.config, self.device)
        return self._loaded

    @property
    def model(self) -> torch.nn.Module:
        return self._parts().model

    @property
    def recipe(self):
        """How the weights are run (``clip.models.Recipe``): the preprocessing and activation of their tag."""
        return self._parts().recipe

    @property
    def recipe_record(self) -> dict:
        return self.recipe.to_dict()

    def load(self, stage: Callable[[str], None] | None = None, files: int = 0) -> Embedder:
        """Create the model now (downloading it if needed) rather than on first use; ``stage`` is told each slow
        step (loading, the one-time export and its check) as it starts; ``files``: how many images the run that
        loads it embeds (a run worth it makes the towers an export does not: ``encoders.with_asked_towers``)."""
        told, self.stage = self.stage, stage or self.stage
        self._files = files
        try:
            self._runner()
        finally:
            self.stage = told  # only this load: a progress bar closed afterwards is never told again
        return self

    @property
    def backend(self) -> str:
        """What runs the towers, e.g. "torch bf16" or "onnx fp32"."""
        return self._runner().label

    def _runner(self):
        if self._towers is None:
            self._towers = self._choose_runner()
        return self._towers

    def _choose_runner(self):
        model, cuda = self._parts().model, self.device.startswith("cuda")
        if cuda and self.config.backend not in ("auto", "torch"):
            raise BadInputError(
                f"the {self.config.backend} backend runs on the CPU; use --device cpu, or --backend torch on a GPU"
            )
        export_ = self.export_onnx() if not cuda and self.config.backend != "torch" else None
        export_ = encoders.with_asked_towers(self.config, export_, self._files, self.stage)
        plan = encoders.for_files(self.config, export_, cuda)
        if plan.reason:
            self.notes.append(plan.reason)
        if plan.uses_export:
            from ..inference.files import image_tower

            images, label = image_tower(export_, plan.runner)
            return _ExportRunner(images, OnnxTowers(export_), label)
        if plan.precision == "bf16" and not cuda:
            return self._bf16_towers(model)
        return _TorchTowers(model, self.device, plan.precision)

    def _bf16_towers(self, model: ClipModel) -> _TorchTowers:
        """bf16 weights, cast once, if they pass the guard on the probes against fp32 (``probes.judge``); else
        fp32, with a note. Asked for by name (``precision="bf16"``), bf16 runs whatever the probes say."""
        fp32 = _TorchTowers(model, self.device, "fp32")
        half = _TorchTowers(_cast_copy(model, torch.bfloat16), self.device, "bf16")
        pixels, tokens = self._probes
        verdict = probes.judge(
            fp32.encode_image(pixels), fp32.encode_text(tokens), half.encode_image(pixels), half.encode_text(tokens)
        )
        if verdict.passed or self.config.precision == "bf16":
            import dataclasses

            self._loaded = dataclasses.replace(self._parts(), model=half.model)  # the fp32 weights are freed
            return half
        self.notes.append(
            f"bf16 failed its check against fp32 ({probes.Verdict.describe(verdict.to_dict())}); fp32 runs"
        )
        return fp32

    @functools.cached_property
    def _probes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixels, tokens) of the fixed probe images and texts, made once for every quality check."""
        loaded = self._parts()
        return torch.stack([loaded.preprocess(im) for im in probes.images()]), loaded.tokenizer(list(probes.TEXTS))

    def export_onnx(self):
        """This model's ONNX towers in the cache (exported and checked once), or None if it cannot be exported.

        On CPU, ``auto`` exports while loading (from the fp32 weights), so that later queries need no torch."""
        if not backends.onnxruntime_installed():
            return None
        found = backends.find_export(self.config)
        if found is not None:
            try:
                OnnxTowers(found, threads=1).check()
                return found
            except ExportDamagedError as exc:  # removed: made again below
                self.notes.append(f"{exc}: made again now")
        try:
            return export(self._parts(), self.config, *self._probes, stage=self.stage)
        except Exception as exc:  # a full disk, an architecture the exporter cannot handle: torch still works
            full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc)
            self.notes.append(
                f"no space left in {backends.cache_dir()} for the model's export (a few hundred MB): torch runs, "
                "slower, until there is; free some space there, or set $IMGSEARCH_CACHE to a folder on another disk"
                if full
                else f"the ONNX export failed ({first_sentence(exc)}): torch runs"
            )
            return None

    @property
    def preprocess(self) -> Callable:
        """The model's own image transform: PIL image -> tensor (3, H, W)."""
        return self._parts().preprocess

    @property
    def dim(self) -> int:
        return model_dim(self.config)

    @property
    def image_size(self) -> int:
        return max(input_size(self._parts().model.visual.image_size))

    def encode_preprocessed(self, batch: torch.Tensor) -> np.ndarray:
        """Forward a batch of already-preprocessed image tensors (N, 3, H, W)."""
        return self._runner().encode_image(batch)

    def embed_texts(self, texts: Sequence[str], batch_size: int = _TEXT_BATCH) -> np.ndarray:
        runner, tokenizer = self._runner(), self._parts().tokenizer
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(texts), batch_size):
            out.append(runner.encode_text(tokenizer(list(texts[start : start + batch_size]))))
        return np.concatenate(out)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = IndexingConfig.batch_size) -> np.ndarray:
        """PIL images, ``batch_size`` per forward pass (a pass holds its activations: hundreds at once would not fit)."""
        preprocess, out = self._parts().preprocess, [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            out.append(self.encode_preprocessed(torch.stack([preprocess(im.convert("RGB")) for im in chunk])))
        return np.concatenate(out)

    def embed_files(self, paths: Sequence[str], settings: IndexingConfig = IndexingConfig()) -> Iterator[EmbeddedBatch]:
        """Decode files in worker processes (overlapping the model) and embed them batch by batch.

        Unreadable files come back as failures with a reason; they never stop the run.
        """
        preprocess, paths = self._parts().preprocess, list(paths)
        decode = self.decode_mode(settings.decode)
        if decode == "tensor":
            yield from self._embed_on_device(paths, settings)
            return
        dataset = _FileDataset(paths, preprocess, self.image_size, settings.max_pixels, decode)
        for positions, details, tensors, failures in self._loader(dataset, _collate, settings):
            vectors = self.encode_preprocessed(tensors) if tensors is not None else np.zeros((0, self.dim), np.float32)
            yield EmbeddedBatch(positions, details, vectors, failures)

    @functools.cached_property
    def gpu_batch(self) -> int:
        """Images per forward pass on this CUDA device: the largest of 128..1024 whose pass (zeros, this model, its
        precision) fits using at most 60% of the GPU's memory; 64 if none does. Probed once. Unmeasured on a GPU so
        far (docs/performance.md)."""
        side, chosen = self.image_size, 64
        total = torch.cuda.get_device_properties(self.device).total_memory
        for size in (128, 256, 512, 1024):
            torch.cuda.reset_peak_memory_stats(self.device)
            try:
                self.encode_preprocessed(torch.zeros(size, 3, side, side, device=self.device))
                fits = torch.cuda.max_memory_allocated(self.device) <= 0.6 * total
            except torch.cuda.OutOfMemoryError:
                fits = False
            torch.cuda.empty_cache()
            if not fits:
                break
            chosen = size
        return chosen

    def decode_mode(self, asked: str) -> str:
        """``IndexingConfig.decode`` resolved: "auto" is "tensor" (JPEGs decoded on the GPU) on a CUDA device when the
        model's transform is the plain CLIP one, else "fast" (Pillow)."""
        if asked in ("auto", "tensor"):
            from .tensor_decode import Transform

            plain = Transform.for_model(preprocess_cfg(self._parts().model)) is not None
            return "tensor" if plain and (asked == "tensor" or self.device.startswith("cuda")) else "fast"
        return asked

    def _embed_on_device(self, paths: list[str], settings: IndexingConfig) -> Iterator[EmbeddedBatch]:
        """JPEGs read in workers and decoded, resized and normalised on the model's device (tensor_decode.py)."""
        from . import tensor_decode

        model, preprocess = self._parts().model, self._parts().preprocess
        dataset = tensor_decode.TensorFiles(paths, preprocess, loader("fast"), self.image_size, settings.max_pixels)
        transform = tensor_decode.Transform.for_model(preprocess_cfg(model))
        assert transform is not None, "decode_mode chooses decoding on the device only for CLIP's plain transform"
        decoder = tensor_decode.DeviceDecoder(transform, self.device, dataset.pillow)
        for items in self._loader(dataset, tensor_decode.collate, settings):
            positions, details, pixels, failures = decoder(items)
            vectors = self.encode_preprocessed(pixels) if pixels is not None else np.zeros((0, self.dim), np.float32)
            yield EmbeddedBatch(positions, details, vectors, failures)

    def _loader(self, dataset, collate: Callable, settings: IndexingConfig) -> torch.utils.data.DataLoader:
        """Batches of ``dataset`` items, decoded ahead in worker processes that die with this one."""
        n, gpu = len(dataset), self.device.startswith("cuda")
        batch = (settings.gpu_batch_size or self.gpu_batch) if gpu else settings.batch_size
        workers = min(settings.resolved_workers(gpu), max(1, n // batch)) if n > batch else 0
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=gpu,
            prefetch_factor=4 if workers else None,
            worker_init_fn=functools.partial(_die_with_parent, os.getpid()),
        )


def _die_with_parent(parent: int, _worker_id: int) -> None:
    """Decode workers end with the indexer, even when it is killed with SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(0)


def _cast_copy(model: ClipModel, dtype: torch.dtype) -> ClipModel:
    import copy

    return copy.deepcopy(model).to(dtype)


class _FileDataset(torch.utils.data.Dataset):
    """Decodes one file in a worker: (position, tensor or None, details, reason)."""

    def __init__(self, paths: list[str], preprocess: Callable, min_side: int, max_pixels: int, decode: str = "fast"):
        self.paths, self.preprocess = paths, preprocess
        self.min_side, self.max_pixels = min_side, max_pixels
        self.load = loader(decode)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return i, *prepared(self.paths[i], self.load, self.preprocess, self.min_side, self.max_pixels)


def _collate(items):
    good = [it for it in items if it[1] is not None]
    failures = [(it[0], it[3]) for it in items if it[1] is None]
    tensors = torch.stack([it[1] for it in good]) if good else None
    return [it[0] for it in good], [it[2] for it in good], tensors, failures
