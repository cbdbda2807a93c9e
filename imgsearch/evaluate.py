"""Retrieval evaluation: Recall@1/5/10 and MRR in both directions, exact and through imgsearch's index.

Protocol (LAION CLIP_benchmark): embeddings are L2-normalised; a text->image query is a hit at k if its
image is among the top k; an image->text query is a hit at k if any of its captions is. MRR averages
1/rank of the first relevant item. Ties: rank = 1 + number of items scoring strictly higher than the
best relevant item (ties resolve in the query's favour; with float embeddings they are vanishingly rare).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from . import reference
from .config import IndexConfig, IndexingConfig
from .datasets import RetrievalDataset
from .errors import DatasetError
from .index import VectorIndex

KS = (1, 5, 10)
Progress = Callable[[str, int, int], None]  # (stage, done, total)
_CHUNK_CELLS = 4_000_000  # similarity cells held at once: bounds memory on 25k x 5k problems


@dataclass(frozen=True)
class Metrics:
    r1: float
    r5: float
    r10: float
    mrr: float

    @classmethod
    def from_ranks(cls, ranks: np.ndarray) -> "Metrics":
        """ranks: 1-based rank of the first relevant item per query; inf where none was found."""
        ranks = np.asarray(ranks, np.float64)
        recalls = [float(np.mean(ranks <= k)) for k in KS]
        return cls(*recalls, float(np.mean(1.0 / ranks)))

    def minus(self, other: "Metrics") -> "Metrics":
        return Metrics(*(a - b for a, b in zip(astuple(self), astuple(other))))


def astuple(m: Metrics) -> tuple[float, ...]:
    return (m.r1, m.r5, m.r10, m.mrr)


def exact_ranks(queries: np.ndarray, gallery: np.ndarray, query_labels: np.ndarray,
                gallery_labels: np.ndarray) -> np.ndarray:
    """Rank of the first gallery item whose label equals the query's, from full similarity rows."""
    rows = max(1, _CHUNK_CELLS // max(1, len(gallery)))
    out = np.empty(len(queries), np.float64)
    for start in range(0, len(queries), rows):
        sim = queries[start : start + rows] @ gallery.T
        relevant = gallery_labels[None, :] == query_labels[start : start + rows, None]
        best = np.where(relevant, sim, -np.inf).max(axis=1)
        out[start : start + rows] = 1 + (sim > best[:, None]).sum(axis=1)
    return out


def ranks_from_ids(ids: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """Rank of the first relevant id in each row of a top-k list (-1 = padding); inf if absent."""
    labels = np.where(ids >= 0, gallery_labels[np.clip(ids, 0, None)], -1)
    hit = labels == query_labels[:, None]
    first = hit.argmax(axis=1).astype(np.float64) + 1
    return np.where(hit.any(axis=1), first, np.inf)


def index_ranks(index: VectorIndex, queries: np.ndarray, query_labels: np.ndarray,
                gallery_labels: np.ndarray) -> np.ndarray:
    """Ranks through the index, asking for the whole gallery so MRR is comparable to the exact one."""
    k = index.ntotal
    rows = max(64, _CHUNK_CELLS // max(1, k))
    parts = [ranks_from_ids(index.search(queries[s : s + rows], k).ids, query_labels[s : s + rows], gallery_labels)
             for s in range(0, len(queries), rows)]
    return np.concatenate(parts) if parts else np.zeros(0)


def text_to_image_metrics(sim: np.ndarray, caption_image: np.ndarray) -> Metrics:
    """sim: (n_captions, n_images); caption_image[i] is caption i's image."""
    return Metrics.from_ranks(_ranks_from_sim(sim, caption_image, np.arange(sim.shape[1])))


def image_to_text_metrics(sim: np.ndarray, caption_image: np.ndarray) -> Metrics:
    """sim: (n_images, n_captions); an image's relevant captions are those with caption_image == it."""
    return Metrics.from_ranks(_ranks_from_sim(sim, np.arange(sim.shape[0]), caption_image))


def _ranks_from_sim(sim, query_labels, gallery_labels) -> np.ndarray:
    relevant = gallery_labels[None, :] == query_labels[:, None]
    best = np.where(relevant, sim, -np.inf).max(axis=1)
    return 1 + (sim > best[:, None]).sum(axis=1).astype(np.float64)


@dataclass(frozen=True)
class DirectionResult:
    exact: Metrics
    index: Metrics
    index_kind: str  # "flat" (exact) or "ivf"
    nlist: int | None
    nprobe: int | None

    @property
    def delta(self) -> Metrics:
        """index - exact: what approximate search costs (0 for a flat index)."""
        return self.index.minus(self.exact)


@dataclass(frozen=True)
class EvalReport:
    dataset: str
    model: str
    pretrained: str | None
    device: str
    n_images: int
    n_captions: int
    full_split: bool  # the dataset has the Karpathy test split's size, so references compare
    text_to_image: DirectionResult
    image_to_text: DirectionResult
    embed_seconds: float
    search_seconds: float
    timestamp: str
    reference: dict | None = field(default=None)  # direction -> (R@1, R@5, R@10)

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("text_to_image", "image_to_text"):
            data[key]["delta"] = asdict(getattr(self, key).delta)
        data["reference_source"] = reference.SOURCE if self.reference else None
        return data


def embed_dataset(dataset: RetrievalDataset, embedder, batch_size: int = 64,
                  progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image vectors, caption vectors); any unreadable image is an error, since metrics would be off."""
    images = np.zeros((dataset.n_images, embedder.dim), np.float32)
    done = 0
    for batch in embedder.embed_files(dataset.image_paths, IndexingConfig(batch_size=batch_size)):
        if batch.failures:
            pos, reason = batch.failures[0]
            raise DatasetError(f"cannot read {dataset.image_paths[pos]}: {reason}; every image must be readable")
        images[batch.positions] = batch.vectors
        done += len(batch.positions)
        if progress:
            progress("images", done, dataset.n_images)
    texts = [embedder.embed_texts(dataset.captions[s : s + 1024]) for s in range(0, dataset.n_captions, 1024)]
    if progress:
        progress("captions", dataset.n_captions, dataset.n_captions)
    return images, np.concatenate(texts) if texts else np.zeros((0, embedder.dim), np.float32)


def _direction(queries, gallery, query_labels, gallery_labels, config: IndexConfig) -> DirectionResult:
    exact = Metrics.from_ranks(exact_ranks(queries, gallery, query_labels, gallery_labels))
    index = VectorIndex.build(gallery.shape[1], np.arange(len(gallery)), gallery, config)
    approx = Metrics.from_ranks(index_ranks(index, queries, query_labels, gallery_labels))
    nprobe = min(config.nprobe, index.nlist) if index.kind == "ivf" else None
    return DirectionResult(exact, approx, index.kind, index.nlist, nprobe)


def evaluate(dataset: RetrievalDataset, embedder, index_config: IndexConfig = IndexConfig(),
             batch_size: int = 64, progress: Progress | None = None) -> EvalReport:
    started = time.perf_counter()
    images, texts = embed_dataset(dataset, embedder, batch_size, progress)
    embedded = time.perf_counter()
    owner, image_ids = dataset.caption_image, np.arange(dataset.n_images)
    t2i = _direction(texts, images, owner, image_ids, index_config)
    i2t = _direction(images, texts, image_ids, owner, index_config)
    model = embedder.config
    return EvalReport(
        dataset=dataset.name, model=model.name, pretrained=model.pretrained, device=embedder.device,
        n_images=dataset.n_images, n_captions=dataset.n_captions,
        full_split=reference.FULL_SPLITS.get(dataset.name) == (dataset.n_images, dataset.n_captions),
        text_to_image=t2i, image_to_text=i2t,
        embed_seconds=embedded - started, search_seconds=time.perf_counter() - embedded,
        timestamp=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        reference=reference.lookup(model.name, model.pretrained, dataset.name),
    )


def format_table(report: EvalReport) -> str:
    """A plain-text table: each direction's R@1/5/10 and MRR, exact, through the index, and the difference."""
    lines = [
        f"{report.dataset}: {report.n_images} images, {report.n_captions} captions; "
        f"model {report.model} ({report.pretrained or 'random weights'}) on {report.device}",
        f"{'direction':<15}{'':<11}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'MRR':>8}",
    ]
    for key, title in (("text_to_image", "text->image"), ("image_to_text", "image->text")):
        lines += _direction_rows(title, getattr(report, key), (report.reference or {}).get(key), report.full_split)
    if report.reference and not report.full_split:
        lines.append("published numbers are for the full Karpathy test split; this run used a different set")
    lines.append(f"embedding {report.embed_seconds:.1f}s, search {report.search_seconds:.1f}s; values in %")
    return "\n".join(lines)


def _direction_rows(title: str, result: DirectionResult, published, comparable: bool) -> list[str]:
    kind = "index" if result.index_kind == "flat" else f"ivf {result.nprobe}/{result.nlist}"
    rows = [("exact", astuple(result.exact)), (kind, astuple(result.index)), ("difference", astuple(result.delta))]
    if published and comparable:
        rows.append(("published", tuple(published)))
    return [f"{title if i == 0 else '':<15}{label:<11}" + "".join(f"{v * 100:>8.2f}" for v in values)
            for i, (label, values) in enumerate(rows)]
