"""`imgsearch check`: a collection verified end to end, and what can be rebuilt from its store rebuilt.

The store (SQLite) is the truth and everything else is derived from it, so each part is checked against what it is
derived from: the database by SQLite's own consistency check; every stored vector for NaN and infinity; each FAISS
file by its stamp (collection, size, CRC-32) and its ids against the store's; a compact index's float16 rows by
their checksums; the model's cached export by its probes. ``repair`` rebuilds the FAISS files and float16 rows from
the store, drops rows whose vectors cannot be right (their files are embedded again by the next index run), and
removes a damaged export (the next run makes it again). A damaged database itself cannot be rebuilt from anything:
the report says what to do.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Finding:
    part: str  # "database", "vectors", "images.faiss", "texts.faiss", "images.f16", "export"
    ok: bool
    detail: str
    repaired: bool = False


@dataclass
class CheckReport:
    folder: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the collection is sound now (every problem found was repaired)."""
        return all(f.ok or f.repaired for f in self.findings)

    def to_dict(self) -> dict:
        return {"folder": self.folder, "ok": self.ok, "findings": [asdict(f) for f in self.findings]}


def database(path) -> Finding:
    """SQLite's own check of every page and index (``PRAGMA quick_check``), read-only."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check(20)")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        rows = [str(exc)]
    if rows == ["ok"]:
        return Finding("database", True, "SQLite's consistency check passed")
    return Finding(
        "database",
        False,
        f"SQLite finds it damaged ({'; '.join(rows[:3])}): nothing else holds its rows "
        "and vectors, so it cannot be rebuilt. Move imgsearch.db away (keep it: a "
        "SQLite tool may recover part of it) and index the folders again",
    )


def bad_vectors(store, table: str, dim: int) -> list[int]:
    """Ids whose stored vectors hold NaN or infinity (never written by 0.2; an older imgsearch or a damaged file)."""
    bad: list[int] = []
    with store.vector_stream(table, dim, 0) as (_, _, _, chunks):
        for ids, vectors in chunks:
            bad += ids[~np.isfinite(vectors).all(axis=1)].tolist()
    return bad


def index_file(synced) -> Finding:
    """A FAISS file against its stamp (collection, size, CRC-32) and, when current, its ids against the store's."""
    name = synced.file.name
    stamp = synced._stamp()
    if not synced.file.exists() or stamp is None:
        return Finding(name, False, "missing (searches rebuild it from the store)")
    loaded = synced._load_file(stamp)
    if loaded is None:
        why = (
            "its stamp is from before imgsearch 0.2 and vouches for nothing"
            if stamp.crc is None
            else "it belongs to another collection"
            if stamp.collection != synced.store.collection_id
            else "its contents do not match its stamp (damaged)"
        )
        return Finding(name, False, f"not used: {why}; searches rebuild it from the store")
    generation = synced.store.generation(synced.table)
    if stamp.generation == generation:
        held = np.sort(loaded.ids())
        _, ids, _ = (
            synced.store.snapshot_vectors(synced.table, synced.dim) if loaded.ntotal < 2_000_000 else (None, held, None)
        )
        if not np.array_equal(held, np.sort(ids)):
            return Finding(name, False, f"holds {len(held)} ids where the store has {len(ids)}")
    return Finding(name, True, f"{loaded.ntotal} vectors, stamp and checksum match")


def half_rows(synced, chunk: int = 65536) -> Finding | None:
    """A compact index's float16 rows against their checksums (None: the index is not compact)."""
    if not synced.half.path.exists():
        return None
    ids = synced.store.ids_written_before(synced.table, float("inf"))
    ids = np.array(sorted(ids), np.int64)
    before = synced.half.mismatched
    found = 0
    for start in range(0, len(ids), chunk):
        found += len(synced.half.read(ids[start : start + chunk])[0])
    bad = synced.half.mismatched - before
    name = synced.half.path.name
    if bad or found < len(ids):
        return Finding(
            name,
            False,
            f"{bad} rows do not match their checksums and {len(ids) - found - bad} are "
            "missing (those are read from the store instead: slower, not wrong)",
        )
    return Finding(name, True, f"{found} rows match their checksums")


def collection(db_path, dim_of, store_of, synced_of, writing, model, repair: bool) -> CheckReport:
    """Every check on one collection (``Collection.check`` gives it its parts): the database first, since nothing
    below can be trusted without it, then each table's vectors, FAISS file and float16 rows, then the export."""
    report = CheckReport(str(db_path.parent))
    report.findings.append(database(db_path))
    if not report.findings[-1].ok:
        return report
    dim = dim_of()
    for table in ("images", "frames", "texts") if dim else ():
        report.findings += _table(table, dim, store_of(), synced_of(table), writing, repair)
    report.findings += _export(model)
    return report


def _table(table: str, dim: int, store, synced, writing, repair: bool) -> list[Finding]:
    found: list[Finding] = []
    if not store.has_rows(table):
        return found
    bad = bad_vectors(store, table, dim)
    finding = Finding(
        f"{table} vectors",
        not bad,
        f"{len(bad)} hold NaN or infinity" if bad else f"all {store.count(table)} are finite",
    )
    if bad and repair:
        with writing() as writer:
            if table == "frames":  # a video with a damaged frame is removed whole: the next index run redoes it
                writer.delete_rows("images", sorted({video for video, _ in store.frame_rows(bad).values()}))
            else:
                writer.delete_rows(table, bad)
        finding.repaired = True
        finding.detail += (
            ": removed; add those texts again with `imgsearch texts add`"
            if table == "texts"
            else f": {'their videos were ' if table == 'frames' else ''}removed; `imgsearch index` embeds their "
            "files again"
        )
    found.append(finding)
    for finding in filter(None, (index_file(synced), half_rows(synced))):
        if not finding.ok and repair:
            with writing():
                synced.rebuild()
                synced.force_save()
            finding.repaired, finding.detail = True, finding.detail + ": rebuilt from the store"
        found.append(finding)
    return found


def _export(model) -> list[Finding]:
    """The model's cached export through its probes (a damaged one is removed as it is found)."""
    from .errors import ExportDamagedError
    from .inference import backends

    export = backends.runnable_export(model)
    if export is None:
        return [Finding("export", True, "none cached (the next run that needs one makes it)")]
    from .inference.onnx import OnnxTowers

    try:
        OnnxTowers(export, threads=1).check()
        if export.openvino_passed and backends.openvino_installed():
            from .inference.openvino import OpenVinoImageTower

            side = export.image_size
            for int8 in (False, True) if export.openvino_int8_passed else (False,):
                OpenVinoImageTower(export, int8=int8).encode_image(np.zeros((1, 3, side, side), np.float32))
    except ExportDamagedError as exc:
        return [Finding("export", False, str(exc), repaired=True)]
    return [Finding("export", True, f"{export.folder.name}: its towers give the probes' vectors")]
