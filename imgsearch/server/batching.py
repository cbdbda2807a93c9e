"""Micro-batching for a server's query encoder: concurrent queries are encoded together, and recent texts not at all.

One at a time, a CPU text encoder multiplies its weights by one vector per query, bound by reading the weights;
sixteen queries in one call share that read. A worker thread takes the first waiting query, gathers those that
arrive within ``max_wait`` (only while other requests are in flight: a lone query never waits), encodes up to
``max_batch`` of them in one call, and hands each caller its own row. Texts seen lately come from a small cache.
Each row is what the encoder gives that value alone, within float rounding (``tests/test_batching.py`` pins it).

Measured on 2 AVX2 cores with ViT-B-32 (docs/performance.md), batching text queries cost throughput (0.66x at 16
clients): a text is already 77 token rows, so a batch saves little GEMM work, and one batch at a time loses the
overlap of concurrent encoder runs. So a server batches only when asked (``imgsearch serve --batch``); the cache of
recent texts (a gallery asks the same text again for each page) is always on (``max_batch=1``: no worker, no wait).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Waiting:
    value: object
    done: threading.Event = field(default_factory=threading.Event)
    vector: np.ndarray | None = None
    error: BaseException | None = None


class Batcher:
    """``encode``: values -> one row per value; ``busy``: how many requests the server is answering now (the
    gathering waits for more only while that exceeds what is gathered); ``cache``: how many recent values'
    rows are kept (0: none; for texts, whose rows depend on nothing but the text)."""

    def __init__(
        self,
        encode: Callable[[list], np.ndarray],
        busy: Callable[[], int] = lambda: 1,
        max_batch: int = 16,
        max_wait: float = 0.005,
        cache: int = 0,
    ):
        self.encode, self.busy, self.max_batch, self.max_wait = encode, busy, max_batch, max_wait
        self.batches: list[int] = []  # sizes of the batches encoded, for tests and benchmarks (last 1000)
        self._queue: list[_Waiting] = []
        self._changed = threading.Condition()
        self._cache: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._cache_size = cache
        self._worker: threading.Thread | None = None

    def __call__(self, value) -> np.ndarray:
        cached = self._cached(value)
        if cached is not None:
            return cached
        if self.max_batch == 1:  # no batching: encoded in the caller's thread, concurrently with the others
            vector = np.asarray(self.encode([value]))[0]
            self._remember(value, vector)
            return vector
        waiting = _Waiting(value)
        with self._changed:
            self._queue.append(waiting)
            self._changed.notify_all()
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="imgsearch-batcher", daemon=True)
                self._worker.start()
        waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error
        assert waiting.vector is not None
        self._remember(value, waiting.vector)
        return waiting.vector

    def wait_until_queued(self, n: int, timeout: float = 30.0) -> bool:
        """Block until ``n`` values wait to be encoded (an event to synchronise on, for tests)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._queue) >= n, timeout)

    def _work(self) -> None:
        while True:
            batch = self._gather()
            try:
                vectors = np.asarray(self.encode([w.value for w in batch]))
                for w, vector in zip(batch, vectors):
                    w.vector = vector
            except BaseException as exc:  # noqa: BLE001 - each caller gets the error, the worker lives on
                for w in batch:
                    w.error = exc
            self.batches = (self.batches + [len(batch)])[-1000:]
            for w in batch:
                w.done.set()

    def _gather(self) -> list[_Waiting]:
        with self._changed:
            self._changed.wait_for(lambda: bool(self._queue))
            deadline = time.monotonic() + self.max_wait
            while len(self._queue) < self.max_batch and self.busy() > len(self._queue):
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    break
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            return batch

    def _cached(self, value) -> np.ndarray | None:
        if not self._cache_size or not isinstance(value, Hashable):
            return None
        with self._changed:
            found = self._cache.get(value)
            if found is None:
                return None
            self._cache.move_to_end(value)
            return found.copy()  # callers may combine it in place

    def _remember(self, value, vector: np.ndarray) -> None:
        if not self._cache_size or not isinstance(value, Hashable):
            return
        with self._changed:
            self._cache[value] = vector.copy()  # the caller's own row stays its own
            self._cache.move_to_end(value)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
