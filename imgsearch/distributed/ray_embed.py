"""Embedding on a Ray cluster: the only module that imports ray (and pyarrow, which Ray Data brings).

Ray Data reads the run's file plan; decoding runs in CPU tasks (the same decoder as a local run); an actor pool
holds one model per GPU, or per CPU slot without GPUs. Results stream back to the coordinator
(``Collection.index_folder``), which writes each batch as a Parquet shard in the collection's folder (path, size,
mtime, content hash, width, height, format, date, vector, or the reason a file was skipped) and then commits it
with the same rules as a local run, so progress shows and the store checkpoints while the cluster works. Nothing
needs storage shared between the nodes. A killed run's shards stay; the next run takes every row whose file is
unchanged (same path, size and mtime) and embeds only the rest. Shards are removed once the run has committed all.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import numpy as np

from ..clip.embedder import Embedder
from ..config import IndexingConfig, ModelConfig
from ..errors import BadInputError, ImgsearchError
from ..images import loader, prepared
from ..records import EmbeddedBatch, FileEntry, ImageDetails

SHARDS = "ray-shards"  # the folder, in the collection's, that holds a run's shards until the run ends
_BATCHES_PER_BLOCK = 4  # model batches per Ray Data block
_MERGE_BATCH = 1024  # shard rows per committed batch
_ENV_PREFIX = "IMGSEARCH_"


def _ray():
    try:
        import ray
    except ImportError:
        raise BadInputError(
            "--ray needs Ray, which is not installed; install it with `pip install 'imgsearch[ray]'` "
            "(or leave out --ray to embed on this machine)"
        ) from None
    return ray


def connect(address: str) -> None:
    """Join a Ray cluster: "local" starts one on this machine, "auto" finds a running one (``ray start``),
    anything else is a cluster address (``ray://host:10001`` or ``host:6379``). Reuses a connection already made."""
    ray = _ray()
    if ray.is_initialized():
        return
    env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIX)}  # cache and model folders, on workers too
    kwargs = dict(
        runtime_env={"env_vars": env} if env else None,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        ray.init(address=address, **kwargs)  # "local" always starts a new one, never joins another
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ImgsearchError(
            f"cannot join the Ray cluster at {address!r}: {exc}; start one with `ray start --head`, "
            "pass its address, or use --ray local"
        ) from None


def embedded(
    entries: Sequence[FileEntry], model: ModelConfig, settings: IndexingConfig, shards: Path, min_side: int
) -> Iterator[EmbeddedBatch]:
    """Every entry embedded (or failed, with its reason) as batches whose positions index ``entries``: first the
    rows a killed run left in ``shards`` for unchanged files, then the rest, embedded on the cluster."""
    positions = {e.path: i for i, e in enumerate(entries)}
    reused = _usable_rows(shards, entries)
    yield from _batches(reused, positions)
    done = {row["path"] for row in reused}
    todo = [e for e in entries if e.path not in done]
    if todo:
        connect(cast(str, settings.ray))  # only a run with --ray comes here
        for table in _run(todo, model, settings, min_side):
            _write_shard(shards, table)  # before the commit: a kill in between loses nothing
            yield from _batches(table.to_pylist(), positions)


def clear(shards: Path) -> None:
    """Drop the shards once the coordinator has committed every row."""
    shutil.rmtree(shards, ignore_errors=True)


# -- the cluster side -------------------------------------------------------------------------------------------


def _run(entries: Sequence[FileEntry], model: ModelConfig, settings: IndexingConfig, min_side: int):
    """The results as they come, one Arrow table per model batch (files in any order)."""
    ray = _ray()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    # One model per GPU; without GPUs, one per two CPUs (a model uses several threads), leaving CPUs to decode.
    models = gpus or max(1, cpus // 2)
    items = [{"path": e.path, "size": e.size, "mtime_ns": e.mtime_ns} for e in entries]
    block = settings.batch_size * _BATCHES_PER_BLOCK
    dataset = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / block)))
    decode = functools.partial(_decode, min_side=min_side, max_pixels=settings.max_pixels, decode=settings.decode)
    # Decoding asks for less than a whole CPU, so that Ray keeps it in tasks of its own (spread over the cluster's
    # CPUs) rather than fusing it into the model actors.
    dataset = dataset.map_batches(decode, batch_size=settings.batch_size, num_cpus=0.5)
    dataset = dataset.map_batches(
        _Embed,
        fn_constructor_args=(model,),
        batch_size=settings.batch_size,
        compute=ray.data.ActorPoolStrategy(size=models),
        num_gpus=1 if gpus else 0,
        num_cpus=0 if gpus else 1,
    )
    yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")


