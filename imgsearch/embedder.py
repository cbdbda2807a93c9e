"""CLIP embeddings: the only module that imports open_clip, and torch's owner (tensor_decode.py, which it loads for
decoding on the model's device, is the only other module that touches torch).

Every vector leaving this module is L2-normalised float32, shape (n, dim).
The model is created lazily, on first use, never at import time.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import sys
import urllib.parse
from typing import Callable, Iterator, Sequence

import numpy as np
import open_clip
import torch
from PIL import Image

from . import checkpoints
from .inference import backends
from .inference.preprocess import input_size
from .config import MODEL_CONFIGS_ENV, IndexingConfig, ModelConfig
from .errors import ModelLoadError
from .images import EmbeddedBatch, loader, prepared

_TEXT_BATCH = 256


def register_extra_model_configs() -> None:
    """Let open_clip see JSON architectures from $IMGSEARCH_MODEL_CONFIGS (custom or test models)."""
    extra = os.environ.get(MODEL_CONFIGS_ENV)
    if extra:
        open_clip.add_model_config(extra)


def resolve_device(requested: str = "auto") -> str:
    """A torch device string; a bad name or an absent GPU is a ModelLoadError naming the choices."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ModelLoadError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N (mps on Apple)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} asked for, but torch sees no CUDA GPU here; use cpu or auto")
    return requested


def _check_model_name(name: str) -> None:
    register_extra_model_configs()
    if name not in open_clip.list_models() and not name.startswith(("hf-hub:", "local-dir:")):
        raise ModelLoadError(
            f"unknown model {name!r}; choose one of open_clip's models "
            f"(e.g. ViT-B-32, ViT-B-16, ViT-L-14; `python -c 'import open_clip; print(open_clip.list_models())'` "
            f"lists all) or set {MODEL_CONFIGS_ENV} to a folder with its JSON config"
        )


def _check_pretrained(name: str, pretrained: str | None) -> None:
    if pretrained is None or os.path.exists(pretrained):
        return
    if checkpoints.is_path(pretrained):
        raise ModelLoadError(f"checkpoint file not found: {pretrained}", cli_hint="check the --pretrained path",
                             api_hint="check ModelConfig.pretrained")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tags and pretrained not in tags:
        raise ModelLoadError(
            f"unknown pretrained tag {pretrained!r} for {name}; available: {', '.join(tags)}"
        )
    _check_downloadable(name, pretrained)


def _check_downloadable(name: str, tag: str) -> None:
    """Fail in seconds, with what to do, when weights are neither cached nor reachable.

    Without this, huggingface_hub retries an unreachable host for about a minute per file.
    """
    if weights_cached(name, tag):
        return
    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    repo = os.path.split(cfg.get("hf_hub") or "")[0].rstrip("/")
    source = f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}/{repo}" if repo else cfg.get("url", "")
    problem = "HF_HUB_OFFLINE is set" if _env_true("HF_HUB_OFFLINE") else _unreachable(source)
    if problem:
        raise ModelLoadError(
            f"the weights of {name} ({tag}) are not cached and cannot be downloaded: {problem}. "
            f"They come from {source}",
            cli_hint="download them on a machine with internet (or copy its ~/.cache/huggingface) and pass the "
                     "file with --pretrained /path/to/open_clip_model.safetensors; "
                     "or try the tool with --pretrained none (random weights: results are meaningless)",
            api_hint="download them on a machine with internet and pass the file as "
                     "ModelConfig(pretrained='/path/to/open_clip_model.safetensors')",
        )


def architecture(name: str) -> dict | None:
    """open_clip's architecture config for a model name (None if unknown)."""
    register_extra_model_configs()
    return open_clip.get_model_config(name)


def weights_cached(name: str, tag: str) -> bool:
    """Whether open_clip's weights for (name, tag) are in the local cache already (no download needed)."""
    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    repo, filename = os.path.split(cfg.get("hf_hub") or "")
    repo = repo.rstrip("/")
    return _cached_on_hub(repo, filename) if repo else _cached_url(cfg.get("url") or "")


