"""How a CLI finds a running server: ``server.json`` in the collection folder, written by ``imgsearch serve``
while it runs (owner-only: it holds the token, if any). Standard library only: the CLI reads it on every query."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
from pathlib import Path

FILE = "server.json"


def proof(nonce: str, challenge: str, folder: Path) -> str:
    """HMAC of a client's challenge and a collection's real path, keyed by a server run's nonce: a server that
    restarted (another nonce), another program that took its port, or the server of a copied collection (another
    path) cannot give the one a client computes from server.json and the collection it means."""
    message = f"{challenge}\0{os.path.realpath(folder)}".encode()
    return hmac.new(nonce.encode(), message, hashlib.sha256).hexdigest()


def write(folder: Path, url: str, token: str | None, nonce: str) -> bool:
    """Announce the server; False (nothing written) when the collection folder does not exist yet."""
    if not folder.is_dir():
        return False
    path, tmp = folder / FILE, folder / f"{FILE}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"url": url, "pid": os.getpid(), "token": token, "nonce": nonce}, fh)
        os.replace(tmp, path)
    except OSError:  # a read-only collection: the server still runs, found by --server instead
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True


def remove(folder: Path) -> None:
    """Withdraw the announcement, unless another server has replaced it since."""
    found = read(folder)
    if found is not None and found.get("pid") == os.getpid():
        with contextlib.suppress(OSError):
            (folder / FILE).unlink()


def read(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("url"), str) else None


def find(folder: Path) -> dict | None:
    """The announcement of a server that is still running (a killed server's file is ignored)."""
    found = read(folder)
    if found is None or not _alive(found.get("pid")):
        return None
    return found


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
