"""Commands that inspect and look after: info, check, models, the export cache, eval."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import cast

import typer

from ..config import BACKENDS, PRECISIONS, ModelConfig, VectorIndexConfig
from .common import (
    CollectionOpt,
    DeviceOpt,
    JsonOpt,
    WaitOpt,
    app,
    cache_app,
    check_backend,
    fail,
    model_config,
    open_collection,
    print_json,
    progress_bar,
    user_errors,
    warn,
)


@app.command()
def models(as_json: bool = JsonOpt) -> None:
    """Recommended models: embedding size, indexing cost relative to ViT-B-32, published text->image Recall@5
    (COCO 5K, Flickr30K 1K), and whether the weights are already downloaded. Use one with
    `imgsearch index DIR --model NAME --pretrained TAG --collection NEW_PATH`."""
    from ..catalog import describe

    with user_errors():
        found = describe()
    if as_json:
        return print_json([m.to_dict() for m in found])

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
def info(index: Path | None = CollectionOpt, as_json: bool = JsonOpt) -> None:
    """What a collection holds: model, counts, index type, size on disk."""
    with user_errors(), open_collection(index) as engine:
        about = engine.info()
    if as_json:
        return print_json(about.to_dict())
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
        f"{f'{about.dim} dimensions' if about.dim else 'nothing embedded yet'}\nimages      {about.images}{_videos(about)}\ntexts       {about.texts}\n"
        f"skipped     {about.skipped}\nindex       {kind}\non disk     {about.disk_bytes / 1e6:.1f} MB\n"
        f"schema      v{about.schema_version}\nbackend     {about.backend or '-'} (last index run); "
        f"queries: {about.query_backend}{f' ({about.query_backend_reason})' if about.query_backend_reason else ''}"
        + (f"\nrecipe      {_recipe_line(about.recipe)}" if about.recipe else "")
        + (f"\nindexing    {_activity_line(about.indexing)}" if about.indexing else "")
    )
    warn(about.warnings)


def _videos(about) -> str:
    return f" ({about.videos:,} of them videos, {about.frames:,} frames)" if about.videos else ""


def _activity_line(run: dict) -> str:
    """A run in progress, as ``info`` says it: "340 of 1,000 images under /photos (embedding; 42 s so far,
    process 4242)"."""
    seconds = max(0, round(run["updated"] - run["started"]))
    return (
        f"{run['done']:,} of {run['total']:,} images under {run['folder']} ({run['stage']}; {seconds} s so far, "
        f"process {run['pid']})"
    )


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
    index: Path | None = CollectionOpt,
    repair: bool = typer.Option(False, "--repair", help="Rebuild what can be rebuilt from the store."),
    as_json: bool = JsonOpt,
    wait: bool = WaitOpt,
) -> None:
    """Verify a collection end to end: the database (SQLite's own check), every vector, the FAISS files and float16
    rows against the store, the model's cached export. Says what is wrong and what was repaired; exits 1 while
    anything is wrong."""
    with user_errors(), open_collection(index, wait=wait) as engine:
        report = engine.check(repair=repair)
    if as_json:
        print_json(report.to_dict())
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


@cache_app.callback()
def cache_list(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """List the cached model exports with their sizes (each model tried adds 0.3-0.9 GB); `imgsearch cache remove
    MODEL` and `imgsearch cache prune` free the space, and a later run makes what it needs again."""
    if ctx.invoked_subcommand is not None:
        return
    from ..inference.backends import cache_dir, cached_exports

    found = cached_exports()
    if as_json:
        return print_json([e.to_dict() for e in found])
    import datetime as dt

    for e in found:
        used = dt.datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d")
        what = f"{e.model} ({e.pretrained or 'random weights'}{f' as {e.pretrained_as}' if e.pretrained_as else ''})"
        typer.echo(f"{e.bytes / 1e6:9.1f} MB  last used {used}  {what}{'' if e.current else '  [old format]'}")
    typer.echo(f"{len(found)} exports, {sum(e.bytes for e in found) / 1e6:.1f} MB in {cache_dir() / 'onnx'}", err=True)


@cache_app.command("remove")
def cache_remove(
    model: str = typer.Argument(..., metavar="MODEL", help="Model name, e.g. ViT-B-32 (all its tags and files)."),
) -> None:
    """Remove a model's exports; its next run exports it again (once, in torch)."""
    from ..inference.backends import remove_exports

    removed = remove_exports(model=model)
    if not removed:
        fail(f"no cached export of {model!r}; `imgsearch cache` lists them", 1)
    typer.echo(f"removed {len(removed)} exports of {model}, {sum(e.bytes for e in removed) / 1e6:.1f} MB")


@cache_app.command("prune")
def cache_prune(
    unused_days: float | None = typer.Option(
        None, "--unused-days", metavar="N", help="Also remove exports no process has opened for N days."
    ),
) -> None:
    """Remove exports of older imgsearch formats and leftovers of killed exports (and, with --unused-days, those
    not used lately)."""
    from ..inference.backends import remove_dead_work, remove_exports

    removed = remove_exports(unused_days=unused_days)
    from ..inference.backends import cache_dir

    leftovers = remove_dead_work(cache_dir() / "onnx") if (cache_dir() / "onnx").is_dir() else []
    typer.echo(
        f"removed {len(removed)} exports, {sum(e.bytes for e in removed) / 1e6:.1f} MB"
        f"{f', and {len(leftovers)} leftovers of killed exports' if leftovers else ''}"
    )


@app.command("eval")
def eval_(
    dataset: str = typer.Argument(
        ..., metavar="DATASET", help="Dataset name: flickr30k or coco (others run, without published numbers)."
    ),
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
        VectorIndexConfig.ivf_threshold,
        "--ivf-threshold",
        min=0,
        help="Index size from which the index is IVF (0: always).",
    ),
    nprobe: int = typer.Option(VectorIndexConfig.nprobe, "--nprobe", min=1, help="IVF lists searched per query."),
    json_out: Path | None = typer.Option(None, "--json-out", help="Also write the full report as JSON here."),
    as_json: bool = JsonOpt,
) -> None:
    """Recall@1/5/10 and MRR, text->image and image->text, exact and through imgsearch's index
    (CLIP_benchmark protocol; see docs/evaluation.md)."""
    from ..evaluation.datasets import load_dataset

    check_backend(backend)
    if precision not in PRECISIONS:
        fail(f"--precision: unknown precision {precision!r}; use {', '.join(PRECISIONS)}", 2)
    config = VectorIndexConfig(ivf_threshold=ivf_threshold, nprobe=nprobe)
    if json_out is not None and not json_out.parent.is_dir():  # found now, not after an hour of embedding
        fail(f"--json-out: folder {json_out.parent} does not exist; create it or pick another path", 2)
    with user_errors():
        data = load_dataset(dataset.lower(), annotations, images)  # inputs checked before torch is imported
        from ..clip.embedder import Embedder
        from ..evaluation.retrieval import evaluate, format_table

        named = cast(ModelConfig, model_config(model, pretrained, pretrained_as))  # --model always has a value here
        chosen = replace(named, backend=backend, precision=precision)
        embedder = Embedder(replace(chosen, device=device or chosen.device)).load()
        with progress_bar("embedding", "item", enabled=not as_json) as bar:
            report = evaluate(
                data, embedder, config, batch_size, lambda stage, done, total: bar(done, total, f"embedding {stage}")
            )
    if json_out:
        json_out.write_text(json.dumps(report.to_dict(), indent=2))
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_table(report))