def _cached_on_hub(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    filename = filename or "open_clip_pytorch_model.bin"
    candidates = ("open_clip_model.safetensors", filename.replace(".bin", ".safetensors"), filename)
    return any(isinstance(try_to_load_from_cache(repo, c), str) for c in candidates)


def _cached_url(url: str) -> bool:
    return bool(url) and os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)))


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why url's host cannot be reached (None if it can, or if a proxy decides)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urllib.parse.urlparse(url).hostname
    if not host:
        return None
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        return f"no connection to {host} ({exc.strerror or exc})"
    return None


def load_model(config: ModelConfig, device: str) -> tuple[torch.nn.Module, Callable, Callable]:
    """Create (model, image preprocess, tokenizer) on device; raises ModelLoadError with a fix."""
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its import resets it; retries are noise
    _check_model_name(config.name)
    _check_pretrained(config.name, config.pretrained)
    try:
        with _seeded_if_random(config.pretrained):
            model, _, preprocess = open_clip.create_model_and_transforms(
                config.name, pretrained=config.pretrained, device=device
            )
        tokenizer = open_clip.get_tokenizer(config.name)
    except Exception as exc:  # network, hub, corrupt checkpoint, out of memory
        download = isinstance(exc, (OSError, ConnectionError)) or "huggingface" in type(exc).__module__
        raise ModelLoadError(
            f"could not load {config.label}: {_first_sentence(exc)}",
            cli_hint="if the download failed, fetch the checkpoint elsewhere and pass it with --pretrained FILE"
            if download else None,
            api_hint="if the download failed, fetch the checkpoint elsewhere and pass ModelConfig(pretrained=FILE)"
            if download else None,
        ) from exc
    model.eval()
    return model, preprocess, tokenizer


def _first_sentence(exc: Exception) -> str:
    text = str(exc).split(". ")[0].strip().rstrip(".")
    return f"{type(exc).__name__}: {text[:240]}"


def _seeded_if_random(pretrained: str | None):
    """Random-weight models are seeded so every process builds the same one (tests, debugging)."""
    if pretrained is not None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.random.fork_rng(devices=[]))
    torch.manual_seed(0)
    return stack


def model_dim(config: ModelConfig) -> int:
    """Embedding size from the architecture config, without creating the model."""
    return int(_architecture_or_raise(config)["embed_dim"])


def model_image_size(config: ModelConfig) -> int:
    """The image tower's input side from the architecture config, without creating the model."""
    return max(input_size(_architecture_or_raise(config)["vision_cfg"].get("image_size", 224)))


def _architecture_or_raise(config: ModelConfig) -> dict:
    cfg = architecture(config.name)
    if cfg is None:
        _check_model_name(config.name)
        raise ModelLoadError(f"no config found for model {config.name!r}")
    return cfg


# Fixed inputs for the quality checks of 16-bit and exported paths (imgsearch/inference/backends.py).
_PROBE_TEXTS = ("a photo of a dog", "a red car parked on a street", "two people on a beach at sunset",
                "a plate of food", "snow on mountains", "a cat sleeping on a sofa", "city lights at night", "")


def _probe_images(n: int = 4) -> list[Image.Image]:
    """Seeded, photo-like test images: smooth colour gradients with noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:320].astype(np.float32)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([xx / 320 * a, yy / 256 * b, (xx + yy) / 576 * c], axis=-1) * 255
        noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(noisy))
    return out


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine between two sets of normalised vectors."""
    return float(np.min(np.sum(a * b, axis=1)))


class _TorchTowers:
    """The model's towers in torch: fp32, fp16/bf16 autocast on CUDA, or bf16 weights on CPU."""

    def __init__(self, model: torch.nn.Module, device: str, precision: str):
        self.model, self.device, self.precision = model, device, precision
        self.label = f"torch {precision}" if precision != "auto" else "torch"

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
        with torch.inference_mode(), self._autocast():
            return _finish(self.model.encode_image(self._input(pixels)))

    def encode_text(self, tokens: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), self._autocast():
            return _finish(self.model.encode_text(self._input(tokens)))


