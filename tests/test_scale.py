"""The compact index (IVF with 4-bit PQ codes, candidates re-scored exactly) against a brute-force reference,
alone and inside a collection: real faiss, real SQLite, real images through the tiny open_clip model."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import imgsearch
from imgsearch.config import IndexingConfig, VectorIndexConfig
from imgsearch.storage.locking import LOCK_NAME, writer_lock
from imgsearch.storage.synced import SyncedIndex
from imgsearch.storage.vector_index import VectorIndex, structure_for, training_size

from conftest import same_state

COMPACT = VectorIndexConfig(ivf_threshold=500, compact_threshold=1000, nprobe=10_000)  # every list probed


def clustered(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)).astype(np.float32)
    vectors = centres[rng.integers(20, size=n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_top(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every inner product, best first."""
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, 1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def data():
    vectors = clustered(3000)
    ids = np.arange(3000, dtype=np.int64) * 3 + 7  # ids are row ids, not positions
    table = dict(zip(ids.tolist(), vectors))
    return vectors, ids, table


def lookup(table):
    return lambda wanted: {i: table[i] for i in wanted.tolist() if i in table}


def test_structure_follows_size():
    assert [structure_for(n, COMPACT) for n in (499, 500, 999, 1000)] == ["flat", "ivf", "ivf", "compact"]
    assert training_size(100, COMPACT) == 0 and 0 < training_size(5000, COMPACT) <= 5000


def test_compact_reranked_equals_brute_force_and_is_small(data, tmp_path):
    vectors, ids, table = data
    index = VectorIndex.build(64, ids, vectors, COMPACT, exact=lookup(table))
    assert index.kind == "compact" and not index.needs_rebuild()
    queries = clustered(40, seed=1)
    want_ids, want_scores = exact_top(queries, vectors, ids, 10)
    hits = index.search(queries, 10)
    assert recall(hits.ids, want_ids) == 1.0
    np.testing.assert_allclose(hits.scores, want_scores, rtol=1e-5, atol=1e-6)
    approximate = VectorIndex.build(64, ids, vectors, replace(COMPACT, rerank=10), exact=lookup(table))
    without = approximate.search(queries, 10)  # only its own 10 candidates: the codes' ranking
    assert recall(without.ids, want_ids) < 0.97, "re-ranking was not needed here: the test proves nothing"
    index.save(tmp_path / "c.faiss")
    assert (tmp_path / "c.faiss").stat().st_size / len(ids) < 100  # codes + id + lists, not 4 bytes a dimension
    reloaded = VectorIndex.load(tmp_path / "c.faiss", COMPACT, exact=lookup(table))
    assert reloaded.kind == "compact"
    np.testing.assert_array_equal(reloaded.search(queries, 10).ids, hits.ids)


def test_compact_filters_and_deletions(data):
    vectors, ids, table = data
    index = VectorIndex.build(64, ids, vectors, COMPACT, exact=lookup(table))
    queries = clustered(10, seed=2)
    allowed = ids[::13]
    want, _ = exact_top(queries, vectors[::13], allowed, 5)
    assert recall(index.search(queries, 5, allowed=allowed).ids, want) == 1.0
    # A candidate deleted from the store since the search (its vector is gone) drops out of the results.
    best = index.search(queries[:1], 3).ids[0]
    partial = dict(table)
    del partial[int(best[0])]
    index.exact = lookup(partial)
    again = index.search(queries[:1], 3).ids[0]
    assert best[0] not in again and list(again[:2]) == list(best[1:])
    index.exact = lookup(table)
    assert index.remove(best[:2]) == 2 and best[0] not in index.ids()


def test_rebuild_moves_between_ivf_and_compact(data):
    vectors, ids, table = data
    ivf = VectorIndex.build(64, ids[:900], vectors[:900], COMPACT)
    assert ivf.kind == "ivf" and not ivf.needs_rebuild()
    ivf.add(ids[900:1100], vectors[900:1100])
    assert ivf.needs_rebuild()  # grown past compact_threshold
    compact = VectorIndex.build(64, ids[:1100], vectors[:1100], COMPACT)
    compact.remove(ids[:650])
    assert compact.kind == "compact" and compact.needs_rebuild()  # shrunk below compact_threshold / retrain_ratio


