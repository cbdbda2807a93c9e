"""The `imgsearch` command: parse, call one API method, format. The only module that prints or exits."""

from __future__ import annotations

import json
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import cast

import typer

from .config import (
    BACKENDS,
    COLLECTION_ENV,
    DEFAULT_EXCLUDES,
    DUPLICATE_THRESHOLD,
    PRECISIONS,
    SERVER_ENV,
    TOKEN_ENV,
    IndexConfig,
    IndexingConfig,
    ModelConfig,
)
from .errors import ImgsearchError
from .search import Filters, Query, Term

# rich_markup_mode=None: rich markup would swallow "[default: ...]" in help texts.
app = typer.Typer(
    help="Semantic image search: index folders of images with CLIP, then search them by text or image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
texts_app = typer.Typer(
    help="Manage the text collection used for image -> text search.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(texts_app, name="texts")
cache_app = typer.Typer(
    help="The cache of exported models ($IMGSEARCH_CACHE): list, remove, prune.",
    rich_markup_mode=None,
    invoke_without_command=True,
)
app.add_typer(cache_app, name="cache")


def _show_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"imgsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_show_version, help="Print the version and exit."
    ),
) -> None:
    pass  # the app's help text is the Typer(help=...) above


IndexOpt = typer.Option(
    None,
    "--index",
    envvar=COLLECTION_ENV,
    show_envvar=True,
    metavar="PATH",
    help="Collection folder [default: ~/.local/share/imgsearch/default, or $XDG_DATA_HOME/imgsearch/default].",
)
ModelOpt = typer.Option(
    None, "--model", metavar="NAME", help="open_clip model name for a new collection [default: ViT-B-32]."
)
PretrainedOpt = typer.Option(
    None,
    "--pretrained",
    metavar="TAG|FILE",
    help="Pretrained tag [default: laion2b_s34b_b79k], a local checkpoint file for offline use (a moved file is "
    "recognised by its content), or 'none' for random weights.",
)
PretrainedAsOpt = typer.Option(
    None,
    "--pretrained-as",
    metavar="TAG|none",
    help="The open_clip tag a --pretrained checkpoint file holds, so that it runs with that tag's preprocessing and "
    "activation (recognised by itself when the file sits in the Hugging Face cache); 'none': the "
    "architecture's defaults.",
)
DeviceOpt = typer.Option(
    None, "--device", metavar="DEVICE", help="Torch device: cpu, cuda, cuda:1 [default: cuda if available, else cpu]."
)
BackendOpt = typer.Option(
    None,
    "--backend",
    metavar="auto|torch|onnx|onnx-int8|openvino",
    help="What runs the model on CPU: torch, onnx (ONNX Runtime fp32; exported once per model and cached), "
    "onnx-int8 (its image tower quantized to int8; never picked by auto) or openvino (the exported image "
    "tower, bf16 where the CPU has it) [default: auto: openvino when installed and it passed its check, else "
    "torch with bf16 weights on CPUs with native bf16, else onnx. Indexing from the export and queries never "
    "import torch once the export is cached].",
)
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of text.")
WaitOpt = typer.Option(
    True,
    "--wait/--no-wait",
    help="While another imgsearch process writes to the collection, wait for it (with a message) or fail at once.",
)


def _model(name: str | None, pretrained: str | None, pretrained_as: str | None = None) -> ModelConfig | None:
    if name is None and pretrained is None and pretrained_as is None:
        return None  # the collection's own model, or the default for a new one
    default = ModelConfig()
    tag = default.pretrained if pretrained is None else (None if pretrained.lower() == "none" else pretrained)
    if pretrained is not None and tag and Path(tag).expanduser().exists():
        tag = str(Path(tag).expanduser().absolute())  # not resolved: a Hugging Face cache path names its tag
    return ModelConfig(name=name or "", pretrained=tag, pretrained_as=pretrained_as)  # "": the collection's name


def _check_backend(backend: str | None) -> None:
    if backend is not None and backend not in BACKENDS:
        _fail(f"--backend: unknown backend {backend!r}; use {', '.join(BACKENDS)}", 2)


