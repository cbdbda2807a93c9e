"""The HTTP API and the gallery: the one module that imports the web framework (FastAPI on uvicorn).

Every route maps onto a ``SearchService`` method, run on the service's own threads; every error becomes
JSON ``{"error", "detail"}`` with its status code, and never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import math
import os
import re
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import (
    BadInputError,
    CollectionNotFoundError,
    EmptyCollectionError,
    ImgsearchError,
    ModelLoadError,
    NotFoundError,
    TooLargeError,
    UnsupportedMediaError,
)
from ..search import Filters
from . import discovery, guard
from .service import SearchService, ServeConfig, VideoFile

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("imgsearch.server")
UPLOAD_TYPES = ("image/", "application/octet-stream")  # what an upload's Content-Type may say
_ID = re.compile(r"[1-9][0-9]{0,18}")  # an image id as written by the server: no sign, no leading 0, no "_"

# Most specific first: NotFoundError, TooLargeError and UnsupportedMediaError are BadInputErrors.
_STATUS = (
    (NotFoundError, 404, "not found"),
    (TooLargeError, 413, "too large"),
    (UnsupportedMediaError, 415, "unsupported media type"),
    (BadInputError, 400, "bad input"),
    (CollectionNotFoundError, 404, "no collection"),
    (EmptyCollectionError, 409, "empty collection"),
    (ModelLoadError, 503, "model unavailable"),
    (ImgsearchError, 500, "error"),
)


def create_app(service: SearchService, hosts: frozenset[str] | None = None, port: int = 0) -> FastAPI:
    """The ASGI app over ``service``; ``hosts``: the Host header values it answers (``guard.allowed_hosts``;
    None: any); ``port``: the port it listens on (the token's cookie is named after it)."""
    app = FastAPI(
        title="imgsearch",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
        description="Semantic image search over one collection. Errors are JSON {error, detail}.",
    )
    pool = ThreadPoolExecutor(service.config.workers, thread_name_prefix="imgsearch")

    async def run(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))

    _install_errors(app)
    if service.config.token:
        _install_token(app, service.config.token, f"imgsearch_token_{port}")
    app.add_middleware(guard.SecurityHeaders)
    app.add_middleware(guard.HostCheck, allowed=hosts)  # outermost: a forged Host learns nothing, not even 401

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def gallery() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/identity", summary="Proof that this server serves the collection a client means (no token needed)")
    async def identity(challenge: str = Query(..., min_length=16, max_length=128, pattern="^[0-9a-f]+$")) -> dict:
        return {"proof": service.proof(challenge)}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health", summary="Liveness and collection state (missing, empty, ready)")
    async def health() -> dict:
        return await run(service.health)

    @app.get("/api/info", summary="The collection: model, counts, index; a hint when it is missing or empty")
    async def info() -> dict:
        return await run(service.info)

    @app.get("/api/updates", summary="Whether the collection changed (its generation) and the index run in progress")
    async def updates() -> JSONResponse:
        return JSONResponse(await run(service.updates), headers={"Cache-Control": "no-store"})

    @app.get("/api/search", summary="Search by text and/or indexed ids (query arithmetic and filters)")
    async def search(
        q: str = Query(..., description="e.g. `beach + sunset - people`, `2*red car + 0.5*night`, `id:42`"),
        offset: int = 0,
        limit: int = 20,
        filters: Filters = _filters(),
    ) -> JSONResponse:
        return _timed(await run(service.search, q, None, filters, offset, limit))

    @app.post("/api/search", summary="Search with an uploaded image (the request body), plus optional q terms")
    async def search_upload(
        request: Request, q: str | None = None, offset: int = 0, limit: int = 20, filters: Filters = _filters()
    ) -> JSONResponse:
        upload = await _body(request, service.config.max_upload_bytes)
        return _timed(await run(service.search, q, upload, filters, offset, limit))

    @app.get("/api/images", summary="Browse: images passing the filters, most recently taken first")
    async def browse(offset: int = 0, limit: int = 50, filters: Filters = _filters()) -> dict:
        return await run(service.browse, filters, offset, limit)

    @app.get("/api/images/{image_id}", summary="An indexed image's details")
    async def image(image_id: int = Depends(_image_id)) -> dict:
        return await run(service.image, image_id)

    @app.get("/api/images/{image_id}/similar", summary="More like this: the same as q=id:IMAGE_ID")
    async def similar(
        image_id: int = Depends(_image_id), offset: int = 0, limit: int = 20, filters: Filters = _filters()
    ) -> JSONResponse:
        await run(service.image, image_id)  # an unknown id is a 404 here, not a bad query
        return _timed(await run(service.search, f"id:{image_id}", None, filters, offset, limit))

    @app.get(
        "/api/images/{image_id}/thumbnail", summary="JPEG thumbnail, EXIF orientation applied", response_class=Response
    )
    async def thumbnail(
        image_id: int = Depends(_image_id),
        size: int = 256,
        t: float | None = Query(None, description="for a video: the moment shown, in seconds (default: its start)"),
    ) -> Response:
        made = await run(service.thumbnail, image_id, size, t)
        headers = {"Cache-Control": "private, max-age=86400"}
        if isinstance(made, Path):
            return FileResponse(made, media_type="image/jpeg", headers=headers)
        return Response(made, media_type="image/jpeg", headers=headers)

    @app.get(
        "/api/images/{image_id}/file",
        summary="The original file (only while it is what was indexed)",
        response_class=Response,
    )
    async def original(image_id: int = Depends(_image_id)) -> Response:
        served = await run(service.original, image_id)
        if isinstance(served, VideoFile):  # served in ranges, for playing and seeking
            return FileResponse(
                served.path,
                media_type=served.media_type,
                stat_result=served.stat,
                content_disposition_type="inline",
                filename=served.name,
                headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
            )
        data, media_type, name = served
        disposition = "inline" if media_type.startswith("image/") else "attachment"
        return Response(
            data,
            media_type=media_type,
            headers={
                "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(name, safe='')}",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, max-age=3600",
            },
        )

    @app.get("/api/images/{image_id}/describe", summary="Image -> text: the texts best matching an indexed image")
    async def describe(image_id: int = Depends(_image_id), k: int = 5) -> dict:
        return await run(service.describe, image_id, None, k)

    @app.post("/api/describe", summary="Image -> text for an uploaded image (the request body)")
    async def describe_upload(request: Request, k: int = 5) -> dict:
        upload = await _body(request, service.config.max_upload_bytes)
        return await run(service.describe, None, upload, k)

    return app