def test_a_collection_past_the_threshold_is_compact_and_ranks_like_an_exact_one(tmp_path, tiny_model):
    from test_resume import make_photos

    folder = tmp_path / "photos"
    make_photos(folder, 80)
    compact = VectorIndexConfig(ivf_threshold=20, compact_threshold=40, nprobe=10_000)
    probe = clustered(1, dim=32, seed=5)[0]  # a fixed query vector: the encoder plays no part in the comparison

    def check(engine):
        """The collection's ranking against the reference: every stored vector scored by numpy."""
        store = engine._store_for()
        paths = dict(store.all_paths())
        stored = store.vectors("images", list(paths))
        ids = np.array(sorted(stored))
        # A saved compact collection re-ranks with float16 copies of the vectors (halfvectors.py): so does the reference.
        rounded = np.stack([stored[i] for i in ids]).astype(np.float16).astype(np.float32)
        want_ids, want_scores = exact_top(probe[None], rounded, ids, 15)
        hits = engine.search_vector(probe, k=15)
        assert [h.path for h in hits] == [paths[i] for i in want_ids[0]]
        np.testing.assert_allclose([h.score for h in hits], want_scores[0], rtol=1e-5, atol=1e-6)
        assert engine.info().image_index == "compact"

    with imgsearch.open(tmp_path / "c", model=tiny_model, index_config=compact) as engine:
        engine.index_folder(folder, IndexingConfig(workers=0))
        check(engine)
    with imgsearch.open(tmp_path / "c", index_config=compact) as engine:  # loaded from its file
        check(engine)
    (tmp_path / "c" / "images.faiss").unlink()  # rebuilt by streaming the store: sample, then chunks
    with imgsearch.open(tmp_path / "c", index_config=compact) as engine:
        check(engine)


def test_streamed_rebuild_matches_the_store(tmp_path, tiny_model):
    from test_resume import make_photos

    make_photos(tmp_path / "photos", 60)
    compact = VectorIndexConfig(ivf_threshold=20, compact_threshold=40, nprobe=10_000)
    with imgsearch.open(tmp_path / "c", model=tiny_model, index_config=compact) as engine:
        engine.index_folder(tmp_path / "photos", IndexingConfig(workers=0))
        store = engine._store_for()
        with store.vector_stream("images", 32, 25) as (generation, count, sample, chunks):
            streamed = list(chunks)
        assert (generation, count) == (store.generation("images"), 60) and sample.shape == (25, 32)
        ids = np.concatenate([i for i, _ in streamed])
        vectors = np.concatenate([v for _, v in streamed])
        stored = store.vectors("images", ids)
        assert sorted(ids.tolist()) == ids.tolist() == sorted(stored)
        np.testing.assert_array_equal(vectors, np.stack([stored[i] for i in ids.tolist()]))
        assert {tuple(s) for s in sample} <= {tuple(v) for v in vectors}
        synced = SyncedIndex(store, "images", tmp_path / "c", 32, compact)
        synced.rebuild()
        assert synced.index.kind == "compact" and sorted(synced.index.ids().tolist()) == ids.tolist()


def _rows_of(coll, dim=32):
    """The float16 file's rows by id, as float32."""
    data = np.fromfile(coll / "images.f16", np.float16).reshape(-1, dim)
    return data.astype(np.float32)


def test_a_saved_compact_collection_keeps_float16_rows_stamped_with_its_index(tmp_path, tiny_model):
    from test_resume import make_photos

    make_photos(tmp_path / "photos", 60)
    compact = VectorIndexConfig(ivf_threshold=20, compact_threshold=40, nprobe=10_000)
    with imgsearch.open(tmp_path / "c", model=tiny_model, index_config=compact) as engine:
        engine.index_folder(tmp_path / "photos", IndexingConfig(workers=0, batch_size=16))
        store = engine._store_for()
        stored = store.vectors("images", [i for i, _ in store.all_paths()])
    coll = tmp_path / "c"
    assert same_state(coll / "images.f16.generation", coll / "images.faiss.generation")
    rows = _rows_of(coll)
    for i, vector in stored.items():
        np.testing.assert_array_equal(rows[i], vector.astype(np.float16).astype(np.float32))


