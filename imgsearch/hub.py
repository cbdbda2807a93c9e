"""The Hugging Face hub's local cache, and whether the hub can be reached: asked without downloading anything and
without importing torch (``huggingface_hub`` only)."""

from __future__ import annotations

import os
import socket
import urllib.parse


def cached(repo: str, files) -> bool:
    """Whether any of ``files`` of ``repo`` is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline_problem(source: str) -> str | None:
    """Why nothing can be downloaded from ``source`` (None when it can, or a proxy decides)."""
    return "HF_HUB_OFFLINE is set" if env_true("HF_HUB_OFFLINE") else unreachable(source)


def unreachable(url: str, timeout: float = 5.0) -> str | None:
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


def weight_files(filename: str) -> tuple[str, ...]:
    """The files open_clip may load for a hub checkpoint named ``filename`` (it prefers safetensors)."""
    filename = filename or "open_clip_pytorch_model.bin"
    return "open_clip_model.safetensors", filename.replace(".bin", ".safetensors"), filename