def _filters():
    """The filters as query parameters, the same as the CLI's flags (``in`` may repeat)."""

    def parse(
        folder: list[str] = Query([], alias="in", description="only images under this folder (repeatable)"),
        after: str | None = Query(None, description="taken on or after: YYYY, YYYY-MM, YYYY-MM-DD"),
        before: str | None = Query(None, description="taken before this date"),
        min_width: int | None = None,
        min_height: int | None = None,
        format: str | None = Query(None, description="e.g. jpg,png"),  # noqa: A002 - the CLI's name
        orientation: str | None = Query(None, description="landscape, portrait or square"),
        type: str | None = Query(None, description="image or video"),  # noqa: A002 - the CLI's name
    ) -> Filters:
        return Filters(tuple(folder), after, before, min_width, min_height, format or (), orientation, type)

    return Depends(parse)


def _image_id(image_id: str) -> int:
    """An image id from a path, written exactly as the server writes ids: "+1", "01" and "1_0" name nothing."""
    if not _ID.fullmatch(image_id):
        raise NotFoundError(f"no image with id {image_id!r}; ids are whole numbers as search results give them")
    return int(image_id)


def _timed(body: dict) -> JSONResponse:
    timing = body.get("timing", {})
    server_timing = ", ".join(f"{name.removesuffix('_ms')};dur={ms:.2f}" for name, ms in timing.items())
    return JSONResponse(body, headers={"Server-Timing": server_timing} if server_timing else None)


