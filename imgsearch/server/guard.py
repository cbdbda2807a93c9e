"""What the server checks before a request reaches a route: who is asking (the Host header), how long a client may
take to send its request, and how many connections it holds. Pure ASGI and asyncio: no web framework.

- **Host.** A page on any web site whose name resolves to 127.0.0.1 (DNS rebinding) can make the user's browser ask
  a loopback server for photos; its requests name that site in their ``Host`` header. A server bound to loopback, or
  to one address, answers only requests naming a loopback name or that address, with its port.
- **Stalled requests.** uvicorn waits for a request's head for as long as a client likes; a few hundred connections
  that never finish theirs use up the process's file descriptors (in token mode without a token). A connection
  whose head is not complete within ``HEAD_TIMEOUT`` seconds is closed, and past ``max_connections`` (from the
  process's file limit) the longest-waiting connection without a complete head makes way for the new one.
- Every response says ``Cross-Origin-Resource-Policy: same-origin`` (no other site may embed our images),
  ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer`` (a token in an address never travels on).
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import Iterable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT = 5.0  # seconds a client has to send a request's head (line and headers)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
SECURITY_HEADERS = [
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The ``Host`` values a server bound to ``host``:``port`` answers; None (any) for a wildcard address, which
    serves whatever names the machine has on the network (in token mode: the token is the guard there)."""
    if host in ("0.0.0.0", "::", ""):
        return None
    bound = f"[{host.strip('[]')}]" if ":" in host else host
    names = {*LOOPBACK_NAMES, bound.lower()}
    return frozenset({f"{name}:{port}" for name in names} | (names if port == 80 else set()))


class HostCheck:
    """ASGI middleware: 421 for a request whose Host header is not one of ``allowed`` (None: all), and 403 for a
    request that changes or sends something (not GET or HEAD) from a page of another origin: browsers name it in
    ``Origin``, and our own page's requests name this server."""

    def __init__(self, app, allowed: Iterable[str] | None):
        self.app, self.allowed = app, None if allowed is None else frozenset(allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        if self.allowed is not None and host not in self.allowed:
            return await _json(
                send,
                421,
                {
                    "error": "misdirected request",
                    "detail": (
                        f"this server answers requests for {', '.join(sorted(self.allowed))}, not {host or 'no host'}: "
                        "open it by the address it printed"
                    ),
                },
            )
        origin = headers.get(b"origin", b"").decode("latin-1").strip().lower()
        if scope["method"] not in ("GET", "HEAD") and origin and origin.split("://", 1)[-1] != host:
            return await _json(
                send,
                403,
                {
                    "error": "forbidden",
                    "detail": (
                        f"a request from a page of {origin} is refused: this server answers its own page, the API's clients "
                        "and the command line"
                    ),
                },
            )
        await self.app(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware: SECURITY_HEADERS on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + SECURITY_HEADERS}
            await send(message)

        await self.app(scope, receive, with_headers)


async def _json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def max_connections() -> int:
    """Connections held at once: well inside the process's file limit (each is a descriptor), leaving room for the
    collection's files, the model's and the thread pool's."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(1024, soft - 96))


class GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for every request head and a cap on connections."""

    limit = max_connections()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._opened = self.loop.time()
        self._arm()
        if len(self.connections) > self.limit:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._receiving_head():
            self._arm()
        elif self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_lost(self, exc) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _receiving_head(self) -> bool:
        """Between requests (or before the first), where a head is awaited; not while a request is handled."""
        return self.conn.their_state == h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(HEAD_TIMEOUT, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._deadline = None
        if self._receiving_head() and not self.transport.is_closing():
            self.transport.close()

    def _make_room(self) -> None:
        """Close the connection that has waited longest for a request head (this one, if no other waits)."""
        waiting = [c for c in self.connections if isinstance(c, GuardedH11) and c._receiving_head()]
        oldest = min(waiting, key=lambda c: c._opened, default=self)
        oldest.transport.close()