def test_float16_rows_a_crash_left_stale_are_never_used(tmp_path, tiny_model, monkeypatch):
    """A run re-embeds a file and dies before saving, its float16 writes lost: the stale row must not score it."""
    from test_resume import make_photos

    from imgsearch.storage.halfvectors import HalfVectors

    from conftest import write_image

    photos = make_photos(tmp_path / "photos", 60)
    compact = VectorIndexConfig(ivf_threshold=20, compact_threshold=40, nprobe=10_000)
    coll = tmp_path / "c"
    with imgsearch.open(coll, model=tiny_model, index_config=compact) as engine:
        engine.index_folder(tmp_path / "photos", IndexingConfig(workers=0))
    write_image(Path(photos[7]), seed=4242, size=(40, 40))  # same path, new content
    with monkeypatch.context() as m:
        m.setattr(SyncedIndex, "save", lambda self, at_most_every=0.0: None)
        m.setattr(HalfVectors, "write", lambda self, ids, vectors: None)
        with imgsearch.open(coll, index_config=compact) as engine:
            assert engine.index_folder(tmp_path / "photos", IndexingConfig(workers=0)).updated == 1
    with imgsearch.open(coll, index_config=compact) as engine:
        store = engine._store_for()
        image_id = next(i for i, p in store.all_paths() if p == photos[7])
        new = store.vectors("images", [image_id])[image_id]
        assert float(np.dot(_rows_of(coll)[image_id], new)) < 0.999, "the test needs a stale row to prove anything"
        with monkeypatch.context() as m:  # the reader must not save yet: its first searches use the overlay
            m.setattr(SyncedIndex, "save_if_free", lambda self: False)
            hit = engine.search_vector(new, k=1)[0]
        assert hit.path == photos[7] and hit.score == pytest.approx(1.0, abs=1e-5)  # float32 from the store
    with imgsearch.open(coll, index_config=compact) as engine:  # this reader saves: the row is made current
        assert engine.search_vector(new, k=1)[0].path == photos[7]
    np.testing.assert_array_equal(_rows_of(coll)[image_id], new.astype(np.float16).astype(np.float32))


def test_float16_rows_without_a_matching_stamp_are_not_trusted(tmp_path, tiny_model):
    from test_resume import make_photos

    make_photos(tmp_path / "photos", 60)
    compact = VectorIndexConfig(ivf_threshold=20, compact_threshold=40, nprobe=10_000)
    coll = tmp_path / "c"
    with imgsearch.open(coll, model=tiny_model, index_config=compact) as engine:
        engine.index_folder(tmp_path / "photos", IndexingConfig(workers=0))
        probe = engine._store_for().vectors("images", [5])[5]
    (coll / "images.f16").write_bytes(np.ones((80, 32), np.float16).tobytes())  # garbage rows
    (coll / "images.f16.generation").write_text("0 0.0")  # from another save
    with imgsearch.open(coll, index_config=compact) as engine:
        # Not trusted: a reader finding the lock free rewrote every row from the store and stamped them.
        hit = engine.search_vector(probe, k=1)[0]
        assert hit.id == 5 and hit.score == pytest.approx(1.0, abs=1e-3)
        stored = engine._store_for().vectors("images", [i for i, _ in engine._store_for().all_paths()])
    assert same_state(coll / "images.f16.generation", coll / "images.faiss.generation")
    rows = _rows_of(coll)
    for i, vector in stored.items():
        np.testing.assert_array_equal(rows[i], vector.astype(np.float16).astype(np.float32))
    with writer_lock(coll / LOCK_NAME):  # a writer is running: garbage rows again, and this reader cannot fix them
        (coll / "images.f16").write_bytes(np.ones((80, 32), np.float16).tobytes())
        (coll / "images.f16.generation").write_text("0 0.0")
        with imgsearch.open(coll, index_config=compact) as engine:
            hit = engine.search_vector(probe, k=1)[0]
            assert hit.id == 5 and hit.score == pytest.approx(1.0, abs=1e-5)  # float32, from the store
