"""Commands that change what a collection holds: index, skipped, prune, texts add/clear."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from ..config import DEFAULT_EXCLUDES, IndexingConfig, WatchConfig
from .common import (
    BackendOpt,
    CollectionOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    PretrainedAsOpt,
    PretrainedOpt,
    WaitOpt,
    app,
    fail,
    open_collection,
    print_json,
    progress_bar,
    texts_app,
    user_errors,
)

ExcludeOpt = typer.Option(
    [], "--exclude", metavar="GLOB", help="Leave out names or relative paths matching GLOB (repeatable)."
)
NoDefaultExcludesOpt = typer.Option(
    False, "--no-default-excludes", help=f"Also index {', '.join(DEFAULT_EXCLUDES)} (left out by default)."
)


def _default_workers() -> int:
    return IndexingConfig().resolved_workers()


BatchSizeOpt = typer.Option(
    None,
    "--batch-size",
    min=1,
    help=f"Images per forward pass [default: {IndexingConfig.batch_size} on a CPU; "
    "on a GPU, the largest that fits, probed].",
)
WorkersOpt = typer.Option(
    None,
    "--workers",
    min=0,
    metavar="N",
    help=f"Decoding workers: threads when the model runs from its cached export (no torch) [default: one per core], "
    f"else processes [default: {_default_workers()} here; on a GPU machine, all cores but one].",
)


def _settings(batch_size: int | None, workers: int | None, ray: str | None = None) -> IndexingConfig:
    return IndexingConfig(
        batch_size=batch_size or IndexingConfig.batch_size, gpu_batch_size=batch_size, workers=workers, ray=ray
    )


@app.command()
def index(
    folder: Path | None = typer.Argument(None, metavar="FOLDER", help="Folder to index (searched recursively)."),
    index: Path | None = CollectionOpt,
    model: str | None = ModelOpt,
    pretrained: str | None = PretrainedOpt,
    pretrained_as: str | None = PretrainedAsOpt,
    device: str | None = DeviceOpt,
    backend: str | None = BackendOpt,
    batch_size: int | None = BatchSizeOpt,
    workers: int | None = WorkersOpt,
    exclude: list[str] = ExcludeOpt,
    no_default_excludes: bool = NoDefaultExcludesOpt,
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
    if folder is None:
        fail(
            "give the folder to index, e.g. `imgsearch index ~/Pictures` (searched recursively; run it again to take in changes)",
            2,
        )
    settings = _settings(batch_size, workers, ray)
    excludes = tuple(exclude) + (() if no_default_excludes else DEFAULT_EXCLUDES)
    with user_errors(), open_collection(index, model, pretrained, device, backend, wait, pretrained_as) as engine:
        with progress_bar("scanning", "img", enabled=not (quiet or as_json)) as progress:
            report = engine.index_folder(folder, settings, progress, excludes, rehash)
    if as_json:
        return print_json(report.to_dict())
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
def skipped(index: Path | None = CollectionOpt, as_json: bool = JsonOpt) -> None:
    """Files that could not be indexed, with the reason for each."""
    with user_errors(), open_collection(index) as engine:
        items = engine.skipped()
    if as_json:
        return print_json([s.to_dict() for s in items])
    for s in items:
        typer.echo(f"{s.path}\t{s.reason}")


@app.command()
def prune(
    index: Path | None = CollectionOpt,
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only list what would be removed."),
    as_json: bool = JsonOpt,
    wait: bool = WaitOpt,
) -> None:
    """Remove entries whose files no longer exist, in every folder of the collection (a folder that
    was deleted or renamed without re-indexing it). Files on a disk that is not mounted count as gone."""
    with user_errors(), open_collection(index, wait=wait) as engine:
        gone = engine.prune(dry_run=dry_run)
    if as_json:
        return print_json({"dry_run": dry_run, "removed": gone})
    for path in gone:
        typer.echo(path)
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} {len(gone)} entries whose files are gone", err=True)


@texts_app.command("add")
def texts_add(
    file: Path = typer.Argument(..., metavar="FILE", help="UTF-8 text file, one text per line."),
    index: Path | None = CollectionOpt,
    model: str | None = ModelOpt,
    pretrained: str | None = PretrainedOpt,
    pretrained_as: str | None = PretrainedAsOpt,
    device: str | None = DeviceOpt,
    backend: str | None = BackendOpt,
    wait: bool = WaitOpt,
) -> None:
    """Embed the lines of FILE into the collection's text set (for `query --image X --texts`)."""
    with user_errors(), open_collection(index, model, pretrained, device, backend, wait, pretrained_as) as engine:
        engine.require_existing()  # a mistyped --collection must not create a collection
        with progress_bar("embedding", "text") as progress:
            added = engine.add_text_file(file, progress)
    typer.echo(f"added {added} texts from {file}")


