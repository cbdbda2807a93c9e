"""Retrieval evaluation: Recall@1/5/10 and MRR in both directions, exact and through imgsearch's index.

Protocol (LAION CLIP_benchmark): embeddings are L2-normalised; a text->image query is a hit at k if its
image is among the top k; an image->text query is a hit at k if any of its captions is. MRR averages
1/rank of the first relevant item.

Ties favour no one: an item tied with the best relevant one is as likely to come before it as after,
so Recall@K and MRR are their expected values when ties are broken uniformly at random (computed
exactly, not sampled). Identical or all-zero embeddings therefore score chance (R@1 = 1/n), not 100%;
on real data this matters because some captions are word-for-word equal to another image's.
NaN or inf embeddings are an error. Both the exact path and the index path use this rule.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import checkpoints
from ..config import IndexingConfig, VectorIndexConfig
from ..errors import DatasetError, InvalidEmbeddingsError
from ..storage.vector_index import VectorIndex
from . import reference
from .datasets import RetrievalDataset

KS = (1, 5, 10)
Progress = Callable[[str, int, int], None]  # (stage, done, total)
_CHUNK_CELLS = 4_000_000  # similarity cells held at once: bounds memory on 25k x 5k problems


@dataclass(frozen=True)
class Outcomes:
    """Where each query's first relevant item lands, ties kept apart so that no rule can favour the query.

    ``higher``: items scoring strictly above the best relevant one; ``tied_other``: non-relevant items with
    exactly that score; ``tied_relevant``: relevant items with it (>= 1); ``found``: a relevant item was
    scored at all (an image without captions, or one an IVF probe missed, is not found).
    """

    higher: np.ndarray
    tied_other: np.ndarray
    tied_relevant: np.ndarray
    found: np.ndarray

    @classmethod
    def from_scores(cls, scores: np.ndarray, relevant: np.ndarray) -> Outcomes:
        """scores: (n, m), -inf where an item was not scored (padding); relevant: (n, m) bool."""
        best = np.where(relevant, scores, -np.inf).max(axis=1, initial=-np.inf)
        found = np.isfinite(best)
        tied = scores == best[:, None]
        return cls(
            (scores > best[:, None]).sum(axis=1),
            (tied & ~relevant).sum(axis=1),
            np.maximum((tied & relevant).sum(axis=1), 1),
            found,
        )

    @classmethod
    def concat(cls, parts: list[Outcomes]) -> Outcomes:
        return cls(
            *(
                np.concatenate([getattr(p, f) for p in parts]) if parts else np.zeros(0, np.int64)
                for f in ("higher", "tied_other", "tied_relevant", "found")
            )
        )


@dataclass(frozen=True)
class Metrics:
    r1: float
    r5: float
    r10: float
    mrr: float

    @classmethod
    def from_outcomes(cls, o: Outcomes) -> Metrics:
        """Expected Recall@K and MRR when ties are broken uniformly at random (see the module docstring)."""
        n = max(1, len(o.found))
        r1, r5, r10 = (float(np.sum(_p_rank_at_most(o, k)) / n) for k in KS)
        return cls(r1, r5, r10, float(np.sum(_expected_reciprocal_rank(o)) / n))

    def minus(self, other: Metrics) -> Metrics:
        return Metrics(*(a - b for a, b in zip(astuple(self), astuple(other))))


def astuple(m: Metrics) -> tuple[float, ...]:
    return (m.r1, m.r5, m.r10, m.mrr)


def _p_first_relevant_after(t: int, r: int) -> np.ndarray:
    """P(X >= j) for j = 0..t+1, X = non-relevant items placed before the first of r relevant ones
    when t + r tied items are shuffled: prod_{i<j} (t - i) / (t + r - i)."""
    i = np.arange(t)
    return np.concatenate([[1.0], np.cumprod((t - i) / (t + r - i)), [0.0]])


def _p_rank_at_most(o: Outcomes, k: int) -> np.ndarray:
    out = np.where(o.found & (o.higher < k), 1.0, 0.0)
    for q in np.flatnonzero(o.found & (o.higher < k) & (o.tied_other >= k - o.higher)):
        out[q] = 1.0 - _p_first_relevant_after(int(o.tied_other[q]), int(o.tied_relevant[q]))[k - o.higher[q]]
    return out


def _expected_reciprocal_rank(o: Outcomes) -> np.ndarray:
    out = np.where(o.found, 1.0 / (1.0 + o.higher), 0.0)
    for q in np.flatnonzero(o.found & (o.tied_other > 0)):
        t, r, h = int(o.tied_other[q]), int(o.tied_relevant[q]), int(o.higher[q])
        at_least = _p_first_relevant_after(t, r)
        out[q] = float(np.sum((at_least[:-1] - at_least[1:]) / (1.0 + h + np.arange(t + 1))))
    return out


def check_finite(name: str, vectors: np.ndarray) -> None:
    """NaN or inf embeddings would make every comparison false and the metrics meaningless."""
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise InvalidEmbeddingsError(
            f"{int(bad.sum())} of {len(vectors)} {name} embeddings contain NaN or inf (first: #{int(np.argmax(bad))}); "
            "the model's output is invalid: check the checkpoint (and, with a faster --backend or --precision, try the "
            "defaults: torch fp32)"
        )


def exact_outcomes(
    queries: np.ndarray, gallery: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray
) -> Outcomes:
    """Outcomes from full similarity rows, a few rows at a time."""
    rows = max(1, _CHUNK_CELLS // max(1, len(gallery)))
    parts = []
    for start in range(0, len(queries), rows):
        sim = queries[start : start + rows] @ gallery.T
        parts.append(Outcomes.from_scores(sim, gallery_labels[None, :] == query_labels[start : start + rows, None]))
    return Outcomes.concat(parts)


def index_outcomes(
    index: VectorIndex, queries: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray
) -> Outcomes:
    """Outcomes through the index, asking for the whole gallery so MRR is comparable to the exact one."""
    k = index.ntotal
    rows = max(64, _CHUNK_CELLS // max(1, k))
    parts = []
    for start in range(0, len(queries), rows):
        hits = index.search(queries[start : start + rows], k)
        labels = np.where(hits.ids >= 0, gallery_labels[np.clip(hits.ids, 0, None)], -1)
        scores = np.where(hits.ids >= 0, hits.scores, -np.inf)
        parts.append(Outcomes.from_scores(scores, labels == query_labels[start : start + rows, None]))
    return Outcomes.concat(parts)


def text_to_image_metrics(sim: np.ndarray, caption_image: np.ndarray) -> Metrics:
    """sim: (n_captions, n_images); caption_image[i] is caption i's image."""
    relevant = np.arange(sim.shape[1])[None, :] == caption_image[:, None]
    return Metrics.from_outcomes(Outcomes.from_scores(sim, relevant))


