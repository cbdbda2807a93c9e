"""Commands that search: query (in-process or through a running server), serve, dupes."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ..config import DUPLICATE_THRESHOLD, SERVER_ENV, TOKEN_ENV
from ..errors import ImgsearchError
from ..search import Filters, Query, Term
from .common import (
    BackendOpt,
    CollectionOpt,
    DeviceOpt,
    JsonOpt,
    app,
    check_backend,
    fail,
    open_collection,
    print_json,
    user_errors,
    warn,
)


@app.command()
def query(
    text: str | None = typer.Argument(
        None,
        help="What to look for: \"a red car\", or terms joined by ' + ' and ' - ' with optional weights and "
        'image terms: "beach + sunset - people", "2*red car + 0.5*night", "sunset + img:photos/a.jpg". '
        "Quotes keep text literal. A bare image file name is refused (write img:NAME).",
    ),
    image: list[str] = typer.Option(
        [],
        "--image",
        "-i",
        metavar="PATH|URL",
        help="Search with this image file or http(s) URL (repeatable; added to TEXT).",
    ),
    minus: list[str] = typer.Option(
        [], "--minus", metavar="TEXT|PATH", help="Subtract this text or image from the query (repeatable)."
    ),
    texts: bool = typer.Option(False, "--texts", help="Return texts from the text collection (image -> text)."),
    top: int = typer.Option(10, "--top", "-k", min=1, help="How many results."),
    folders: list[Path] = typer.Option([], "--in", metavar="FOLDER", help="Only images under FOLDER (repeatable)."),
    after: str | None = typer.Option(
        None,
        "--after",
        metavar="DATE",
        help=(
            "Only images taken on or after DATE (YYYY, YYYY-MM, YYYY-MM-DD[ HH:MM], local time): EXIF "
            "DateTimeOriginal, else the file's modification time."
        ),
    ),
    before: str | None = typer.Option(None, "--before", metavar="DATE", help="Only images taken before DATE."),
    min_width: int | None = typer.Option(None, "--min-width", metavar="PX", help="Only images at least PX wide."),
    min_height: int | None = typer.Option(None, "--min-height", metavar="PX", help="Only images at least PX tall."),
    formats: str | None = typer.Option(
        None,
        "--format",
        metavar="LIST",
        help="Only these formats, e.g. jpg,png (jpeg png webp gif bmp tiff heif avif raw; videos: mp4 mov mkv webm avi).",
    ),
    orientation: str | None = typer.Option(None, "--orientation", metavar="landscape|portrait|square"),
    kind: str | None = typer.Option(
        None, "--type", metavar="image|video", help="Only photos, or only videos (found at their best moment)."
    ),
    index: Path | None = CollectionOpt,
    pretrained: str | None = typer.Option(
        None, "--pretrained", metavar="FILE", help="New location of the collection's checkpoint file, if it moved."
    ),
    pretrained_as: str | None = typer.Option(
        None,
        "--pretrained-as",
        metavar="TAG|none",
        help="The tag the collection's checkpoint file holds, for a collection an earlier imgsearch built that did "
        "not record it (`imgsearch index ... --pretrained-as TAG` records it).",
    ),
    device: str | None = DeviceOpt,
    backend: str | None = BackendOpt,
    server: str | None = typer.Option(
        None,
        "--server",
        envvar=SERVER_ENV,
        show_envvar=True,
        metavar="URL|off",
        help="Ask this running `imgsearch serve` (answers in a fraction of a second) [default: the collection's "
        "running server if there is one, else in-process]; 'off' always searches in-process.",
    ),
    as_json: bool = JsonOpt,
    paths_only: bool = typer.Option(
        False,
        "--paths",
        "-f",
        help="Print only the paths (with --texts: the texts), one per line, best first: for "
        "xargs and scripts (rclip's -f).",
    ),
) -> None:
    """Search the collection: by TEXT, by --image, or by both combined. With --texts, find texts
    matching an image. The query vector is the weighted sum of the terms' normalised embeddings,
    renormalised (see docs/search.md). A running `imgsearch serve` for the collection answers it when
    there is one."""
    if texts and (len(image) != 1 or text is not None or minus):
        fail("--texts finds texts for one image: give exactly one --image PATH and no TEXT or --minus", 2)
    if not texts:
        try:  # a malformed query or filter is a usage error, found before anything loads
            filters = Filters(
                tuple(map(str, folders)), after, before, min_width, min_height, formats or (), orientation, kind
            )
            wanted = _query(text, image, minus, filters)
        except ImgsearchError as exc:
            fail(exc.for_cli(), 2)
    hits, held = None, None
    if server != "off" and not (pretrained or pretrained_as or device or backend):  # those ask for an in-process model
        hits = _ask_server(server, index, None if texts else wanted, image[0] if texts else None, top)
    if hits is None:
        with (
            user_errors(),
            open_collection(
                index, pretrained=pretrained, device=device, backend=backend, pretrained_as=pretrained_as
            ) as engine,
        ):
            found = engine.describe(image[0], k=top) if texts else engine.search(wanted, k=top)
            held = None if texts or len(found) >= top else len(engine)  # counted only when it is said
            warn(engine.warnings())
        hits = [h.to_dict() for h in found]
    if as_json:
        return print_json(hits)
    for h in hits:
        found = h["text"] if texts else h["path"]
        typer.echo(found if paths_only else f"{h['score']:.4f}\t{found}{_moments(h.get('moments'))}")
    if len(hits) < top:  # 0.1 returned 956 for -k 5000 without a word
        typer.echo(
            f"imgsearch: {len(hits)} results, fewer than --top {top}: {_why_fewer(hits, held, texts, not texts and bool(wanted.filters))}",
            err=True,
        )


def _moments(moments: list[dict] | None) -> str:
    """A video's moments after its path: "\tat 1:23 (also 0:07, 2:40)"; nothing for a photo."""
    if not moments:
        return ""
    also = f" (also {', '.join(clock(m['time']) for m in moments[1:])})" if len(moments) > 1 else ""
    return f"\tat {clock(moments[0]['time'])}{also}"


