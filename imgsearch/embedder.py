"""CLIP embeddings: the only module that imports torch and open_clip.

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
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import open_clip
import torch
from PIL import Image

from . import checkpoints
from .config import MODEL_CONFIGS_ENV, IndexingConfig, ModelConfig
from .errors import ModelLoadError
from .images import ImageDetails, ImageSkipped, load_image

_TEXT_BATCH = 256


@dataclass
class EmbeddedBatch:
    """One batch of files: positions into the caller's path list, vectors, and failures."""

    positions: list[int]
    details: list[ImageDetails]  # original size and content hash per embedded file
    vectors: np.ndarray  # (len(positions), dim) float32, normalised
    failures: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)


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
    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    repo, filename = os.path.split(cfg.get("hf_hub") or "")
    repo = repo.rstrip("/")
    if (repo and _cached_on_hub(repo, filename)) or (not repo and _cached_url(cfg.get("url") or "")):
        return
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
    register_extra_model_configs()
    cfg = open_clip.get_model_config(config.name)
    if cfg is None:
        _check_model_name(config.name)
        raise ModelLoadError(f"no config found for model {config.name!r}")
    return int(cfg["embed_dim"])


class Embedder:
    """Turns texts, PIL images and image files into normalised CLIP vectors."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        self.config = config
        self._loaded: tuple[torch.nn.Module, Callable, Callable] | None = None
        self._device: str | None = None

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
        self._parts()
        return self

    @property
    def preprocess(self) -> Callable:
        """The model's own image transform: PIL image -> tensor (3, H, W)."""
        return self._parts()[1]

    @property
    def dim(self) -> int:
        return model_dim(self.config)

    @property
    def image_size(self) -> int:
        size = self._parts()[0].visual.image_size
        return int(max(size) if isinstance(size, (tuple, list)) else size)

    def _autocast(self):
        precision = self.config.precision
        if self.device.startswith("cuda") and precision in ("auto", "fp16", "bf16"):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        if precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _finish(self, features: torch.Tensor) -> np.ndarray:
        features = features.float()
        features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return features.cpu().numpy().astype(np.float32, copy=False)

    def encode_preprocessed(self, batch: torch.Tensor) -> np.ndarray:
        """Forward a batch of already-preprocessed image tensors (N, 3, H, W)."""
        model = self._parts()[0]
        with torch.inference_mode(), self._autocast():
            return self._finish(model.encode_image(batch.to(self.device, non_blocking=True)))

    def embed_texts(self, texts: Sequence[str], batch_size: int = _TEXT_BATCH) -> np.ndarray:
        model, _, tokenizer = self._parts()
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(list(texts[start : start + batch_size])).to(self.device)
            with torch.inference_mode(), self._autocast():
                out.append(self._finish(model.encode_text(tokens)))
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
        preprocess = self._parts()[1]
        dataset = _FileDataset(list(paths), preprocess, self.image_size, settings.max_pixels)
        workers = min(settings.resolved_workers(), max(1, len(paths) // settings.batch_size))
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=settings.batch_size,
            num_workers=workers if len(paths) > settings.batch_size else 0,
            collate_fn=_collate,
            pin_memory=self.device.startswith("cuda"),
            prefetch_factor=4 if workers and len(paths) > settings.batch_size else None,
            worker_init_fn=functools.partial(_die_with_parent, os.getpid()),
        )
        for positions, details, tensors, failures in loader:
            vectors = (
                self.encode_preprocessed(tensors)
                if tensors is not None
                else np.zeros((0, self.dim), np.float32)
            )
            yield EmbeddedBatch(positions, details, vectors, failures)


def _die_with_parent(parent: int, _worker_id: int) -> None:
    """Decode workers end with the indexer, even when it is killed with SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(0)


class _FileDataset(torch.utils.data.Dataset):
    """Decodes one file in a worker: (position, tensor or None, details, reason)."""

    def __init__(self, paths: list[str], preprocess: Callable, min_side: int, max_pixels: int):
        self.paths, self.preprocess = paths, preprocess
        self.min_side, self.max_pixels = min_side, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            loaded = load_image(self.paths[i], self.min_side, self.max_pixels)
            return i, self.preprocess(loaded.image), loaded.details, None
        except ImageSkipped as exc:
            return i, None, None, str(exc)
        except Exception as exc:  # a decoder bug must cost one file, not the run
            return i, None, None, f"could not decode: {type(exc).__name__}: {exc}"


def _collate(items):
    good = [it for it in items if it[1] is not None]
    failures = [(it[0], it[3]) for it in items if it[1] is None]
    tensors = torch.stack([it[1] for it in good]) if good else None
    return [it[0] for it in good], [it[2] for it in good], tensors, failures
