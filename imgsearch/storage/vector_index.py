"""Vector search: the only module that imports faiss.

Inner product over L2-normalised float32 vectors (= cosine similarity); the ids
in the index are the metadata row ids. Three structures, by collection size
(``structure_for``): exact (Flat) while small, IVF-Flat past ``VectorIndexConfig.ivf_threshold``,
compact (IVF with product-quantised codes, candidates re-scored with the full vectors
the caller keeps) past ``compact_threshold``. The caller rebuilds when
``needs_rebuild`` says so.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np

from ..config import VectorIndexConfig

# faiss is a SWIG module: its classes change with the index type behind a pointer, which no stub describes.
faiss: Any = _faiss

# Batches at least this large are searched on a GPU when faiss has one.
_GPU_MIN_QUERIES = 256
# faiss GPU indexes answer at most this many neighbours per query; larger k searches on the CPU.
GPU_MAX_K = 2048
# Smaller batches search on one thread: faiss's OpenMP pool and torch's busy-wait against each
# other between calls, which made one-image queries ~30x slower on a 2-core machine.
_PARALLEL_MIN_QUERIES = 64
# A filtered search of a few queries probing at least this many lists splits the lists across every core (faiss's
# parallel_mode 1) when torch is not loaded in the process (see above): a selective filter probes most lists.
_WIDE_SCAN_LISTS = 128
# A filter keeping at least this share of the ids is applied after an ordinary (wider) search: scanning with a
# selector costs ~6x more per passing vector in faiss (measured, docs/performance.md), and most pass anyway.
_POST_FILTER_SHARE = 0.5


def torch_loaded() -> bool:
    """Whether this process has imported torch (whose OpenMP workers fight faiss's)."""
    return "torch" in sys.modules


def _threads_for(n_queries: int):
    """One faiss thread for a few queries (see _PARALLEL_MIN_QUERIES), faiss's own setting for a batch."""
    return _faiss_threads(1 if n_queries < _PARALLEL_MIN_QUERIES else None)


@contextlib.contextmanager
def _faiss_threads(n: int | None):
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class IdFilter:
    """A set of allowed ids as faiss's bitmap selector (one bit per id up to the largest); build once, search many."""

    def __init__(self, ids: np.ndarray):
        self.ids = np.asarray(ids, np.int64)
        member = np.zeros(int(self.ids.max()) + 1 if len(self.ids) else 1, bool)
        member[self.ids] = True
        self.member = member
        self._bitmap = np.packbits(member, bitorder="little")  # bit i of byte i // 8: IDSelectorBitmap's layout
        self.selector = faiss.IDSelectorBitmap(len(self._bitmap), faiss.swig_ptr(self._bitmap))  # points into it

    def __len__(self) -> int:
        return len(self.ids)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        inside = (ids >= 0) & (ids < len(self.member))
        return inside & self.member[np.where(inside, ids, 0)]


@dataclass(frozen=True)
class Hits:
    """Results for a batch of queries: row i holds query i's ids and scores, best first."""

    ids: np.ndarray  # (nq, k) int64, -1 where fewer than k vectors exist
    scores: np.ndarray  # (nq, k) float32


def file_crc(path: str | os.PathLike) -> tuple[int, int]:
    """(size, CRC-32) of a file: 2 GB/s here, 1.0 s for a 1M-vector IVF-Flat file (docs/performance.md)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _fd_crc(fd)
    finally:
        os.close(fd)


def _fd_crc(fd: int, chunk: int = 1 << 24) -> tuple[int, int]:
    import zlib

    crc, size = 0, 0
    while block := os.pread(fd, chunk, size):  # zlib releases the GIL on each block
        crc, size = zlib.crc32(block, crc), size + len(block)
    return size, crc


def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {vectors.shape}")
    return vectors


# Looks up full vectors by id for re-ranking: {id: float32 vector}; ids it cannot find are simply left out.
ExactVectors = Callable[[np.ndarray], "dict[int, np.ndarray]"]
# Queries re-ranked together: bounds the (queries x candidates x dim) scores array.
_RERANK_BATCH = 64


def structure_for(n: int, config: VectorIndexConfig) -> str:
    """ "flat", "ivf" or "compact": the index structure for n vectors."""
    if n < config.ivf_threshold:
        return "flat"
    return "compact" if n >= config.compact_threshold else "ivf"


def ivf_lists(n: int, config: VectorIndexConfig, compact: bool = False) -> int:
    lists = max(1, int(round(config.ivf_lists_factor * math.sqrt(n))))
    return min(lists, config.compact_max_lists) if compact else lists


def training_size(n: int, config: VectorIndexConfig) -> int:
    """How many of the n vectors the structure for n trains on (a random sample; 0 for Flat)."""
    structure = structure_for(n, config)
    if structure == "flat":
        return 0
    wanted = ivf_lists(n, config, structure == "compact") * config.train_per_list
    return min(n, wanted)


def training_sample(vectors: np.ndarray, size: int) -> np.ndarray:
    rng = np.random.default_rng(1234)
    return vectors[np.sort(rng.choice(len(vectors), size, replace=False))] if size < len(vectors) else vectors


class VectorIndex:
    """A faiss index with ids, that knows whether it is exact and when it should be rebuilt."""

    def __init__(
        self, index: faiss.Index, config: VectorIndexConfig = VectorIndexConfig(), exact: ExactVectors | None = None
    ):
        """``exact``: full vectors by id, which a compact index re-scores its candidates with (without it, a
        compact index ranks by its approximate codes)."""
        self._index = index
        self.config = config
        self.exact = exact
        self._gpu_index = None
        ivf = self._ivf()
        if ivf is not None:
            ivf.nprobe = min(config.nprobe, ivf.nlist)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def empty(cls, dim: int, config: VectorIndexConfig = VectorIndexConfig()) -> VectorIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), config)

    @classmethod
    def build(
        cls,
        dim: int,
        ids: np.ndarray,
        vectors: np.ndarray,
        config: VectorIndexConfig = VectorIndexConfig(),
        exact: ExactVectors | None = None,
    ) -> VectorIndex:
        """The right index for len(ids) vectors (``structure_for``), trained here on a sample of them."""
        vectors = _check_vectors(vectors, dim)
        sample = training_sample(vectors, training_size(len(ids), config))
        return cls.build_from(dim, len(ids), sample, [(ids, vectors)], config, exact)

    @classmethod
    def build_from(
        cls,
        dim: int,
        n: int,
        sample: np.ndarray,
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        config: VectorIndexConfig = VectorIndexConfig(),
        exact: ExactVectors | None = None,
    ) -> VectorIndex:
        """Build from a stream: the structure for n vectors, trained on ``sample`` (``training_size(n)`` of them,
        picked at random), then every (ids, vectors) chunk added; peak memory is the sample, a chunk and the index."""
        structure = structure_for(n, config)
        if structure == "flat" or n == 0:
            built = cls.empty(dim, config)
        else:
            sample = _check_vectors(sample, dim)
            trained = _trained_compact if structure == "compact" else _trained_ivf
            built = cls(trained(sample, ivf_lists(n, config, structure == "compact"), config), config)
        built.exact = exact
        for ids, vectors in chunks:
            built.add(ids, vectors)
        return built

    @classmethod
    def load(
        cls, path: str | os.PathLike, config: VectorIndexConfig = VectorIndexConfig(), exact: ExactVectors | None = None
    ) -> VectorIndex:
        return cls(faiss.read_index(str(path)), config, exact)

    @classmethod
    def load_verified(
        cls,
        path: str | os.PathLike,
        size: int,
        crc: int,
        config: VectorIndexConfig = VectorIndexConfig(),
        exact: ExactVectors | None = None,
    ) -> VectorIndex | None:
        """The saved index, only if the file is ``size`` bytes with CRC-32 ``crc``; else None. One open file is
        read twice at once, checked on a second thread while faiss parses it, so a file replaced meanwhile cannot
        be checked as one and loaded as another; the check adds 25% to a load instead of 60% run before it
        (scripts/bench_checks.py)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            if os.fstat(fd).st_size != size:
                return None
            by_fd = f"/proc/self/fd/{fd}"
            if not os.path.exists(by_fd):  # no procfs (macOS): check, then load the file checked
                return cls.load(path, config, exact) if _fd_crc(fd) == (size, crc) else None
            found: list[tuple[int, int]] = []
            checker = threading.Thread(target=lambda: found.append(_fd_crc(fd)), name="imgsearch-crc")
            checker.start()
            try:
                index = faiss.read_index(by_fd)
            finally:
                checker.join()
            return cls(index, config, exact) if found == [(size, crc)] else None
        finally:
            os.close(fd)

    def save(self, path: str | os.PathLike) -> tuple[int, int]:
        """Write atomically (a crash leaves either the old file or the new one, never half); returns the file's
        (size, CRC-32), for the stamp that vouches for it."""
        path = Path(path)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            faiss.write_index(self._index, str(tmp))
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            written = file_crc(tmp)
            os.replace(tmp, path)
        except BaseException:  # a full disk or Ctrl-C must not leave an index-sized file behind
            tmp.unlink(missing_ok=True)
            raise
        return written

    # -- state -------------------------------------------------------------------------------
    def _ivf(self):
        try:
            return faiss.extract_index_ivf(self._index)
        except RuntimeError:
            return None

    @property
    def dim(self) -> int:
        return self._index.d

    @property
    def ntotal(self) -> int:
        return self._index.ntotal

    @property
    def kind(self) -> str:
        """ "flat", "ivf" (IVF-Flat) or "compact" (IVF with quantised codes)."""
        ivf = self._ivf()
        if ivf is None:
            return "flat"
        return "ivf" if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat) else "compact"

    @property
    def nlist(self) -> int | None:
        ivf = self._ivf()
        return ivf.nlist if ivf is not None else None

    def ids(self) -> np.ndarray:
        """Every id the index holds (any order)."""
        ivf = self._ivf()
        if ivf is None:
            return faiss.vector_to_array(faiss.downcast_index(self._index).id_map).astype(np.int64)
        lists = ivf.invlists
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(lists.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)

    @property
    def is_exact(self) -> bool:
        ivf = self._ivf()
        return ivf is None or ivf.nprobe >= ivf.nlist

    def needs_rebuild(self) -> bool:
        """Grown or shrunk out of its structure (with ``retrain_ratio`` of slack when shrinking), or IVF whose
        lists no longer fit the collection size."""
        n, cfg, kind = self.ntotal, self.config, self.kind
        if kind == "flat":
            return n >= cfg.ivf_threshold
        if n < cfg.ivf_threshold / cfg.retrain_ratio:
            return True
        if kind == "ivf" and n >= cfg.compact_threshold:
            return True
        if kind == "compact" and n < cfg.compact_threshold / cfg.retrain_ratio:
            return True
        ideal, lists = ivf_lists(n, cfg, kind == "compact"), self.nlist or 1  # IVF and compact have lists
        return not (1 / cfg.retrain_ratio <= lists / ideal <= cfg.retrain_ratio)

    # -- mutation and search -------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = _check_vectors(vectors, self.dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(ids):
            self._index.add_with_ids(vectors, ids)
            self._gpu_index = None

    def remove(self, ids) -> int:
        ids = np.ascontiguousarray(list(ids), dtype=np.int64)
        if not len(ids):
            return 0
        self._gpu_index = None
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | IdFilter | None = None) -> Hits:
        """The k best ids per query; ``allowed``: only these ids (a filter), still k of them when k exist."""
        queries = _check_vectors(np.atleast_2d(queries), self.dim)
        if k < 1:
            raise ValueError("k must be at least 1")
        if self.ntotal == 0 or (allowed is not None and len(allowed) == 0):
            empty = np.full((len(queries), k), -1, np.int64)
            return Hits(empty, np.full((len(queries), k), -np.inf, np.float32))
        if allowed is not None and not isinstance(allowed, IdFilter):
            allowed = IdFilter(allowed)
        if self.exact is None or self.kind != "compact":
            return self._candidates(queries, k, allowed)
        k = min(k, self.ntotal if allowed is None else len(allowed))
        return self._reranked(queries, self._candidates(queries, max(k, self.config.rerank), allowed), k, self.exact)

    def _candidates(self, queries: np.ndarray, k: int, allowed: IdFilter | None) -> Hits:
        if allowed is not None:
            return self._search_allowed(queries, k, allowed)
        k = min(k, self.ntotal)
        with _threads_for(len(queries)):
            scores, ids = self._searcher(len(queries), k).search(queries, k)
        return Hits(ids, scores)

    def _reranked(self, queries: np.ndarray, candidates: Hits, k: int, vectors_of: ExactVectors) -> Hits:
        """The k best of each query's candidates by exact inner product with their full vectors (``vectors_of``); a
        candidate whose vector cannot be found (deleted meanwhile) drops out."""
        wanted = np.unique(candidates.ids[candidates.ids >= 0])
        found = vectors_of(wanted)
        full = np.zeros((len(wanted) + 1, self.dim), np.float32)  # the last row stands for "not found"
        known = np.zeros(len(wanted) + 1, bool)
        for row, vector_id in enumerate(wanted.tolist()):
            if vector_id in found:
                full[row], known[row] = found[vector_id], True
        rows = np.where(candidates.ids >= 0, np.searchsorted(wanted, candidates.ids), len(wanted))
        ids, scores = np.full((len(queries), k), -1, np.int64), np.full((len(queries), k), -np.inf, np.float32)
        for start in range(0, len(queries), _RERANK_BATCH):
            part = slice(start, start + _RERANK_BATCH)
            exact = np.einsum("qd,qcd->qc", queries[part], full[rows[part]])
            exact[~known[rows[part]]] = -np.inf
            best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            got = np.take_along_axis(exact, best, axis=1)
            ids[part] = np.where(np.isfinite(got), np.take_along_axis(candidates.ids[part], best, axis=1), -1)
            scores[part] = got
        return Hits(ids, scores)

    def _search_allowed(self, queries: np.ndarray, k: int, allowed: IdFilter) -> Hits:
        """Search only the allowed ids, through a bitmap selector (one bit test per scanned vector).

        IVF probes nprobe / selectivity lists, so a filter keeping 1% scans every list (exact over the subset)
        while one keeping a fifth probes five times the usual; if a query still finds fewer than k of the allowed
        ids, it is searched again over every list. A filter keeping half or more filters a wider ordinary search.
        """
        k, selector = min(k, len(allowed)), allowed.selector
        share = len(allowed) / self.ntotal
        if share >= _POST_FILTER_SHARE:  # most ids pass: an ordinary search for more, then drop the others
            found = self._post_filtered(queries, k, allowed, share)
            if found is not None:
                return found
        ivf = self._ivf()
        nprobe = None if ivf is None else min(ivf.nlist, math.ceil(ivf.nprobe * self.ntotal / len(allowed)))
        with self._scan_threads(len(queries), ivf if self.kind == "ivf" else None, nprobe):
            scores, ids = self._index.search(queries, k, params=self._params(selector, nprobe))
            if nprobe is not None and nprobe < ivf.nlist and (ids[:, -1] < 0).any():
                scores, ids = self._index.search(queries, k, params=self._params(selector, ivf.nlist))
        return Hits(ids, scores)

    @staticmethod
    @contextlib.contextmanager
    def _scan_threads(n_queries: int, ivf, nprobe: int | None):
        """Threads for a filtered search: a few queries probing many lists of ``ivf`` (None: not an IVF-Flat index)
        split the lists across every core; otherwise as ``_threads_for``. Searches run one at a time (the
        collection's lock), so the index's parallel mode can be switched for the call."""
        wide = (
            ivf is not None
            and nprobe is not None
            and nprobe >= _WIDE_SCAN_LISTS
            and (os.cpu_count() or 1) > 1
            and n_queries < _PARALLEL_MIN_QUERIES
            and not torch_loaded()
        )
        if not wide:
            with _threads_for(n_queries):
                yield
            return
        before = ivf.parallel_mode
        ivf.parallel_mode = 1  # over the probed lists, not over the queries
        try:
            with _faiss_threads(os.cpu_count()):
                yield
        finally:
            ivf.parallel_mode = before

    def _post_filtered(self, queries: np.ndarray, k: int, allowed: IdFilter, share: float) -> Hits | None:
        """k allowed hits out of an unfiltered search for k / share * 3 + 10; None when a query falls short."""
        wider = self._candidates(queries, min(self.ntotal, math.ceil(k / share * 3) + 10), None)
        ids, scores = np.full((len(queries), k), -1, np.int64), np.full((len(queries), k), -np.inf, np.float32)
        for row, (found, score) in enumerate(zip(wider.ids, wider.scores)):
            keep = allowed.contains(found)
            if keep.sum() < k:
                return None
            ids[row], scores[row] = found[keep][:k], score[keep][:k]
        return Hits(ids, scores)

    @staticmethod
    def _params(selector, nprobe: int | None):
        if nprobe is None:
            return faiss.SearchParameters(sel=selector)
        return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)

    def _searcher(self, n_queries: int, k: int) -> faiss.Index:
        # faiss has no GPU version of the compact (fast-scan) structure; it is fast on the CPU anyway.
        if n_queries < _GPU_MIN_QUERIES or k > GPU_MAX_K or gpu_count() == 0 or self.kind == "compact":
            return self._index
        if self._gpu_index is None:
            self._gpu_index = faiss.index_cpu_to_all_gpus(self._index)
        return self._gpu_index