class _ExportRunner:
    """The exported towers fed from torch tensors (the indexing pipeline and tokenizer stay): images by OpenVINO
    or ONNX Runtime (fp32, int8), texts by ONNX Runtime fp32."""

    def __init__(self, images, texts, label: str):
        self.images, self.texts, self.label = images, texts, label

    def encode_image(self, pixels: torch.Tensor) -> np.ndarray:
        return self.images.encode_image(pixels.numpy())

    def encode_text(self, tokens: torch.Tensor) -> np.ndarray:
        return self.texts.encode_text(tokens.numpy())


def _finish(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy().astype(np.float32, copy=False)


class Embedder:
    """Turns texts, PIL images and image files into normalised CLIP vectors.

    The backend (torch fp32/bf16/fp16, or ONNX Runtime) is chosen on first use from the config; ``backend``
    names the one that ran.
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        self.config = config
        backends.check_backend(config.backend)
        self._loaded: tuple[torch.nn.Module, Callable, Callable] | None = None
        self._device: str | None = None
        self._towers = None
        self.notes: list[str] = []  # why a faster path was not taken, for `info` and the closing report

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self.config.device)
        return self._device

    def _parts(self) -> tuple[torch.nn.Module, Callable, Callable]:
        if self._loaded is None:
            self._loaded = load_model(self.config, self.device)
        return self._loaded

    def load(self) -> "Embedder":
        """Create the model now (downloading it if needed) rather than on first use."""
        self._runner()
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
        model = self._parts()[0]
        if self.device.startswith("cuda"):
            if self.config.backend not in ("auto", "torch"):
                raise ModelLoadError(f"the {self.config.backend} backend runs on the CPU; use --device cpu, or "
                                     "--backend torch on a GPU")
            return _TorchTowers(model, self.device, self.config.precision)
        export = self.export_onnx() if self.config.backend != "torch" else None  # from fp32 weights, once per model
        backend, precision = backends.cpu_plan(self.config.backend, self.config.precision, export)
        plan = backends.export_plan(self.config.backend, self.config.precision, export)
        if plan is not None:
            from .inference.files import image_tower
            from .inference.onnx import OnnxTowers

            if (backend, precision) != ("onnx", plan) and backend != plan:
                self.notes.append(f"{self.config.backend} is unavailable here or failed its check; onnx {plan} runs")
            images, label = image_tower(export, plan)
            return _ExportRunner(images, OnnxTowers(export), label)
        if backend != "torch":
            self.notes.append("ONNX export unavailable or failed its check; torch fp32 runs instead")
            precision = "fp32"
        if precision == "bf16":
            return self._bf16_towers(model)
        return _TorchTowers(model, self.device, precision)

    def _bf16_towers(self, model: torch.nn.Module) -> _TorchTowers:
        """bf16 weights, cast once, if the probes keep cosine >= MIN_COSINE to fp32 (else fp32, with a note)."""
        fp32 = _TorchTowers(model, self.device, "fp32")
        half = _TorchTowers(_cast_copy(model, torch.bfloat16), self.device, "bf16")
        pixels, tokens = self._probes
        worst = min(min_cosine(fp32.encode_image(pixels), half.encode_image(pixels)),
                    min_cosine(fp32.encode_text(tokens), half.encode_text(tokens)))
        if worst >= backends.MIN_COSINE or self.config.precision == "bf16":
            self._loaded = (half.model, *self._loaded[1:])  # the fp32 weights are freed
            return half
        self.notes.append(f"bf16 failed the quality check (cosine {worst:.5f} < {backends.MIN_COSINE}); fp32 runs")
        return fp32

    @functools.cached_property
    def _probes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixels, tokens) of the fixed probe images and texts, made once for every quality check."""
        _, preprocess, tokenizer = self._parts()
        return torch.stack([preprocess(im) for im in _probe_images()]), tokenizer(list(_PROBE_TEXTS))

    def export_onnx(self):
        """This model's ONNX towers in the cache (exported and checked once), or None if it cannot be exported.

        On CPU, ``auto`` exports while loading (from the fp32 weights), so that later queries need no torch."""
        if not backends.onnxruntime_installed():
            self.notes.append("onnxruntime is not installed (pip install onnxruntime)")
            return None
        found = backends.find_export(self.config.name, self.config.pretrained)
        if found is not None:
            return found
        try:
            return _export(self._parts(), self.config, *self._probes)
        except Exception as exc:  # an architecture the exporter cannot handle: torch still works
            self.notes.append(f"ONNX export failed: {_first_sentence(exc)}")
            return None

    @property
    def preprocess(self) -> Callable:
        """The model's own image transform: PIL image -> tensor (3, H, W)."""
        return self._parts()[1]

    @property
    def dim(self) -> int:
        return model_dim(self.config)

    @property
    def image_size(self) -> int:
        return max(input_size(self._parts()[0].visual.image_size))

    def encode_preprocessed(self, batch: torch.Tensor) -> np.ndarray:
        """Forward a batch of already-preprocessed image tensors (N, 3, H, W)."""
        return self._runner().encode_image(batch)

    def embed_texts(self, texts: Sequence[str], batch_size: int = _TEXT_BATCH) -> np.ndarray:
        runner, tokenizer = self._runner(), self._parts()[2]
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(texts), batch_size):
            out.append(runner.encode_text(tokenizer(list(texts[start : start + batch_size]))))
        return np.concatenate(out)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        preprocess = self._parts()[1]
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_preprocessed(torch.stack([preprocess(im.convert("RGB")) for im in images]))

    def embed_files(
        self, paths: Sequence[str], settings: IndexingConfig = IndexingConfig()
    ) -> Iterator[EmbeddedBatch]:
        """Decode files in worker processes (overlapping the model) and embed them batch by batch.

        Unreadable files come back as failures with a reason; they never stop the run.
        """
        preprocess, paths = self._parts()[1], list(paths)
        decode = self.decode_mode(settings.decode)
        if decode == "tensor":
            yield from self._embed_on_device(paths, settings)
            return
        dataset = _FileDataset(paths, preprocess, self.image_size, settings.max_pixels, decode)
        for positions, details, tensors, failures in self._loader(dataset, _collate, settings):
            vectors = (
                self.encode_preprocessed(tensors)
                if tensors is not None
                else np.zeros((0, self.dim), np.float32)
            )
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
        if asked not in ("auto", "fast", "reference", "tensor"):
            raise ValueError(f"IndexingConfig.decode must be auto, fast, reference or tensor, got {asked!r}")
        if asked in ("auto", "tensor"):
            from .tensor_decode import Transform

            plain = Transform.for_model(preprocess_cfg(self._parts()[0])) is not None
            return "tensor" if plain and (asked == "tensor" or self.device.startswith("cuda")) else "fast"
        return asked

    def _embed_on_device(self, paths: list[str], settings: IndexingConfig) -> Iterator[EmbeddedBatch]:
        """JPEGs read in workers and decoded, resized and normalised on the model's device (tensor_decode.py)."""
        from . import tensor_decode

        model, preprocess = self._parts()[:2]
        dataset = tensor_decode.TensorFiles(paths, preprocess, loader("fast"), self.image_size, settings.max_pixels)
        decoder = tensor_decode.DeviceDecoder(tensor_decode.Transform.for_model(preprocess_cfg(model)), self.device,
                                              dataset.pillow)
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