@texts_app.command("clear")
def texts_clear(index: Path | None = CollectionOpt, wait: bool = WaitOpt) -> None:
    """Remove every text from the collection."""
    with user_errors(), open_collection(index, wait=wait) as engine:
        removed = engine.clear_texts()
    typer.echo(f"removed {removed} texts")


@app.command()
def watch(
    folders: list[Path] = typer.Argument(None, metavar="FOLDER...", help="Folders to keep in step (recursively)."),
    index: Path | None = CollectionOpt,
    model: str | None = ModelOpt,
    pretrained: str | None = PretrainedOpt,
    pretrained_as: str | None = PretrainedAsOpt,
    device: str | None = DeviceOpt,
    backend: str | None = BackendOpt,
    batch_size: int | None = BatchSizeOpt,
    workers: int | None = WorkersOpt,
    exclude: list[str] = ExcludeOpt,
    no_default_excludes: bool = NoDefaultExcludesOpt,
    settle: float = typer.Option(
        WatchConfig.settle, "--settle", min=0.0, metavar="SECONDS", help="Quiet time before a changed file is read."
    ),
    rescan: float = typer.Option(
        WatchConfig.rescan,
        "--rescan",
        min=0.0,
        metavar="SECONDS",
        help="Seconds between full scans that catch changes the system did not report (0: only at start).",
    ),
    scan_every: float | None = typer.Option(
        None,
        "--scan-every",
        min=0.1,
        metavar="SECONDS",
        help="Follow no file events; scan every SECONDS instead (network shares, whose changes made elsewhere send "
        "no events).",
    ),
) -> None:
    """Keep the collection in step with FOLDER...: new, changed, moved and deleted photos are indexed seconds
    after their files settle, by the same rules as `imgsearch index` (which first runs once over each folder).
    Runs until Ctrl-C. `imgsearch serve --watch FOLDER` does the same inside the server."""
    from ..watching import Watcher

    if not folders:
        fail("give the folders to watch, e.g. `imgsearch watch ~/Pictures`", 2)
    excludes = tuple(exclude) + (() if no_default_excludes else DEFAULT_EXCLUDES)
    config = WatchConfig(settle=settle, rescan=rescan)
    if scan_every is not None:
        config = dataclasses.replace(config, poll=scan_every, events=False)
    with user_errors(), open_collection(index, model, pretrained, device, backend, True, pretrained_as) as engine:
        settings = _settings(batch_size, workers)
        watcher = Watcher(engine, folders, settings, config, excludes, _print_run, _print_notice)
        typer.echo(f"imgsearch: watching {', '.join(map(str, watcher.roots))} (Ctrl-C to stop)", err=True)
        with watcher:
            _until_interrupted()


def _print_run(run) -> None:
    if run.error is not None:
        return  # said by _print_notice
    report = run.report
    if run.reason == "start" or report.added or report.updated or report.moved or report.removed or report.skipped:
        _print_index_report(report)


def _print_notice(message: str) -> None:
    typer.echo(f"imgsearch: {message}", err=True)


def _until_interrupted() -> None:
    import signal
    import threading

    stopped = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(3600):  # the wait wakes for Ctrl-C and SIGTERM alike
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