def _open(index: Path | None, model=None, pretrained=None, device=None, backend=None, wait=False, pretrained_as=None):
    _check_backend(backend)
    folder = index or "the collection"

    def waiting() -> None:
        typer.echo(
            f"imgsearch: another imgsearch process is writing to {folder}; waiting for it to finish "
            "(Ctrl-C to stop, --no-wait to fail at once)",
            err=True,
        )

    from . import api  # imported when a command needs it: a query through a server never does

    return api.open(
        index,
        model=_model(model, pretrained, pretrained_as),
        device=device,
        backend=backend,
        wait=math.inf if wait else 0.0,
        on_wait=waiting,
    )


def _warn(messages) -> None:
    for message in messages:
        typer.echo(f"imgsearch: warning: {message}", err=True)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"imgsearch: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _user_errors():
    """Library errors become one line on stderr and exit code 1; Ctrl-C exits 130."""
    try:
        yield
    except ImgsearchError as exc:
        _fail(exc.for_cli())
    except KeyboardInterrupt:
        typer.echo("\nimgsearch: interrupted; work done so far is saved, run the command again to resume", err=True)
        raise typer.Exit(130) from None


def _print_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


# A stage with no progress to count (loading a model, exporting it on its first run) still shows its time passing,
# or it looks frozen: 0.1's bar sat at "loading model: 0% 0/956 [00:00<?]" through an 85 s first export.
TICK_SECONDS = 1.0


@contextmanager
def _progress_bar(description: str, unit: str, enabled: bool = True, tick: float = TICK_SECONDS):
    """A progress bar on stderr, drawn only for a person: not when stderr is a file or a pipe. Redrawn every
    ``tick`` seconds, so its elapsed time moves while a stage has nothing to count yet."""
    import threading

    from tqdm import tqdm

    enabled = enabled and sys.stderr.isatty()
    shown: dict = {"stage": description, "bar": None}  # the bar appears with the first progress, not before
    lock, stop = threading.Lock(), threading.Event()

    def ticking() -> None:
        while not stop.wait(tick):
            with lock:
                shown["bar"].refresh()

    ticker = threading.Thread(target=ticking, name="imgsearch-progress", daemon=True)

    def update(done: int, total: int, stage: str | None = None) -> None:
        if not enabled:
            return
        with lock:
            bar = shown["bar"]
            if bar is None:
                bar = shown["bar"] = tqdm(desc=stage or description, unit=unit, file=sys.stderr, dynamic_ncols=True)
                ticker.start()
            elif stage and shown["stage"] != stage:
                bar.set_description(stage, refresh=False)
                bar.reset(total)  # the rate and the time left count from this stage's start, not the model's loading
            shown["stage"] = stage or shown["stage"]
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        yield update
    finally:
        stop.set()
        if ticker.is_alive():
            ticker.join()
        if shown["bar"] is not None:
            shown["bar"].close()


def _default_workers() -> int:
    return IndexingConfig().resolved_workers()


@app.command()
def index(
    folder: Path = typer.Argument(..., help="Folder to index (searched recursively)."),
    index: Path | None = IndexOpt,
    model: str | None = ModelOpt,
    pretrained: str | None = PretrainedOpt,
    pretrained_as: str | None = PretrainedAsOpt,
    device: str | None = DeviceOpt,
    backend: str | None = BackendOpt,
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help=f"Images per forward pass [default: {IndexingConfig.batch_size} on a CPU; "
        "on a GPU, the largest that fits, probed].",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        metavar="N",
        help=f"Decoding workers: threads when the model runs from its cached export (no torch) [default: one per core], "
        f"else processes [default: {_default_workers()} here; on a GPU machine, all cores but one].",
    ),
    exclude: list[str] = typer.Option(
        [], "--exclude", metavar="GLOB", help="Leave out names or relative paths matching GLOB (repeatable)."
    ),
    no_default_excludes: bool = typer.Option(
        False, "--no-default-excludes", help=f"Also index {', '.join(DEFAULT_EXCLUDES)} (left out by default)."
    ),
    rehash: bool = typer.Option(
        False,
        "--rehash",
        help="Read every file's content, also when its size and time are "
        "unchanged (content changed with `touch -r` is found).",
    ),
    as_json: bool = JsonOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    wait: bool = WaitOpt,
    ray: str | None = typer.Option(
        None,
        "--ray",
        metavar="ADDRESS|auto|local",
        help="Embed on a Ray cluster: 'local' starts one here, 'auto' joins a running one, or its address "
        "(needs `pip install 'imgsearch[ray]'`). A killed run resumes from the shards it wrote.",
    ),
) -> None:
    """Embed every image under FOLDER. Re-running is incremental: unchanged files are skipped,
    changed ones re-embedded, deleted ones removed, moved ones (even to another folder) followed
    and copies of indexed files reuse their vectors, without re-embedding. Hidden files and folders
    are skipped; symlinked folders are followed (each file once)."""
    settings = IndexingConfig(
        batch_size=batch_size or IndexingConfig.batch_size, gpu_batch_size=batch_size, workers=workers, ray=ray
    )
    excludes = tuple(exclude) + (() if no_default_excludes else DEFAULT_EXCLUDES)
    with _user_errors(), _open(index, model, pretrained, device, backend, wait, pretrained_as) as engine:
        with _progress_bar("scanning", "img", enabled=not (quiet or as_json)) as progress:
            report = engine.index_folder(folder, settings, progress, excludes, rehash)
    if as_json:
        return _print_json(report.to_dict())
    _print_index_report(report)


