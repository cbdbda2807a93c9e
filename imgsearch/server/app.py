"""The HTTP API and the gallery: the one module that imports the web framework (FastAPI on uvicorn).

Every route maps onto a ``SearchService`` method, run on the service's own threads; every error becomes
JSON ``{"error", "detail"}`` with its status code, and never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional
from urllib.parse import quote

import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import (
    BadInputError, CollectionNotFoundError, EmptyCollectionError, ImgsearchError, ModelLoadError, NotFoundError,
    TooLargeError,
)
from ..search import Filters
from . import discovery
from .service import SearchService, ServeConfig

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "imgsearch_token"
log = logging.getLogger("imgsearch.server")

# Most specific first: NotFoundError and TooLargeError are BadInputErrors.
_STATUS = ((NotFoundError, 404, "not found"), (TooLargeError, 413, "too large"), (BadInputError, 400, "bad input"),
           (CollectionNotFoundError, 404, "no collection"), (EmptyCollectionError, 409, "empty collection"),
           (ModelLoadError, 503, "model unavailable"), (ImgsearchError, 500, "error"))


def create_app(service: SearchService) -> FastAPI:
    app = FastAPI(title="imgsearch", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="Semantic image search over one collection. Errors are JSON {error, detail}.")
    pool = ThreadPoolExecutor(service.config.workers, thread_name_prefix="imgsearch")

    async def run(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))

    _install_errors(app)
    if service.config.token:
        _install_token(app, service.config.token)

    @app.get("/", include_in_schema=False)
    async def gallery() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health", summary="Liveness and collection state (missing, empty, ready)")
    async def health() -> dict:
        return await run(service.health)

    @app.get("/api/info", summary="The collection: model, counts, index; a hint when it is missing or empty")
    async def info() -> dict:
        return await run(service.info)

    @app.get("/api/search", summary="Search by text and/or indexed ids (query arithmetic and filters)")
    async def search(q: str = Query(..., description="e.g. `beach + sunset - people`, "
                                                                         "`2*red car + 0.5*night`, `id:42`"),
                     offset: int = 0, limit: int = 20, filters: Filters = _filters()) -> JSONResponse:
        return _timed(await run(service.search, q, None, filters, offset, limit))

    @app.post("/api/search", summary="Search with an uploaded image (the request body), plus optional q terms")
    async def search_upload(request: Request, q: Optional[str] = None, offset: int = 0, limit: int = 20,
                            filters: Filters = _filters()) -> JSONResponse:
        upload = await _body(request, service.config.max_upload_bytes)
        return _timed(await run(service.search, q, upload, filters, offset, limit))

    @app.get("/api/images", summary="Browse: images passing the filters, most recently taken first")
    async def browse(offset: int = 0, limit: int = 50, filters: Filters = _filters()) -> dict:
        return await run(service.browse, filters, offset, limit)

    @app.get("/api/images/{image_id}", summary="An indexed image's details")
    async def image(image_id: int) -> dict:
        return await run(service.image, image_id)

    @app.get("/api/images/{image_id}/similar", summary="More like this: the same as q=id:IMAGE_ID")
    async def similar(image_id: int, offset: int = 0, limit: int = 20, filters: Filters = _filters()) -> JSONResponse:
        await run(service.image, image_id)  # an unknown id is a 404 here, not a bad query
        return _timed(await run(service.search, f"id:{image_id}", None, filters, offset, limit))

    @app.get("/api/images/{image_id}/thumbnail", summary="JPEG thumbnail, EXIF orientation applied",
             response_class=Response)
    async def thumbnail(image_id: int, size: int = 256) -> Response:
        made = await run(service.thumbnail, image_id, size)
        headers = {"Cache-Control": "private, max-age=86400"}
        if isinstance(made, Path):
            return FileResponse(made, media_type="image/jpeg", headers=headers)
        return Response(made, media_type="image/jpeg", headers=headers)

    @app.get("/api/images/{image_id}/file", summary="The original file (only while it is what was indexed)",
             response_class=Response)
    async def original(image_id: int) -> Response:
        data, media_type, name = await run(service.original, image_id)
        disposition = "inline" if media_type.startswith("image/") else "attachment"
        return Response(data, media_type=media_type, headers={
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(name, safe='')}",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"})

    @app.get("/api/images/{image_id}/describe", summary="Image -> text: the texts best matching an indexed image")
    async def describe(image_id: int, k: int = 5) -> dict:
        return await run(service.describe, image_id, None, k)

    @app.post("/api/describe", summary="Image -> text for an uploaded image (the request body)")
    async def describe_upload(request: Request, k: int = 5) -> dict:
        upload = await _body(request, service.config.max_upload_bytes)
        return await run(service.describe, None, upload, k)

    return app


def _filters():
    """The filters as query parameters, the same as the CLI's flags (``in`` may repeat)."""

    def parse(folder: list[str] = Query([], alias="in", description="only images under this folder (repeatable)"),
              after: Optional[str] = Query(None, description="taken on or after: YYYY, YYYY-MM, YYYY-MM-DD"),
              before: Optional[str] = Query(None, description="taken before this date"),
              min_width: Optional[int] = None, min_height: Optional[int] = None,
              format: Optional[str] = Query(None, description="e.g. jpg,png"),  # noqa: A002 - the CLI's name
              orientation: Optional[str] = Query(None, description="landscape, portrait or square")) -> Filters:
        return Filters(tuple(folder), after, before, min_width, min_height, format or (), orientation)

    return Depends(parse)


