"""VectorIndex: exact Flat vs IVF, checked against brute-force numpy on seeded data."""

import numpy as np
import pytest

from imgsearch.config import VectorIndexConfig
from imgsearch.storage.vector_index import VectorIndex, ivf_lists


def _unit(rng, n, dim=32, centers=None):
    if centers is None:
        x = rng.normal(size=(n, dim))
    else:  # clustered data, where IVF is meaningful
        x = centers[rng.integers(0, len(centers), n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force(vectors, ids, queries, k):
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def test_flat_matches_brute_force_ids_and_scores():
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 500), _unit(rng, 20)
    ids = np.arange(1000, 1500)
    index = VectorIndex.build(32, ids, vectors)
    hits = index.search(queries, 10)
    want_ids, want_scores = _brute_force(vectors, ids, queries, 10)
    assert index.kind == "flat" and index.is_exact
    np.testing.assert_array_equal(hits.ids, want_ids)
    np.testing.assert_allclose(hits.scores, want_scores, rtol=1e-5, atol=1e-6)


def test_ivf_past_threshold_with_high_recall_against_exact():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(50, 32))
    vectors, queries = _unit(rng, 6000, centers=centers), _unit(rng, 100, centers=centers)
    ids = np.arange(6000) * 3 + 7  # ids are row ids, not positions
    config = VectorIndexConfig(ivf_threshold=2000, nprobe=8)
    index = VectorIndex.build(32, ids, vectors, config)
    assert index.kind == "ivf" and index.nlist == ivf_lists(6000, config) == round(config.ivf_lists_factor * 6000**0.5)
    assert not index.is_exact
    got = index.search(queries, 10).ids
    want, _ = _brute_force(vectors, ids, queries, 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
    assert 0.8 <= recall < 1.0 + 1e-9
    full = VectorIndex(index._index, VectorIndexConfig(ivf_threshold=2000, nprobe=10_000))
    np.testing.assert_array_equal(full.search(queries, 10).ids, want)  # nprobe = nlist is exact


def test_below_threshold_stays_flat_and_rebuild_is_signalled():
    rng = np.random.default_rng(2)
    config = VectorIndexConfig(ivf_threshold=100)
    index = VectorIndex.build(32, np.arange(99), _unit(rng, 99), config)
    assert index.kind == "flat" and not index.needs_rebuild()
    index.add(np.array([99]), _unit(rng, 1))
    assert index.needs_rebuild()


def test_ivf_shrunk_far_below_threshold_asks_for_rebuild():
    rng = np.random.default_rng(3)
    config = VectorIndexConfig(ivf_threshold=1000)
    index = VectorIndex.build(32, np.arange(2000), _unit(rng, 2000), config)
    assert index.kind == "ivf" and not index.needs_rebuild()
    index.remove(range(1600))
    assert index.ntotal == 400 and index.needs_rebuild()


@pytest.mark.parametrize("threshold", [10_000, 100])
def test_remove_ids_then_search_never_returns_them(threshold):
    rng = np.random.default_rng(4)
    vectors = _unit(rng, 300)
    index = VectorIndex.build(32, np.arange(300), vectors, VectorIndexConfig(ivf_threshold=threshold, nprobe=1000))
    assert index.remove([5, 6, 7, 999]) == 3
    hits = index.search(vectors[5:8], 5)
    assert not set(hits.ids.ravel()) & {5, 6, 7}
    assert index.ntotal == 297


def test_k_larger_than_collection_pads_with_minus_one_free_results():
    rng = np.random.default_rng(5)
    index = VectorIndex.build(32, np.array([3, 4]), _unit(rng, 2))
    hits = index.search(_unit(rng, 1), 10)
    assert sorted(hits.ids[0].tolist()) == [3, 4]
    empty = VectorIndex.empty(32).search(_unit(rng, 1), 3)
    assert (empty.ids == -1).all()


def test_save_is_atomic_and_roundtrips(tmp_path):
    rng = np.random.default_rng(6)
    vectors = _unit(rng, 50)
    index = VectorIndex.build(32, np.arange(50), vectors)
    path = tmp_path / "images.faiss"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["images.faiss"]  # no temporary file left behind
    loaded = VectorIndex.load(path)
    np.testing.assert_array_equal(loaded.search(vectors[:4], 3).ids, index.search(vectors[:4], 3).ids)


def test_wrong_dimension_is_refused():
    index = VectorIndex.empty(32)
    with pytest.raises(ValueError, match=r"\(n, 32\)"):
        index.add(np.arange(2), np.zeros((2, 16), np.float32))