def _print_index_report(report) -> None:
    # The rate is the embedding's own; loading the model (once per run, and its export once per model) is said apart.
    rate = (
        f" ({report.embedded / report.embed_seconds:.1f} images/s embedding, {report.backend}; model ready in "
        f"{report.model_seconds:.1f}s)"
        if report.embedded and report.embed_seconds
        else ""
    )
    reused = f" ({report.reused} copies reused stored vectors)" if report.reused else ""
    typer.echo(
        f"{report.folder}: {report.added} added{reused}, {report.updated} updated, {report.moved} moved, "
        f"{report.removed} removed, {report.unchanged} unchanged, {len(report.skipped)} skipped "
        f"in {report.seconds:.1f}s{rate}"
    )
    for item in report.skipped[:20]:
        typer.echo(f"  skipped {item.path}: {item.reason}", err=True)
    if len(report.skipped) > 20:
        typer.echo(f"  ... and {len(report.skipped) - 20} more: see `imgsearch skipped`", err=True)
    if report.backfilled:
        typer.echo(
            f"  read the format and date of {report.backfilled} images indexed by an older imgsearch "
            "(for --after/--before/--format filters; nothing was re-embedded)",
            err=True,
        )
    if report.still_skipped:
        typer.echo(
            f"  {report.still_skipped} files skipped in earlier runs are still unreadable "
            "(`imgsearch skipped` lists them)",
            err=True,
        )
    if report.reembedded:
        typer.echo(
            f"  re-embedded {report.reembedded} unchanged images whose stored vectors were wrong: "
            f"{report.reembedded_why}",
            err=True,
        )
    for note in report.notes:
        typer.echo(f"  note: {note}", err=True)


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
        help="Only these formats, e.g. jpg,png (jpeg png webp gif bmp tiff heif avif).",
    ),
    orientation: str | None = typer.Option(None, "--orientation", metavar="landscape|portrait|square"),
    index: Path | None = IndexOpt,
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
) -> None:
    """Search the collection: by TEXT, by --image, or by both combined. With --texts, find texts
    matching an image. The query vector is the weighted sum of the terms' normalised embeddings,
    renormalised (see docs/search.md). A running `imgsearch serve` for the collection answers it when
    there is one."""
    if texts and (len(image) != 1 or text is not None or minus):
        _fail("--texts finds texts for one image: give exactly one --image PATH and no TEXT or --minus", 2)
    if not texts:
        try:  # a malformed query or filter is a usage error, found before anything loads
            filters = Filters(
                tuple(map(str, folders)), after, before, min_width, min_height, formats or (), orientation
            )
            wanted = _query(text, image, minus, filters)
        except ImgsearchError as exc:
            _fail(exc.for_cli(), 2)
    hits = None
    if server != "off" and not (pretrained or pretrained_as or device or backend):  # those ask for an in-process model
        hits = _ask_server(server, index, None if texts else wanted, image[0] if texts else None, top)
    if hits is None:
        with (
            _user_errors(),
            _open(index, pretrained=pretrained, device=device, backend=backend, pretrained_as=pretrained_as) as engine,
        ):
            found = engine.describe(image[0], k=top) if texts else engine.search(wanted, k=top)
            _warn(engine.warnings())
        hits = [h.to_dict() for h in found]
    if as_json:
        return _print_json(hits)
    for h in hits:
        typer.echo(f"{h['score']:.4f}\t{h['text'] if texts else h['path']}")