async def _body(request: Request, limit: int) -> bytes:
    """The request body: an image (415 for any other declared type: a cross-site form can send text/plain without
    asking), refused (413) as soon as it passes ``limit`` bytes, whatever Content-Length says."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not kind.startswith(UPLOAD_TYPES):
        raise UnsupportedMediaError(
            f"an upload must be sent as image/* or application/octet-stream, not {kind or 'without a Content-Type'}"
        )
    declared = request.headers.get("content-length")
    too_large = TooLargeError(f"uploads are limited to {limit:,} bytes; send a smaller image")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, error: str, detail: str, cli: str | None = None) -> JSONResponse:
    """``detail``: for the page's reader; ``cli``: the same in the command line's words, which `imgsearch query`
    prints when it asked the server."""
    return JSONResponse({"error": error, "detail": detail, "cli": cli or detail}, status_code=status)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ImgsearchError)
    async def library_error(request: Request, exc: ImgsearchError) -> JSONResponse:
        status, name = next((code, name) for kind, code, name in _STATUS if isinstance(exc, kind))
        return _error(status, name, exc.for_web(), exc.for_cli())

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _error(422, "invalid request", problems)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, "not found" if exc.status_code == 404 else "http error", str(exc.detail))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error serving %s", request.url.path)
        return _error(500, "internal error", "the server hit an unexpected error; its log has the details")


def _install_token(app: FastAPI, token: str, cookie: str) -> None:
    """Every request carries the token: ``Authorization: Bearer T``, the cookie the page gets (named after the port:
    cookies ignore ports, and two servers on one host must not overwrite each other's), or ``?token=T``, which sets
    the cookie and redirects to the same address without the token (it stays out of the address bar and history).
    ``/api/identity`` needs none: it proves who the server is, and tells nothing else."""
    expected = token.encode()

    def matches(candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), expected)

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        header = request.headers.get("authorization", "")
        bearer = header[7:] if header.lower().startswith("bearer ") else None
        in_query = request.query_params.get("token")
        if request.url.path == "/api/identity":
            return await call_next(request)
        if matches(in_query) and request.method in ("GET", "HEAD") and not request.url.path.startswith("/api/"):
            clean = request.url.remove_query_params("token")
            response = Response(
                status_code=303,
                headers={
                    "Location": str(clean.path) + (f"?{clean.query}" if clean.query else ""),
                    "Cache-Control": "no-store",
                },
            )
            response.set_cookie(cookie, token, httponly=True, samesite="strict")
            return response
        if not (matches(bearer) or matches(request.cookies.get(cookie)) or matches(in_query)):
            return _error(
                401,
                "unauthorized",
                "this server needs its token: send `Authorization: Bearer TOKEN`, "
                "or open the page once as /?token=TOKEN",
            )
        return await call_next(request)


def serve(config: ServeConfig, announce=lambda text: print(text, file=sys.stderr, flush=True)) -> None:
    """Load the collection and its model, listen, and serve until interrupted."""
    config.check()
    service = SearchService(config)
    sock = _bound(config)
    port = sock.getsockname()[1]
    url = f"http://{_url_host(config.host)}:{port}"
    service.warm()
    app = create_app(service, guard.allowed_hosts(config.host, port), port)
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", http=guard.GuardedH11, timeout_keep_alive=5
        )
    )
    try:
        watcher = _watcher(service.folder, config, announce)  # its folders are checked before anything is written
    except BaseException:
        sock.close()
        raise
    written = discovery.write(service.folder, url, config.token, service.nonce)
    announce(f"imgsearch: serving {service.folder} at {url}{'/?token=...' if config.token else '/'} (Ctrl-C to stop)")
    # uvicorn re-raises the signal that stopped it once it has shut down: both end here, cleanly.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if watcher is not None:
            watcher.stop()
            watcher.collection.close()
        if written:
            discovery.remove(service.folder)
        sock.close()
    announce("imgsearch: server stopped")


def _watcher(folder: Path, config: ServeConfig, announce):
    """With ``--watch``: a watcher writing through its own handle (the server's reader sees its commits)."""
    if not config.watch:
        return None
    from .. import api
    from ..watching import Watcher

    writer = api.open(folder, device=config.device, backend=config.backend, wait=math.inf)
    try:
        watcher = Watcher(writer, config.watch, on_notice=lambda m: announce(f"imgsearch: {m}"))
        watcher.start()
    except BaseException:  # a folder refused: nothing of the watcher's is left open
        writer.close()
        raise
    announce(f"imgsearch: watching {', '.join(map(str, watcher.roots))}")
    return watcher


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _bound(config: ServeConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host.strip("[]"), config.port))
    except OSError as exc:
        sock.close()
        raise BadInputError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}; pick another "
            "--port (0 picks a free one) or stop what is using it"
        ) from None
    # Accepted connections inherit this; uvicorn sets it only on sockets it binds itself, and without it every
    # keep-alive request after the first waits ~40 ms (Nagle's algorithm against delayed ACKs).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(128)
    sock.set_inheritable(True)
    os.set_blocking(sock.fileno(), False)
    return sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