def _timed(body: dict) -> JSONResponse:
    timing = body.get("timing", {})
    server_timing = ", ".join(f"{name.removesuffix('_ms')};dur={ms:.2f}" for name, ms in timing.items())
    return JSONResponse(body, headers={"Server-Timing": server_timing} if server_timing else None)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes, whatever Content-Length says."""
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


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ImgsearchError)
    async def library_error(request: Request, exc: ImgsearchError) -> JSONResponse:
        status, name = next((code, name) for kind, code, name in _STATUS if isinstance(exc, kind))
        return _error(status, name, exc.for_cli())  # the command-line hint: a server user runs commands

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


def _install_token(app: FastAPI, token: str) -> None:
    """Every request carries the token: ``Authorization: Bearer T``, the cookie the page gets, or ``?token=T``
    (which also sets the cookie, so that a browser opened on ``/?token=T`` loads its images)."""
    expected = token.encode()

    def matches(candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), expected)

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        header = request.headers.get("authorization", "")
        bearer = header[7:] if header.lower().startswith("bearer ") else None
        in_query = request.query_params.get("token")
        if not (matches(bearer) or matches(request.cookies.get(TOKEN_COOKIE)) or matches(in_query)):
            return _error(401, "unauthorized", "this server needs its token: send `Authorization: Bearer TOKEN`, "
                                               "or open the page once as /?token=TOKEN")
        response = await call_next(request)
        if matches(in_query):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response


def serve(config: ServeConfig, announce=lambda text: print(text, file=sys.stderr, flush=True)) -> None:
    """Load the collection and its model, listen, and serve until interrupted."""
    config.check()
    service = SearchService(config)
    sock = _bound(config)
    url = f"http://{_url_host(config.host)}:{sock.getsockname()[1]}"
    service.warm()
    app = create_app(service)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    written = discovery.write(service.folder, url, config.token)
    announce(f"imgsearch: serving {service.folder} at {url}{'/?token=...' if config.token else '/'} "
             "(Ctrl-C to stop)")
    # uvicorn re-raises the signal that stopped it once it has shut down: both end here, cleanly.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if written:
            discovery.remove(service.folder)
        sock.close()
    announce("imgsearch: server stopped")


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
        raise BadInputError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}; pick another "
                            "--port (0 picks a free one) or stop what is using it") from None
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