def clock(seconds: float) -> str:
    """A time into a video as players show it: 0:07, 1:23, 1:02:03."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _why_fewer(hits: list, held: int | None, texts: bool, filtered: bool) -> str:
    what = "texts" if texts else "images"
    if held is not None and len(hits) == held:
        return f"the collection holds {held} {what}, and all are shown"
    return f"no more {what} were found" + (" under these filters" if filtered else "")


def _ask_server(url: str | None, index: Path | None, wanted: Query | None, describe: str | None, top: int):
    """Hits (as dicts) from a running server, or None to search in-process: no server was found, or the query
    needs what a server cannot take. A server named by --server (or $IMGSEARCH_SERVER) must answer."""
    from ..config import collection_path
    from ..server import discovery
    from ..server.client import Client, Unreachable

    token = os.environ.get(TOKEN_ENV)
    folder, nonce = collection_path(index), None
    if url is None:
        found = discovery.find(folder)
        if found is None:
            return None
        url, token, nonce = found["url"], token or found.get("token"), found.get("nonce")
        if not isinstance(nonce, str):
            return None  # an announcement without its proof: never believed
    named = nonce is None
    plan = _server_plan(wanted) if describe is None and wanted is not None else None
    if describe is None and (plan is None or wanted is None):
        return None  # e.g. two image terms: only one image can be uploaded
    client = Client(url, token)
    if nonce is not None and not client.proves(nonce, folder):
        return None  # not the server that announced itself there (a reused pid, a copied collection): in-process
    try:
        with user_errors():
            if describe is not None:
                return client.describe(describe, top)
            assert plan is not None and wanted is not None  # checked above
            text, upload = plan
            return client.search(text, upload, k=top, filters=wanted.filters.to_params())
    except Unreachable as exc:
        if named:
            fail(f"{exc}; start one with `imgsearch serve`, or search in-process with --server off")
        return None  # a server that stopped without withdrawing its announcement


def _server_plan(wanted: Query) -> tuple[str | None, str | None] | None:
    """(written query, image file to upload) for a server, or None when it cannot take the query: a server
    reads no local files, so at most one image, a local file added with weight 1, is uploaded."""
    images = [t for t in wanted.terms if t.kind == "image"]
    if len(images) > 1:
        return None
    if images:
        from ..images import is_url

        if images[0].weight != 1 or not isinstance(images[0].value, str) or is_url(images[0].value):
            return None
    rest = tuple(t for t in wanted.terms if t.kind != "image")
    return (str(Query(rest)) if rest else None), (images[0].value if images else None)


def _query(text: str | None, images: list[str], minus: list[str], filters) -> Query:
    if text is None and not images:
        fail("give a TEXT query, --image PATH, or both", 2)
    from ..images import looks_like_image_path

    terms = list(Query.parse(text).terms) if text is not None else []
    terms += [Term.image(i) for i in images]
    terms += [Term.image(m, -1.0) if looks_like_image_path(m) else Term.text(m, -1.0) for m in minus]
    return Query(tuple(terms), filters)


@app.command()
def serve(
    index: Path | None = CollectionOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback needs --token."),
    port: int = typer.Option(8000, "--port", help="Port to listen on (0: any free one)."),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar=TOKEN_ENV,
        show_envvar=True,
        metavar="SECRET",
        help="Require this token on every request (needed off loopback). On the "
        "command line every local user sees it (ps): prefer $IMGSEARCH_TOKEN "
        "or --token-file.",
    ),
    token_file: Path | None = typer.Option(
        None, "--token-file", metavar="FILE", help="Read the token from the first line of FILE."
    ),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="Largest image upload accepted."),
    device: str | None = DeviceOpt,
    backend: str | None = BackendOpt,
    batch: bool = typer.Option(
        False,
        "--batch/--no-batch",
        help="Encode concurrent queries together, in micro-batches of at most 16 gathered for at most 5 ms while "
        "other requests are in flight. Off by default: on 2 CPU cores it cost text throughput (docs/server.md); "
        "scripts/bench_serve.py --batching-only compares the two on a machine.",
    ),
    watch: list[Path] = typer.Option(
        [],
        "--watch",
        metavar="FOLDER",
        help="Keep the collection in step with FOLDER as photos change, as `imgsearch watch` does (repeatable).",
    ),
) -> None:
    """Serve the collection: a web gallery at http://HOST:PORT/ and an HTTP JSON API under /api (schema at
    /api/openapi.json). The model loads once; `imgsearch query` then asks this server and answers at once.
    Searches see what a concurrent `imgsearch index` commits, without a restart."""
    from ..server.service import ServeConfig

    check_backend(backend)
    if token_file is not None:
        try:
            token = token_file.expanduser().read_text().splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            fail(f"--token-file: cannot read a token from {token_file}: {getattr(exc, 'strerror', None) or 'empty'}", 2)
    config = ServeConfig(
        index=index,
        host=host,
        port=port,
        token=token or None,
        max_upload_bytes=int(max_upload_mb * 2**20),
        backend=backend,
        device=device,
        batch=batch,
        watch=tuple(watch),
    )
    with user_errors():
        from ..server.app import serve as run

        run(config)


@app.command()
def dupes(
    threshold: float = typer.Option(
        DUPLICATE_THRESHOLD,
        "--threshold",
        "-t",
        min=0.0,
        max=1.0,
        help="Cosine similarity from which two images are near-duplicates (higher: stricter).",
    ),
    exact: bool = typer.Option(False, "--exact", help="Only identical files (same bytes)."),
    index: Path | None = CollectionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List groups of duplicate images: identical files, and near-duplicates (resized, re-encoded or lightly
    edited copies) by similarity. The best copy (most pixels, then largest file) comes first. Nothing is
    deleted or moved."""
    with user_errors(), open_collection(index) as engine:
        groups = engine.duplicates(None if exact else threshold)
    if as_json:
        return print_json([g.to_dict() for g in groups])
    for n, group in enumerate(groups, 1):
        typer.echo(f"group {n}: {len(group.images)} images, {group.kind}")
        for image in group.images:
            size = f"{image.width}x{image.height}" if image.width else "?x?"
            mark = "same file" if image.exact_copy and image is not group.images[0] else f"{image.similarity:.3f}"
            typer.echo(f"  {mark:>9}  {size:>11}  {image.size / 1e6:7.2f} MB  {image.path}")
    extra = sum(len(g.images) - 1 for g in groups)
    typer.echo(f"{len(groups)} groups; {extra} images are copies of another", err=True)
