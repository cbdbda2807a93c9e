"""Groups of duplicate images: identical files by content hash, near-duplicates by cosine similarity.

Identical files share a content hash and so a vector; each distinct content is searched once
(``index.similar_pairs``, a faiss range search), pairs above the threshold are joined into groups
(union-find, so A~B and B~C make one group), and every group is ordered best copy first.
Nothing here touches files: listing is all it does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ..results import DuplicateGroup, DuplicateImage


class Row(NamedTuple):
    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    content_hash: str
    video: bool = False  # a video (its vector: the mean of its frames'); never grouped with a photo


def group_duplicates(
    rows: Sequence[Row], ids: np.ndarray, vectors: np.ndarray, threshold: float | None, pairs_finder
) -> list[DuplicateGroup]:
    """``ids``/``vectors``: every image's vector; ``threshold`` None: identical files only.
    ``pairs_finder(vectors, threshold) -> (i, j, similarity)``: positions of similar pairs among its rows."""
    by_id = {r.id: r for r in rows}
    position = {int(i): p for p, i in enumerate(ids)}
    contents: dict[str, list[int]] = {}
    for r in sorted(rows, key=lambda r: r.id):
        contents.setdefault(r.content_hash, []).append(r.id)
    heads = [members[0] for members in contents.values() if members[0] in position]
    parent = list(range(len(heads)))
    if threshold is not None and len(heads) > 1:
        first, second, _ = pairs_finder(vectors[[position[h] for h in heads]], threshold)
        for a, b in zip(first.tolist(), second.tolist()):
            if by_id[heads[a]].video == by_id[heads[b]].video:  # a still is not a copy of a video, nor the reverse
                _union(parent, a, b)
    components: dict[int, list[int]] = {}
    for k, head in enumerate(heads):
        components.setdefault(_find(parent, k), []).extend(contents[by_id[head].content_hash])
    groups = [
        _group([by_id[i] for i in members], vectors, position) for members in components.values() if len(members) > 1
    ]
    return sorted(groups, key=lambda g: (-len(g.images), g.images[0].path))


def _find(parent: list[int], k: int) -> int:
    while parent[k] != k:
        parent[k] = parent[parent[k]]
        k = parent[k]
    return k


def _union(parent: list[int], a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)


def _best_first(row: Row) -> tuple:
    return (-((row.width or 0) * (row.height or 0)), -row.size, row.path)


def _group(members: list[Row], vectors: np.ndarray, position: dict[int, int]) -> DuplicateGroup:
    members = sorted(members, key=_best_first)
    best = members[0]
    sims = vectors[[position[m.id] for m in members]] @ vectors[position[best.id]]
    images = tuple(
        DuplicateImage(
            m.id, m.path, m.size, m.width, m.height, round(float(min(s, 1.0)), 4), m.content_hash == best.content_hash
        )
        for m, s in zip(members, sims)
    )
    kind = "exact" if all(i.exact_copy for i in images) else "near"
    return DuplicateGroup(kind, images)
