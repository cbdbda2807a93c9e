"""Local checkpoint files, known by their content so that a moved file is still recognised."""

from __future__ import annotations

import os

from .images import file_hash as content_hash  # the same BLAKE2b-128 as image files

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def is_path(pretrained: str | None) -> bool:
    """Whether a --pretrained value names a file rather than an open_clip tag."""
    if not pretrained:
        return False
    return (
        os.sep in pretrained
        or "/" in pretrained
        or pretrained.endswith(CHECKPOINT_SUFFIXES)
        or (os.path.isfile(pretrained))
    )


def fingerprint(path: str) -> dict:
    """What a collection records of its checkpoint: where it was, its size, mtime and content hash."""
    st = os.stat(path)
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": content_hash(path)}


def matches(path: str, recorded: dict) -> bool:
    """Whether path holds the recorded checkpoint: same file unchanged (no read), else same content."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_size != recorded.get("size"):
        return False
    if path == recorded.get("path") and st.st_mtime_ns == recorded.get("mtime_ns"):
        return True
    return content_hash(path) == recorded.get("hash")