def _cast_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).to(dtype)


class _TowerForExport(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, text: bool):
        super().__init__()
        self.model, self.text = model, text

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(x) if self.text else self.model.encode_image(x)


def _export(parts, config: ModelConfig, pixels: torch.Tensor, tokens: torch.Tensor):
    """Export both towers to ONNX in a private folder, check them against torch fp32, then publish the folder.

    Concurrent exporters each write their own folder; the first rename wins and the others are discarded.
    """
    import shutil
    import warnings

    from .inference.onnx import OnnxTowers, externalise

    model, preprocess, tokenizer = parts
    final = backends.export_folder(config.name, config.pretrained)
    work = final.with_name(f"{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        torch_towers = _TorchTowers(model, "cpu", "fp32")
        # Grad mode on: under no_grad, MultiheadAttention takes a fused fast path that ONNX cannot express.
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for text, sample, name in ((True, tokens, "text"), (False, pixels, "image")):
                torch.onnx.export(_TowerForExport(model, text), (sample[:2],), str(work / f"{name}.onnx"),
                                  input_names=["tokens" if text else "pixels"], output_names=["features"],
                                  dynamic_axes={"tokens" if text else "pixels": {0: "n"}, "features": {0: "n"}},
                                  opset_version=17, dynamo=False)
                externalise(work / f"{name}.onnx")
        meta = _export_meta(model, config, tokenizer)
        staged = backends.OnnxExport(work, meta)
        towers = OnnxTowers(staged, threads=1)
        reference = torch_towers.encode_image(pixels)
        check = {"image_min_cosine": min_cosine(towers.encode_image(pixels.numpy()), reference),
                 "text_min_cosine": min_cosine(towers.encode_text(tokens.numpy()), torch_towers.encode_text(tokens))}
        check["passed"] = min(check.values()) >= backends.MIN_COSINE
        check.update(_int8_check(staged, pixels.numpy(), reference))
        check.update(_openvino_check(staged, pixels.numpy(), reference))
        backends.write_meta(work, {**meta, "check": check})
        if final.exists() and backends.find_export(config.name, config.pretrained) is None:
            shutil.rmtree(final, ignore_errors=True)  # a broken leftover (folders are published whole)
        try:
            os.rename(work, final)
        except OSError:  # another process published first
            shutil.rmtree(work, ignore_errors=True)
        backends.remove_stale_exports()
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return backends.find_export(config.name, config.pretrained)


def _int8_check(staged, pixels: np.ndarray, reference: np.ndarray) -> dict:
    """Quantize the image tower to int8 and check it against torch fp32 (cosine >= MIN_COSINE_INT8)."""
    from .inference.onnx import OnnxTowers, quantize_int8

    try:
        quantize_int8(staged.image_path, staged.image_int8_path)
        worst = min_cosine(OnnxTowers(staged, threads=1, int8=True).encode_image(pixels), reference)
    except Exception as exc:  # an op the quantizer cannot handle: fp32 paths still work
        staged.image_int8_path.unlink(missing_ok=True)
        return {"int8_passed": False, "int8_error": _first_sentence(exc)}
    return {"image_int8_min_cosine": worst, "int8_passed": worst >= backends.MIN_COSINE_INT8}


def _openvino_check(staged, pixels: np.ndarray, reference: np.ndarray) -> dict:
    """Run the image tower in OpenVINO, when installed, and check it against torch fp32 (cosine >= MIN_COSINE)."""
    if not backends.openvino_installed():
        return {}
    from .inference.openvino import OpenVinoImageTower

    try:
        tower = OpenVinoImageTower(staged)
        worst = min_cosine(tower.encode_image(pixels), reference)
    except Exception as exc:  # an op OpenVINO cannot compile: the other paths still work
        return {"openvino_passed": False, "openvino_error": _first_sentence(exc)}
    return {"openvino_min_cosine": worst, "openvino_precision": tower.precision,
            "openvino_passed": worst >= backends.MIN_COSINE}


def preprocess_cfg(model: torch.nn.Module) -> dict:
    """The model's image transform as a config: size, mean, std, interpolation, resize mode."""
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    if not cfg:
        size = model.visual.image_size
        cfg = {"size": size, "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD,
               "interpolation": "bicubic", "resize_mode": "shortest"}
    return cfg


def _export_meta(model: torch.nn.Module, config: ModelConfig, tokenizer) -> dict:
    cfg = preprocess_cfg(model)
    simple = isinstance(tokenizer, open_clip.SimpleTokenizer) and tokenizer.reduction_fn is None and (
        tokenizer.clean_fn.__name__ == "_clean_lower")
    return {"model": config.name, "pretrained": config.pretrained, "dim": model_dim(config),
            "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "tokenizer": "clip-bpe" if simple else "open_clip",
            "context_length": int(getattr(tokenizer, "context_length", 77) or 77),
            "torch": torch.__version__, "open_clip": getattr(open_clip, "__version__", "")}


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
