"""A small HTTP client for a running ``imgsearch serve`` (standard library only: the CLI's fast path)."""

from __future__ import annotations

import hmac
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import BadInputError, ImgsearchError, NotFoundError


class Unreachable(Exception):
    """No server answered at the URL (not running, wrong address): the caller may work in-process instead."""


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def proves(self, nonce: str, folder: Path) -> bool:
        """Whether the server at the URL is the run that wrote ``nonce`` into ``folder``'s server.json, serving
        that collection: asked before any query, upload or token is sent to it."""
        import secrets

        from .discovery import proof

        challenge = secrets.token_hex(16)
        request = urllib.request.Request(f"{self.url}/api/identity?challenge={challenge}")
        try:
            with urllib.request.urlopen(request, timeout=min(self.timeout, 5.0)) as response:
                answer = json.load(response)
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, OSError):
            return False
        return isinstance(answer, dict) and hmac.compare_digest(
            str(answer.get("proof", "")), proof(nonce, challenge, folder)
        )

    def search(self, q: str | None, image: str | None = None, k: int = 10, filters: dict | None = None) -> list[dict]:
        """Image hits (``ImageHit.to_dict()``) for a written query and/or a local image file, uploaded."""
        params = {"q": q, "limit": k, **(filters or {})}
        body = _file_bytes(image) if image is not None else None
        return self._call("POST" if body is not None else "GET", "/api/search", params, body)["results"]

    def describe(self, image: str, k: int = 5) -> list[dict]:
        return self._call("POST", "/api/describe", {"k": k}, _file_bytes(image))["results"]

    def _call(self, method: str, path: str, params: dict, body: bytes | None = None) -> dict:
        query = urllib.parse.urlencode(
            [
                (key, v)
                for key, value in params.items()
                if value not in (None, (), [])
                for v in (value if isinstance(value, (list, tuple)) else [value])
            ]
        )
        request = urllib.request.Request(f"{self.url}{path}?{query}", data=body, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        if body is not None:
            request.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise _as_error(exc, self.url) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise Unreachable(f"no imgsearch server answered at {self.url}: {getattr(exc, 'reason', exc)}") from None


def _as_error(exc: urllib.error.HTTPError, url: str) -> ImgsearchError:
    try:
        body = json.loads(exc.read())
        detail = body.get("cli") or body.get("detail") or exc.reason
    except (ValueError, AttributeError, OSError):
        detail = exc.reason
    if exc.code == 401:
        return BadInputError(f"the server at {url} needs its token: {detail}; set $IMGSEARCH_TOKEN")
    kind = NotFoundError if exc.code == 404 else BadInputError if 400 <= exc.code < 500 else ImgsearchError
    return kind(f"{detail} (server at {url})")


def _file_bytes(path: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise BadInputError(f"query image not found or unreadable: {path} ({exc.strerror or exc})") from None
