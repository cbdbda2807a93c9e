"""Downloading a query image from an http(s) URL, with a size limit and a timeout."""

from __future__ import annotations

import urllib.error
import urllib.request

from .images import ImageSkipped

MAX_BYTES = 20 * 1024 * 1024  # larger than any photo a query needs; refuses runaway downloads
TIMEOUT_S = 10.0


def fetch(url: str, max_bytes: int = MAX_BYTES, timeout: float = TIMEOUT_S) -> bytes:
    """The body of url; ImageSkipped (with the reason) when it is unreachable, too slow or too large."""
    request = urllib.request.Request(url, headers={"User-Agent": "imgsearch"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ImageSkipped(_too_large(int(declared), max_bytes))
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise ImageSkipped(f"the server answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:  # timeouts are OSErrors
        reason = getattr(exc, "reason", exc)
        raise ImageSkipped(f"could not download it ({reason}; timeout {timeout:g}s)") from None
    if len(data) > max_bytes:
        raise ImageSkipped(_too_large(len(data), max_bytes))
    return data


def _too_large(size: int, limit: int) -> str:
    return f"larger than the {limit // (1024 * 1024)} MB limit for a query image ({size:,}+ bytes)"