def similar_pairs(
    vectors: np.ndarray, threshold: float, nprobe: int = 4, exact_below: int = 10_000, batch: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rows (i < j) with inner product >= threshold: (i, j, similarity) as arrays of positions.

    Below ``exact_below`` rows this is exact (Flat); above, an IVF index with 2*sqrt(n) lists is trained for the
    occasion and searched with ``nprobe`` lists, which finds near-identical vectors (they share a cell) at a
    small fraction of the all-pairs cost. Measured at 200k x 512 (docs/performance.md): 894 lists, nprobe 4
    found every planted copy at cosine >= 0.955 in 17 s; 447 lists, nprobe 8 took 35 s.
    """
    vectors = _check_vectors(vectors, vectors.shape[1] if vectors.ndim == 2 else 0)
    n, dim = vectors.shape
    if n < exact_below:
        index = faiss.IndexFlatIP(dim)
    else:
        config = VectorIndexConfig()
        lists = ivf_lists(n, config)
        index = _trained_ivf(training_sample(vectors, min(n, lists * config.train_per_list)), lists, config)
        index.nprobe = min(nprobe, index.nlist)
    index.add(vectors)
    found_i, found_j, found_s = [], [], []
    for start in range(0, n, batch):
        lims, sims, hits = index.range_search(vectors[start : start + batch], float(threshold))
        rows = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims).astype(np.int64))
        keep = hits > rows  # each pair once, never a row with itself
        found_i.append(rows[keep])
        found_j.append(hits[keep])
        found_s.append(sims[keep])
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)


def _trained_ivf(sample: np.ndarray, nlist: int, config: VectorIndexConfig) -> faiss.Index:
    dim = sample.shape[1]
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    _train(ivf, sample, config)
    return ivf


def _trained_compact(sample: np.ndarray, nlist: int, config: VectorIndexConfig) -> faiss.Index:
    """IVF with 4-bit product-quantisation codes scanned by SIMD (faiss's "fast scan"): 2 * ``compact_bytes``
    slices of the vector, 16 centroids each. Measured against 8-bit codes of the same size (docs/scale.md): the
    same recall after re-ranking, built 2.7x faster."""
    dim = sample.shape[1]
    slices = max(m for m in range(2, min(dim, 2 * config.compact_bytes) + 1, 2) if dim % m == 0)
    ivf = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(dim), dim, nlist, slices, 4, faiss.METRIC_INNER_PRODUCT)
    _train(ivf, sample, config)
    return ivf


def _train(ivf: faiss.Index, sample: np.ndarray, config: VectorIndexConfig) -> None:
    ivf.cp.niter = config.kmeans_iterations
    if gpu_count():
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
    ivf.train(sample)
    ivf.clustering_index = None
