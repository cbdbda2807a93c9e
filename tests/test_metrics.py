"""Retrieval metrics on hand-built similarity matrices, and against a brute-force reference."""

import numpy as np
import pytest

from imgsearch.config import VectorIndexConfig
from imgsearch.evaluation.retrieval import (
    Metrics,
    Outcomes,
    exact_outcomes,
    image_to_text_metrics,
    index_outcomes,
    text_to_image_metrics,
)
from imgsearch.storage.vector_index import VectorIndex


def brute_force(sim, relevant_sets, ks=(1, 5, 10)):
    """The protocol read literally, ties broken at random: the first relevant item of the tied block lands
    at block position p with probability C(t + r - p, r - 1) / C(t + r, r) (the other r - 1 relevant items
    take later places), so its rank is (items strictly above) + p."""
    from math import comb

    recalls, reciprocal = np.zeros(len(ks)), 0.0
    for row, relevant in zip(sim, relevant_sets):
        best = max(row[j] for j in relevant)
        above = sum(v > best for v in row)
        r = sum(row[j] == best for j in relevant)
        t = sum(v == best for v in row) - r
        for p in range(1, t + 2):
            prob = comb(t + r - p, r - 1) / comb(t + r, r)
            recalls += prob * np.array([above + p <= k for k in ks])
            reciprocal += prob / (above + p)
    return list(recalls / len(sim)) + [reciprocal / len(sim)]


def test_text_to_image_hand_built():
    # 3 images, 4 captions: captions 0,1 -> image 0, caption 2 -> image 1, caption 3 -> image 2
    owner = np.array([0, 0, 1, 2])
    sim = np.array(
        [
            [0.9, 0.1, 0.2],  # rank 1
            [0.5, 0.7, 0.1],  # rank 2
            [0.8, 0.3, 0.9],  # image 1 scores 0.3 -> rank 3
            [0.1, 0.2, 0.3],  # rank 1
        ]
    )
    m = text_to_image_metrics(sim, owner)
    assert (m.r1, m.r5, m.r10) == (0.5, 1.0, 1.0)
    assert m.mrr == pytest.approx((1 + 1 / 2 + 1 / 3 + 1) / 4)


def test_image_to_text_any_caption_counts():
    owner = np.array([0, 0, 1, 2])
    sim = np.array(
        [
            [0.1, 0.5, 0.9, 0.2],  # image 0: best own caption 0.5, one other above -> rank 2
            [0.3, 0.2, 0.1, 0.0],  # image 1: own caption 0.1, two above -> rank 3
            [0.0, 0.0, 0.0, 0.4],  # image 2: rank 1
        ]
    )
    m = image_to_text_metrics(sim, owner)
    assert (m.r1, m.r5) == (pytest.approx(1 / 3), 1.0)
    assert m.mrr == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)


def test_ties_favour_no_one_and_k_beyond_gallery():
    sim = np.array([[0.5, 0.5, 0.5]])  # all tied: the relevant image is first one time in three
    m = text_to_image_metrics(sim, np.array([2]))
    assert m.r1 == pytest.approx(1 / 3) and m.r5 == 1.0 and m.mrr == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    m = text_to_image_metrics(np.array([[0.9, 0.1]]), np.array([1]))  # gallery of 2, k=5 and 10
    assert (m.r1, m.r5, m.r10, m.mrr) == (0.0, 1.0, 1.0, 0.5)


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n_images, per = 30, rng.integers(1, 6)
    owner = np.repeat(np.arange(n_images), per)
    rng.shuffle(owner)
    sim = rng.normal(size=(len(owner), n_images)).round(1)  # rounding makes ties common
    t2i = text_to_image_metrics(sim, owner)
    np.testing.assert_allclose(astuple(t2i), brute_force(sim, [{o} for o in owner]))
    i2t = image_to_text_metrics(sim.T, owner)
    np.testing.assert_allclose(
        astuple(i2t), brute_force(sim.T, [set(np.flatnonzero(owner == i)) for i in range(n_images)])
    )


def astuple(m: Metrics):
    return (m.r1, m.r5, m.r10, m.mrr)


def _unit(rng, n, dim=16):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_chunked_exact_and_flat_index_ranks_equal_the_matrix_path(monkeypatch):
    import imgsearch.evaluation.retrieval as ev

    monkeypatch.setattr(ev, "_CHUNK_CELLS", 500)  # force many chunks
    rng = np.random.default_rng(7)
    images, texts = _unit(rng, 40), _unit(rng, 120)
    owner = rng.integers(0, 40, 120)
    sim = texts @ images.T
    want = text_to_image_metrics(sim, owner)
    got = Metrics.from_outcomes(exact_outcomes(texts, images, owner, np.arange(40)))
    np.testing.assert_allclose(astuple(got), astuple(want))
    flat = VectorIndex.build(16, np.arange(40), images)
    via_index = Metrics.from_outcomes(index_outcomes(flat, texts, owner, np.arange(40)))
    np.testing.assert_allclose(astuple(via_index), astuple(want), atol=1e-12)
    i2t = Metrics.from_outcomes(
        index_outcomes(VectorIndex.build(16, np.arange(120), texts), images, np.arange(40), owner)
    )
    np.testing.assert_allclose(astuple(i2t), astuple(image_to_text_metrics(sim.T, owner)))


def test_padding_and_misses_in_top_k_lists():
    scores = np.array([[0.9, 0.8, -np.inf], [0.9, 0.8, 0.7], [0.5, -np.inf, -np.inf]])
    labels = np.array([[3, 1, -1], [0, 2, 1], [2, -1, -1]])
    outcomes = Outcomes.from_scores(scores, labels == np.array([1, 5, 2])[:, None])
    assert outcomes.found.tolist() == [True, False, True] and outcomes.higher[[0, 2]].tolist() == [1, 0]
    m = Metrics.from_outcomes(outcomes)
    assert m.r1 == pytest.approx(1 / 3) and m.mrr == pytest.approx((0.5 + 0 + 1) / 3)


def test_ivf_index_ranks_never_beat_exact_recall_at_full_probe():
    rng = np.random.default_rng(8)
    images, texts = _unit(rng, 300), _unit(rng, 600)
    owner = rng.integers(0, 300, 600)
    exact = Metrics.from_outcomes(exact_outcomes(texts, images, owner, np.arange(300)))
    full = VectorIndex.build(16, np.arange(300), images, VectorIndexConfig(ivf_threshold=100, nprobe=10_000))
    assert full.kind == "ivf"
    np.testing.assert_allclose(
        astuple(Metrics.from_outcomes(index_outcomes(full, texts, owner, np.arange(300)))), astuple(exact)
    )