def image_to_text_metrics(sim: np.ndarray, caption_image: np.ndarray) -> Metrics:
    """sim: (n_images, n_captions); an image's relevant captions are those with caption_image == it."""
    relevant = caption_image[None, :] == np.arange(sim.shape[0])[:, None]
    return Metrics.from_outcomes(Outcomes.from_scores(sim, relevant))


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
    backend: str  # what ran the model, e.g. "torch fp32" (the protocol's; a faster one only when asked for)
    n_images: int
    n_captions: int
    full_split: bool  # the images are exactly those of the dataset's Karpathy test split, so references compare
    text_to_image: DirectionResult
    image_to_text: DirectionResult
    embed_seconds: float
    search_seconds: float
    timestamp: str
    reference: dict | None = field(default=None)  # direction -> (R@1, R@5, R@10)
    reference_note: str | None = None  # why no published numbers are shown, when they are not
    recipe: dict | None = None  # the preprocessing and activation the weights ran with (clip.models.Recipe)

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("text_to_image", "image_to_text"):
            data[key]["delta"] = asdict(getattr(self, key).delta)
        data["reference_source"] = reference.SOURCE if self.reference else None
        return data


def embed_dataset(
    dataset: RetrievalDataset, embedder, batch_size: int = 64, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(image vectors, caption vectors); any unreadable image is an error, since metrics would be off.
    Images are decoded as the CLIP_benchmark protocol does (full size, no EXIF rotation), not as indexing does."""
    images = np.zeros((dataset.n_images, embedder.dim), np.float32)
    done = 0
    for batch in embedder.embed_files(dataset.image_paths, IndexingConfig(batch_size=batch_size, decode="reference")):
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


def _direction(queries, gallery, query_labels, gallery_labels, config: VectorIndexConfig) -> DirectionResult:
    exact = Metrics.from_outcomes(exact_outcomes(queries, gallery, query_labels, gallery_labels))
    index = VectorIndex.build(gallery.shape[1], np.arange(len(gallery)), gallery, config)
    approx = Metrics.from_outcomes(index_outcomes(index, queries, query_labels, gallery_labels))
    nprobe = min(config.nprobe, index.nlist or 1) if index.kind == "ivf" else None  # an IVF index has lists
    return DirectionResult(exact, approx, index.kind, index.nlist, nprobe)


def evaluate_embeddings(
    images: np.ndarray,
    texts: np.ndarray,
    caption_image: np.ndarray,
    index_config: VectorIndexConfig = VectorIndexConfig(),
) -> tuple[DirectionResult, DirectionResult]:
    """(text->image, image->text) results for given embeddings: the metric core, without a model."""
    check_finite("image", images)
    check_finite("caption", texts)
    image_ids = np.arange(len(images))
    return (
        _direction(texts, images, caption_image, image_ids, index_config),
        _direction(images, texts, image_ids, caption_image, index_config),
    )


def evaluate(
    dataset: RetrievalDataset,
    embedder,
    index_config: VectorIndexConfig = VectorIndexConfig(),
    batch_size: int = 64,
    progress: Progress | None = None,
) -> EvalReport:
    """The report for ``embedder`` (an ``Embedder``: its recipe says which tag's published numbers apply to a
    checkpoint file tied to one, ``ModelConfig.pretrained_as``)."""
    started = time.perf_counter()
    images, texts = embed_dataset(dataset, embedder, batch_size, progress)
    embedded = time.perf_counter()
    t2i, i2t = evaluate_embeddings(images, texts, dataset.caption_image, index_config)
    model, recipe = embedder.config, embedder.recipe
    from_file = checkpoints.is_path(model.pretrained)
    full_split = reference.is_full_split(dataset.name, dataset.image_paths)
    published, why_not = reference.find(
        model.name,
        recipe.tag if from_file else model.pretrained,
        dataset.name,
        full_split,
        from_file=from_file and recipe.tag is None,
    )
    return EvalReport(
        dataset=dataset.name,
        model=model.name,
        pretrained=model.pretrained,
        device=embedder.device,
        backend=embedder.backend,
        n_images=dataset.n_images,
        n_captions=dataset.n_captions,
        full_split=full_split,
        text_to_image=t2i,
        image_to_text=i2t,
        embed_seconds=embedded - started,
        search_seconds=time.perf_counter() - embedded,
        timestamp=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        reference=published,
        reference_note=why_not,
        recipe=recipe.to_dict(),
    )


def format_table(report: EvalReport) -> str:
    """A plain-text table: each direction's R@1/5/10 and MRR, exact, through the index, and the difference."""
    lines = [
        f"{report.dataset}: {report.n_images} images, {report.n_captions} captions; "
        f"model {report.model} ({report.pretrained or 'random weights'}) on {report.device}, {report.backend}",
        f"{'direction':<15}{'':<11}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'MRR':>8}",
    ]
    for key, title in (("text_to_image", "text->image"), ("image_to_text", "image->text")):
        lines += _direction_rows(title, getattr(report, key), (report.reference or {}).get(key))
    if report.reference_note:
        lines.append(f"no published numbers: {report.reference_note}")
    lines.append(f"embedding {report.embed_seconds:.1f}s, search {report.search_seconds:.1f}s; values in %")
    return "\n".join(lines)


def _direction_rows(title: str, result: DirectionResult, published) -> list[str]:
    kind = "index" if result.index_kind == "flat" else f"ivf {result.nprobe}/{result.nlist}"
    rows = [("exact", astuple(result.exact)), (kind, astuple(result.index)), ("difference", astuple(result.delta))]
    if published:
        rows.append(("published", tuple(published)))
    return [
        f"{title if i == 0 else '':<15}{label:<11}" + "".join(f"{v * 100:>8.2f}" for v in values)
        for i, (label, values) in enumerate(rows)
    ]