def _ask_server(url: str | None, index: Path | None, wanted: Query | None, describe: str | None, top: int):
    """Hits (as dicts) from a running server, or None to search in-process: no server was found, or the query
    needs what a server cannot take. A server named by --server (or $IMGSEARCH_SERVER) must answer."""
    from .config import collection_path
    from .server import discovery
    from .server.client import Client, Unreachable

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
        with _user_errors():
            if describe is not None:
                return client.describe(describe, top)
            assert plan is not None and wanted is not None  # checked above
            text, upload = plan
            return client.search(text, upload, k=top, filters=wanted.filters.to_params())
    except Unreachable as exc:
        if named:
            _fail(f"{exc}; start one with `imgsearch serve`, or search in-process with --server off")
        return None  # a server that stopped without withdrawing its announcement


def _server_plan(wanted: Query) -> tuple[str | None, str | None] | None:
    """(written query, image file to upload) for a server, or None when it cannot take the query: a server
    reads no local files, so at most one image, a local file added with weight 1, is uploaded."""
    images = [t for t in wanted.terms if t.kind == "image"]
    if len(images) > 1:
        return None
    if images:
        from .images import is_url

        if images[0].weight != 1 or not isinstance(images[0].value, str) or is_url(images[0].value):
            return None
    rest = tuple(t for t in wanted.terms if t.kind != "image")
    return (str(Query(rest)) if rest else None), (images[0].value if images else None)


def _query(text: str | None, images: list[str], minus: list[str], filters) -> Query:
    if text is None and not images:
        _fail("give a TEXT query, --image PATH, or both", 2)
    from .images import looks_like_image_path

    terms = list(Query.parse(text).terms) if text is not None else []
    terms += [Term.image(i) for i in images]
    terms += [Term.image(m, -1.0) if looks_like_image_path(m) else Term.text(m, -1.0) for m in minus]
    return Query(tuple(terms), filters)


