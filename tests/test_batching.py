"""The server's micro-batching (server/batching.py) with the tiny model's real encoders: concurrent queries are
encoded together, each gets its own row, equal to encoding it alone; a lone query never waits; errors reach every
caller; recent texts come from the cache. Synchronised on the batcher's own queue, never on sleeps."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

import imgsearch
from imgsearch.errors import BadInputError
from imgsearch.server.batching import Batcher

from conftest import COCO_MINI

TEXTS = ["a dog on a beach", "a red car", "two cats", "a kitchen", "the night sky", "a bowl of fruit", "a bus"]


def _threads(batcher: Batcher, values: list) -> tuple[list[threading.Thread], dict]:
    results: dict = {}

    def ask(value):
        try:
            results[value] = batcher(value)
        except BadInputError as exc:
            results[value] = exc

    threads = [threading.Thread(target=ask, args=(v,)) for v in values]
    return threads, results


def test_concurrent_queries_are_encoded_together_each_as_it_would_be_alone(tiny_embedder):
    gate, entered, calls = threading.Event(), threading.Event(), []

    def encode(values):
        calls.append(list(values))
        if len(calls) == 1:
            entered.set()
            gate.wait(60)  # the first batch holds the encoder while the others arrive
        return tiny_embedder.embed_texts(values)

    batcher = Batcher(encode, busy=lambda: 1 + len(TEXTS), max_wait=30.0)
    first, results = _threads(batcher, ["a photo"])
    first[0].start()
    assert entered.wait(60)
    rest, more = _threads(batcher, TEXTS)
    for t in rest:
        t.start()
    assert batcher.wait_until_queued(len(TEXTS))  # all seven wait while the first batch runs
    gate.set()
    for t in first + rest:
        t.join(60)
    results |= more
    assert [len(c) for c in calls] == [1, len(TEXTS)]  # the seven in one call, not seven
    alone = {t: tiny_embedder.embed_texts([t])[0] for t in ["a photo", *TEXTS]}
    for text, vector in results.items():
        np.testing.assert_allclose(vector, alone[text], atol=1e-5)


def test_a_lone_query_never_waits_for_company(tiny_embedder):
    """Gathering waits only while other requests are in flight: p95 at one client is not 5 ms worse."""
    batcher = Batcher(tiny_embedder.embed_texts, busy=lambda: 1, max_wait=3600.0)
    asked, results = _threads(batcher, ["a dog"])
    asked[0].start()
    asked[0].join(60)  # an hour's wait would fail here, not hang the run
    assert not asked[0].is_alive() and batcher.batches == [1]
    np.testing.assert_allclose(results["a dog"], tiny_embedder.embed_texts(["a dog"])[0], atol=1e-6)


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_works(tiny_embedder):
    failing = {"now": True}

    def encode(values):
        if failing.pop("now", False):
            raise BadInputError("the encoder refused")
        return tiny_embedder.embed_texts(values)

    batcher = Batcher(encode)
    with pytest.raises(BadInputError, match="refused"):
        batcher("a dog")
    assert batcher("a dog").shape == (tiny_embedder.embed_texts(["x"]).shape[1],)


def test_recent_texts_come_from_the_cache(tiny_embedder):
    calls = []
    batcher = Batcher(lambda values: calls.append(values) or tiny_embedder.embed_texts(values), cache=2)
    first = batcher("a dog")
    first[:] = 0  # a caller changing its copy changes nothing kept
    again = batcher("a dog")
    assert len(calls) == 1 and np.allclose(again, tiny_embedder.embed_texts(["a dog"])[0], atol=1e-6)
    batcher("a cat"), batcher("a bus"), batcher("a dog")  # "a dog" was the oldest of three: encoded again
    assert len(calls) == 4


def test_a_served_collection_answers_concurrent_queries_as_the_api_does(tmp_path, tiny_embedder):
    """The same top 10 with micro-batching as a query encoded alone, for every query of a concurrent burst."""
    from imgsearch.search import Filters
    from imgsearch.server.service import SearchService, ServeConfig

    photos = tmp_path / "photos"
    photos.mkdir()
    for src in sorted(COCO_MINI.glob("*/*.jpg"))[:30]:
        shutil.copy(src, photos / src.name)
    with imgsearch.open(tmp_path / "c", embedder=tiny_embedder) as engine:
        engine.index_folder(photos)
    alone = SearchService(ServeConfig(index=tmp_path / "c"))  # the default: each query encoded alone
    service = SearchService(ServeConfig(index=tmp_path / "c", batch=True))

    def top(svc, text):
        return [(h["id"], h["score"]) for h in svc.search(text, None, Filters(), 0, 10)["results"]]

    expected = {t: top(alone, t) for t in TEXTS}
    got: dict = {}
    start = threading.Barrier(len(TEXTS))

    def ask(text):
        start.wait(60)
        got[text] = top(service, text)

    threads = [threading.Thread(target=ask, args=(t,)) for t in TEXTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(got) == set(TEXTS)
    for text, hits in got.items():  # the same ranking; rows equal within float rounding may swap exact ties only
        want = expected[text]
        np.testing.assert_allclose([s for _, s in hits], [s for _, s in want], atol=1e-5)
        scores = dict(want)
        assert all(abs(scores[i] - s) <= 1e-5 for i, s in hits if i in scores), text
        assert len({i for i, _ in hits} & set(scores)) >= 9, text
    assert sum(service.collection.query_fronts["embed_texts"].batches) == len(TEXTS)  # each encoded once

    # The default server keeps recent texts: the gallery's next page of the same query encodes nothing.
    calls: list = []
    encode = alone.collection.encode_many
    alone.collection.encode_many = lambda method, values: calls.append(list(values)) or encode(method, values)
    first = alone.search("a dog with a frisbee", None, Filters(), 0, 10)["results"]
    second = alone.search("a dog with a frisbee", None, Filters(), 10, 10)["results"]
    assert calls == [["a dog with a frisbee"]] and len(first) == 10 and len(second) == 10
    assert not {h["id"] for h in first} & {h["id"] for h in second}