def _decode(batch: dict, min_side: int, max_pixels: int, decode: str) -> dict:
    """A CPU task: each file decoded as a local run decodes it; pixels travel as raw RGB bytes."""
    load = loader(decode)
    out: dict[str, list] = {
        k: []
        for k in (
            "path",
            "size",
            "mtime_ns",
            "hash",
            "width",
            "height",
            "format",
            "taken_at",
            "reason",
            "pixels",
            "pixel_width",
            "pixel_height",
        )
    }
    for path, size, mtime_ns in zip(batch["path"], batch["size"], batch["mtime_ns"]):
        raw, details, reason = prepared(
            str(path), load, lambda image: (image.tobytes(), image.size), min_side, max_pixels
        )
        pixels, shape = raw or (b"", (0, 0))
        out["path"].append(str(path))
        out["size"].append(int(size))
        out["mtime_ns"].append(int(mtime_ns))
        out["hash"].append(details.content_hash if details else "")
        out["width"].append(details.width if details else 0)
        out["height"].append(details.height if details else 0)
        out["format"].append((details.format or "") if details else "")
        out["taken_at"].append(details.taken_at if details and details.taken_at is not None else math.nan)
        out["reason"].append(reason or "")
        out["pixels"].append(pixels)
        out["pixel_width"].append(shape[0])
        out["pixel_height"].append(shape[1])
    return {k: np.array(v, dtype=object if k == "pixels" else None) for k, v in out.items()}


class _Embed:
    """An actor: one model, loaded once, embedding decoded images batch by batch."""

    def __init__(self, model: ModelConfig):
        self.embedder = Embedder(model).load()

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        good = [i for i, reason in enumerate(batch["reason"]) if not reason]
        images = [
            Image.frombytes(
                "RGB", (int(batch["pixel_width"][i]), int(batch["pixel_height"][i])), bytes(batch["pixels"][i])
            )
            for i in good
        ]
        vectors = self.embedder.embed_images(images) if images else np.zeros((0, 1), np.float32)
        column = [b""] * len(batch["reason"])
        for row, vector in zip(good, vectors):
            column[row] = np.ascontiguousarray(vector, np.float32).tobytes()
        out = {k: v for k, v in batch.items() if k not in ("pixels", "pixel_width", "pixel_height")}
        out["vector"] = np.array(column, dtype=object)
        return out


# -- the coordinator side ---------------------------------------------------------------------------------------


def _write_shard(shards: Path, table) -> None:
    """One batch's rows as a Parquet file, written atomically (a temporary name, then renamed)."""
    import pyarrow.parquet as pq

    shards.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    tmp = shards / f"{name}.tmp"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, shards / f"{name}.parquet")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _usable_rows(shards: Path, entries: Sequence[FileEntry]) -> list[dict]:
    """Shard rows for these entries' files as they are now (same size and mtime); the last row wins for a path.
    A shard that cannot be read (damaged) is ignored: its files are embedded again."""
    if not shards.is_dir():
        return []
    import pyarrow.parquet as pq

    wanted = {e.path: (e.size, e.mtime_ns) for e in entries}
    found: dict[str, dict] = {}
    for file in sorted(shards.glob("*.parquet")):
        try:
            rows = pq.read_table(file).to_pylist()
        except Exception:  # noqa: BLE001 - any damage means: not usable
            continue
        for row in rows:
            if wanted.get(row["path"]) == (row["size"], row["mtime_ns"]):
                found[row["path"]] = row
    return list(found.values())


def _batches(rows: list[dict], positions: dict[str, int]) -> Iterator[EmbeddedBatch]:
    for start in range(0, len(rows), _MERGE_BATCH):
        chunk = rows[start : start + _MERGE_BATCH]
        good = [r for r in chunk if not r["reason"]]
        dim = len(good[0]["vector"]) // 4 if good else 0
        vectors = np.frombuffer(b"".join(r["vector"] for r in good), np.float32).reshape(len(good), dim)
        yield EmbeddedBatch(
            positions=[positions[r["path"]] for r in good],
            details=[
                ImageDetails(
                    r["width"],
                    r["height"],
                    r["hash"],
                    r["format"] or None,
                    None if r["taken_at"] is None or math.isnan(r["taken_at"]) else r["taken_at"],
                )
                for r in good
            ],
            vectors=vectors.copy(),
            failures=[(positions[r["path"]], r["reason"]) for r in chunk if r["reason"]],
        )