@app.command()
def serve(
    index: Path | None = IndexOpt,
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
) -> None:
    """Serve the collection: a web gallery at http://HOST:PORT/ and an HTTP JSON API under /api (schema at
    /api/openapi.json). The model loads once; `imgsearch query` then asks this server and answers at once.
    Searches see what a concurrent `imgsearch index` commits, without a restart."""
    from .server.service import ServeConfig

    _check_backend(backend)
    if token_file is not None:
        try:
            token = token_file.expanduser().read_text().splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            _fail(
                f"--token-file: cannot read a token from {token_file}: {getattr(exc, 'strerror', None) or 'empty'}", 2
            )
    config = ServeConfig(
        index=index,
        host=host,
        port=port,
        token=token or None,
        max_upload_bytes=int(max_upload_mb * 2**20),
        backend=backend,
        device=device,
    )
    with _user_errors():
        from .server.app import serve as run

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
    index: Path | None = IndexOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List groups of duplicate images: identical files, and near-duplicates (resized, re-encoded or lightly
    edited copies) by similarity. The best copy (most pixels, then largest file) comes first. Nothing is
    deleted or moved."""
    with _user_errors(), _open(index) as engine:
        groups = engine.duplicates(None if exact else threshold)
    if as_json:
        return _print_json([g.to_dict() for g in groups])
    for n, group in enumerate(groups, 1):
        typer.echo(f"group {n}: {len(group.images)} images, {group.kind}")
        for image in group.images:
            size = f"{image.width}x{image.height}" if image.width else "?x?"
            mark = "same file" if image.exact_copy and image is not group.images[0] else f"{image.similarity:.3f}"
            typer.echo(f"  {mark:>9}  {size:>11}  {image.size / 1e6:7.2f} MB  {image.path}")
    extra = sum(len(g.images) - 1 for g in groups)
    typer.echo(f"{len(groups)} groups; {extra} images are copies of another", err=True)


@app.command()
def models(as_json: bool = JsonOpt) -> None:
    """Recommended models: embedding size, indexing cost relative to ViT-B-32, published text->image Recall@5
    (COCO 5K, Flickr30K 1K), and whether the weights are already downloaded. Use one with
    `imgsearch index DIR --model NAME --pretrained TAG --index NEW_PATH`."""
    from .catalog import describe

    with _user_errors():
        found = describe()
    if as_json:
        return _print_json([m.to_dict() for m in found])

    def pct(x):
        return f"{x:.1%}" if x is not None else "-"

    typer.echo(f"{'model':27} {'pretrained':19} {'dim':>4} {'cost':>5} {'COCO R@5':>8} {'F30K R@5':>8}  cached  notes")
    for m in found:
        cost = f"{m.relative_cost:g}x" if m.relative_cost else "?"
        typer.echo(
            f"{m.name:27} {m.pretrained:19} {m.dim or '?':>4} {cost:>5} {pct(m.coco_text_to_image_r5):>8} "
            f"{pct(m.flickr_text_to_image_r5):>8}  {'yes' if m.cached else 'no':6}  {m.why}"
            f"{'' if m.languages == 'English' else f' ({m.languages})'}"
        )
    typer.echo(
        "cost: image-tower compute per image relative to ViT-B-32 (indexing time scales with it); R@5: "
        "published text->image numbers (open_clip / CLIP_benchmark), '-' where none are recorded",
        err=True,
    )


@app.command()
def info(index: Path | None = IndexOpt, as_json: bool = JsonOpt) -> None:
    """What a collection holds: model, counts, index type, size on disk."""
    with _user_errors(), _open(index) as engine:
        about = engine.info()
    if as_json:
        return _print_json(about.to_dict())
    kind = (
        "exact (flat)"
        if about.image_index == "flat"
        else (
            f"{'IVF' if about.image_index == 'ivf' else 'compact IVF-PQ, re-ranked'}, {about.image_index_lists} lists, "
            f"nprobe {about.nprobe}"
        )
    )
    typer.echo(
        f"collection  {about.path}\nmodel       {about.model} ({about.pretrained or 'random weights'}), "
        f"{about.dim} dimensions\nimages      {about.images}\ntexts       {about.texts}\n"
        f"skipped     {about.skipped}\nindex       {kind}\non disk     {about.disk_bytes / 1e6:.1f} MB\n"
        f"schema      v{about.schema_version}\nbackend     {about.backend or '-'} (last index run); "
        f"queries: {about.query_backend}{f' ({about.query_backend_reason})' if about.query_backend_reason else ''}"
        + (f"\nrecipe      {_recipe_line(about.recipe)}" if about.recipe else "")
    )
    _warn(about.warnings)


def _recipe_line(recipe: dict) -> str:
    act = "QuickGELU" if recipe.get("quick_gelu") else "GELU"
    mean = "/".join(f"{float(v):g}" for v in recipe.get("mean", ()))
    std = "/".join(f"{float(v):g}" for v in recipe.get("std", ()))
    return (
        f"{recipe.get('tag') or 'architecture defaults'}: mean {mean}, std {std}, {recipe.get('interpolation')}, "
        f"{recipe.get('resize_mode')}, {act} ({recipe.get('source')})"
    )


@app.command()
def check(
    index: Path | None = IndexOpt,
    repair: bool = typer.Option(False, "--repair", help="Rebuild what can be rebuilt from the store."),
    as_json: bool = JsonOpt,
    wait: bool = WaitOpt,
) -> None:
    """Verify a collection end to end: the database (SQLite's own check), every vector, the FAISS files and float16
    rows against the store, the model's cached export. Says what is wrong and what was repaired; exits 1 while
    anything is wrong."""
    with _user_errors(), _open(index, wait=wait) as engine:
        report = engine.check(repair=repair)
    if as_json:
        _print_json(report.to_dict())
    else:
        for f in report.findings:
            mark = "ok" if f.ok else "repaired" if f.repaired else "PROBLEM"
            typer.echo(f"{mark:9} {f.part:15} {f.detail}")
        if not report.ok:
            typer.echo(
                "imgsearch: the collection has problems"
                + ("" if repair else "; `imgsearch check --repair` rebuilds what can be rebuilt"),
                err=True,
            )
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def skipped(index: Path | None = IndexOpt, as_json: bool = JsonOpt) -> None:
    """Files that could not be indexed, with the reason for each."""
    with _user_errors(), _open(index) as engine:
        items = engine.skipped()
    if as_json:
        return _print_json([s.to_dict() for s in items])
    for s in items:
        typer.echo(f"{s.path}\t{s.reason}")


@app.command()
def prune(
    index: Path | None = IndexOpt,
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only list what would be removed."),
    as_json: bool = JsonOpt,
    wait: bool = WaitOpt,
) -> None:
    """Remove entries whose files no longer exist, in every folder of the collection (a folder that
    was deleted or renamed without re-indexing it). Files on a disk that is not mounted count as gone."""
    with _user_errors(), _open(index, wait=wait) as engine:
        gone = engine.prune(dry_run=dry_run)
    if as_json:
        return _print_json({"dry_run": dry_run, "removed": gone})
    for path in gone:
        typer.echo(path)
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} {len(gone)} entries whose files are gone", err=True)


@texts_app.command("add")
def texts_add(
    file: Path = typer.Argument(..., help="UTF-8 text file, one text per line."),
    index: Path | None = IndexOpt,
    model: str | None = ModelOpt,
    pretrained: str | None = PretrainedOpt,
    pretrained_as: str | None = PretrainedAsOpt,
    device: str | None = DeviceOpt,
    backend: str | None = BackendOpt,
    wait: bool = WaitOpt,
) -> None:
    """Embed the lines of FILE into the collection's text set (for `query --image X --texts`)."""
    with _user_errors(), _open(index, model, pretrained, device, backend, wait, pretrained_as) as engine:
        engine.require_existing()  # a mistyped --index must not create a collection
        with _progress_bar("embedding", "text") as progress:
            added = engine.add_text_file(file, progress)
    typer.echo(f"added {added} texts from {file}")


@texts_app.command("clear")
def texts_clear(index: Path | None = IndexOpt, wait: bool = WaitOpt) -> None:
    """Remove every text from the collection."""
    with _user_errors(), _open(index, wait=wait) as engine:
        removed = engine.clear_texts()
    typer.echo(f"removed {removed} texts")


@cache_app.callback()
def cache_list(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """List the cached model exports with their sizes (each model tried adds 0.3-0.9 GB); `imgsearch cache remove
    MODEL` and `imgsearch cache prune` free the space, and a later run makes what it needs again."""
    if ctx.invoked_subcommand is not None:
        return
    from .inference.backends import cache_dir, cached_exports

    found = cached_exports()
    if as_json:
        return _print_json([e.to_dict() for e in found])
    import datetime as dt

    for e in found:
        used = dt.datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d")
        what = f"{e.model} ({e.pretrained or 'random weights'}{f' as {e.pretrained_as}' if e.pretrained_as else ''})"
        typer.echo(f"{e.bytes / 1e6:9.1f} MB  last used {used}  {what}{'' if e.current else '  [old format]'}")
    typer.echo(f"{len(found)} exports, {sum(e.bytes for e in found) / 1e6:.1f} MB in {cache_dir() / 'onnx'}", err=True)


@cache_app.command("remove")
def cache_remove(model: str = typer.Argument(..., help="Model name, e.g. ViT-B-32 (all its tags and files).")) -> None:
    """Remove a model's exports; its next run exports it again (once, in torch)."""
    from .inference.backends import remove_exports

    removed = remove_exports(model=model)
    if not removed:
        _fail(f"no cached export of {model!r}; `imgsearch cache` lists them", 1)
    typer.echo(f"removed {len(removed)} exports of {model}, {sum(e.bytes for e in removed) / 1e6:.1f} MB")


@cache_app.command("prune")
def cache_prune(
    unused_days: float | None = typer.Option(
        None, "--unused-days", metavar="N", help="Also remove exports no process has opened for N days."
    ),
) -> None:
    """Remove exports of older imgsearch formats and leftovers of killed exports (and, with --unused-days, those
    not used lately)."""
    from .inference.backends import remove_dead_work, remove_exports

    removed = remove_exports(unused_days=unused_days)
    from .inference.backends import cache_dir

    leftovers = remove_dead_work(cache_dir() / "onnx") if (cache_dir() / "onnx").is_dir() else []
    typer.echo(
        f"removed {len(removed)} exports, {sum(e.bytes for e in removed) / 1e6:.1f} MB"
        f"{f', and {len(leftovers)} leftovers of killed exports' if leftovers else ''}"
    )


@app.command("eval")
def eval_(
    dataset: str = typer.Argument(..., help="Dataset name: flickr30k or coco (others run, without published numbers)."),
    images: Path = typer.Option(..., "--images", help="Folder holding the dataset's images."),
    annotations: Path = typer.Option(..., "--annotations", help="Karpathy/COCO/BLIP JSON or CLIP_benchmark CSV."),
    model: str = typer.Option(ModelConfig.name, "--model", help="open_clip model name."),
    pretrained: str = typer.Option(
        ModelConfig.pretrained, "--pretrained", help="Pretrained tag, checkpoint file, or 'none'."
    ),
    pretrained_as: str | None = typer.Option(
        None,
        "--pretrained-as",
        "--published-as",
        metavar="TAG|none",
        help="The open_clip tag a --pretrained checkpoint file holds: it runs with that tag's recipe and its "
        "published numbers are shown.",
    ),
    device: str | None = DeviceOpt,
    backend: str = typer.Option(
        "torch",
        "--backend",
        metavar="|".join(BACKENDS),
        help="What runs the model. The protocol's torch fp32 by default, so that CLIP_benchmark's numbers are "
        "reproduced to the hit; a faster backend (auto, openvino, onnx...) only when asked for, and the report "
        "says which ran.",
    ),
    precision: str = typer.Option(
        "fp32",
        "--precision",
        metavar="fp32|bf16|fp16|auto",
        help="Torch precision (fp32: the protocol's; auto: bf16 where the CPU has it).",
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per forward pass."),
    ivf_threshold: int = typer.Option(
        IndexConfig.ivf_threshold, "--ivf-threshold", min=0, help="Index size from which the index is IVF (0: always)."
    ),
    nprobe: int = typer.Option(IndexConfig.nprobe, "--nprobe", min=1, help="IVF lists searched per query."),
    json_out: Path | None = typer.Option(None, "--json-out", help="Also write the full report as JSON here."),
    as_json: bool = JsonOpt,
) -> None:
    """Recall@1/5/10 and MRR, text->image and image->text, exact and through imgsearch's index
    (CLIP_benchmark protocol; see docs/evaluation.md)."""
    from .evaluation.datasets import load_dataset

    _check_backend(backend)
    if precision not in PRECISIONS:
        _fail(f"--precision: unknown precision {precision!r}; use {', '.join(PRECISIONS)}", 2)
    config = IndexConfig(ivf_threshold=ivf_threshold, nprobe=nprobe)
    if json_out is not None and not json_out.parent.is_dir():  # found now, not after an hour of embedding
        _fail(f"--json-out: folder {json_out.parent} does not exist; create it or pick another path", 2)
    with _user_errors():
        data = load_dataset(dataset.lower(), annotations, images)  # inputs checked before torch is imported
        from .clip.embedder import Embedder
        from .evaluation.retrieval import evaluate, format_table

        named = cast(ModelConfig, _model(model, pretrained, pretrained_as))  # --model always has a value here
        chosen = replace(named, backend=backend, precision=precision)
        embedder = Embedder(replace(chosen, device=device or chosen.device)).load()
        with _progress_bar("embedding", "item", enabled=not as_json) as bar:
            report = evaluate(
                data, embedder, config, batch_size, lambda stage, done, total: bar(done, total, f"embedding {stage}")
            )
    if json_out:
        json_out.write_text(json.dumps(report.to_dict(), indent=2))
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_table(report))


def main() -> None:
    import logging

    # Hub retries and "no pretrained weights" notices are noise here; failures still surface as errors.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    app()


if __name__ == "__main__":
    main()
