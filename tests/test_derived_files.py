"""Derived files are verified before they are believed: a FAISS file by its stamp (this collection's id, the file's
size and CRC-32), float16 rows by their checksums; rows an index names but the database cannot give are an error
saying the collection is damaged; `imgsearch check` finds each problem and `--repair` rebuilds what it can."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

import imgsearch
from imgsearch.config import VectorIndexConfig
from imgsearch.errors import CollectionDamagedError

from conftest import write_image


def _garble(path, size: int = 4096, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if offset is None else offset
    data[start : start + size] = (
        np.random.default_rng(0).integers(0, 256, min(size, len(data) - start), dtype=np.uint8).tobytes()
    )
    path.write_bytes(bytes(data))


@pytest.fixture
def coll(tmp_path, tiny_model):
    photos = tmp_path / "photos"
    for i in range(40):
        write_image(photos / f"p{i:02d}.png", i)
    folder = tmp_path / "coll"
    with imgsearch.open(folder, model=tiny_model) as engine:
        engine.index_folder(photos)
    return folder, photos


def _search(folder, photos, config=VectorIndexConfig()):
    from PIL import Image

    with imgsearch.open(folder, index_config=config) as engine:
        return [(h.path, round(h.score, 5)) for h in engine.search_image(Image.open(photos / "p07.png"), k=10)]


def test_garbage_in_the_faiss_file_is_found_and_rebuilt(coll):
    """0.1 loaded it by its generation stamp alone: scores like 4.8e37, wrong images, rc 0, and no run repaired it."""
    folder, photos = coll
    expected = _search(folder, photos)
    _garble(folder / "images.faiss")
    assert _search(folder, photos) == expected  # the damaged file is not believed: rebuilt from the store
    stamp = json.loads((folder / "images.faiss.generation").read_text())
    from imgsearch.storage.vector_index import file_crc

    assert (stamp["size"], stamp["crc"]) == file_crc(folder / "images.faiss")  # the reader saved a sound one


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_faiss_file_is_loaded_only_as_its_stamp_describes_it(tmp_path, kind):
    """The check runs while faiss parses the same open file: damage anywhere, the header included, is refused (and
    never crashes the parser), and a file that is intact loads with the same results."""
    import random

    from imgsearch.storage.vector_index import VectorIndex

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 32), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    config = VectorIndexConfig(ivf_threshold=100 if kind == "ivf" else 50_000, train_per_list=39)
    index = VectorIndex.build(32, np.arange(3000), vectors, config)
    assert index.kind == kind
    path = tmp_path / "images.faiss"
    size, crc = index.save(path)
    loaded = VectorIndex.load_verified(path, size, crc, config)
    assert loaded is not None
    np.testing.assert_array_equal(loaded.search(vectors[:5], 10).ids, index.search(vectors[:5], 10).ids)
    assert VectorIndex.load_verified(path, size + 1, crc, config) is None
    intact, pick = path.read_bytes(), random.Random(0)
    for trial in range(40):
        damaged = bytearray(intact)
        where = pick.randrange(400) if trial % 2 else pick.randrange(len(damaged) - 8)  # header, or anywhere
        damaged[where : where + 4] = pick.randbytes(4)
        if damaged == intact:
            continue
        path.write_bytes(bytes(damaged))
        try:
            assert VectorIndex.load_verified(path, size, crc, config) is None, where
        except RuntimeError:  # faiss found it first
            pass


def test_another_collections_faiss_file_is_not_taken_for_ours(coll, tmp_path, tiny_model):
    folder, photos = coll
    other_photos = tmp_path / "other"
    for i in range(40):
        write_image(other_photos / f"o{i:02d}.png", 1000 + i)
    with imgsearch.open(tmp_path / "other-coll", model=tiny_model) as engine:
        engine.index_folder(other_photos)
    expected = _search(folder, photos)
    for name in ("images.faiss", "images.faiss.generation"):  # same size, same generation
        shutil.copy(tmp_path / "other-coll" / name, folder / name)
    assert _search(folder, photos) == expected


def test_damaged_float16_rows_are_read_from_the_store(tmp_path, tiny_model):
    """A compact index re-ranks with float16 rows; 0.1 trusted random bytes in them under an intact stamp (64 of 80
    result ids changed)."""
    photos = tmp_path / "photos"
    for i in range(60):
        write_image(photos / f"p{i:02d}.png", i)
    config = VectorIndexConfig(ivf_threshold=20, compact_threshold=30, compact_bytes=4, rerank=60)
    with imgsearch.open(tmp_path / "coll", model=tiny_model, index_config=config) as engine:
        engine.index_folder(photos)
        assert engine._synced("images").index.kind == "compact"
    expected = _search(tmp_path / "coll", photos, config)
    _garble(tmp_path / "coll" / "images.f16", size=2000, offset=64 * 30)
    with imgsearch.open(tmp_path / "coll", index_config=config) as engine:
        from PIL import Image

        got = [(h.path, round(h.score, 5)) for h in engine.search_image(Image.open(photos / "p07.png"), k=10)]
        assert engine._synced("images").half.mismatched > 0  # found, and read from SQLite instead
    # float32 from SQLite: the same scores within float16's rounding, so the same results but for near-ties
    # swapping places (they do on a CPU without AVX-512); garbled rows moved 64 of 80 ids and their scores
    assert np.allclose([s for _, s in got], [s for _, s in expected], atol=1e-3)
    before = dict(expected)
    assert all(abs(before[p] - s) <= 1e-3 for p, s in got if p in before)
    assert len(set(before) & {p for p, _ in got}) >= 8


def test_a_stamp_from_before_02_vouches_for_nothing(coll):
    folder, photos = coll
    expected = _search(folder, photos)
    stamp = json.loads((folder / "images.faiss.generation").read_text())
    (folder / "images.faiss.generation").write_text(f"{stamp['generation']} {stamp['since']!r}")  # 0.1's format
    _garble(folder / "images.faiss")
    assert _search(folder, photos) == expected


def test_results_the_database_cannot_give_are_an_error_saying_it_is_damaged(coll):
    """0.1 answered `query -k 10` with 5 hits, rc 0, when a page of images was damaged."""
    folder, photos = coll
    db = sqlite3.connect(folder / "imgsearch.db")
    db.execute("DELETE FROM images WHERE id IN (SELECT id FROM images ORDER BY id LIMIT 20)")  # behind the store
    db.commit()
    db.close()
    from PIL import Image

    with imgsearch.open(folder) as engine:
        with pytest.raises(CollectionDamagedError, match="have no row in .* the database is damaged"):
            engine.search_image(Image.open(photos / "p07.png"), k=40)


def test_a_malformed_database_is_called_damaged_not_foreign(coll):
    folder, _ = coll
    path = folder / "imgsearch.db"
    for leftover in folder.glob("imgsearch.db-*"):
        leftover.unlink()
    _garble(path, size=16384, offset=16384 * 2)  # a page in the middle
    proc = subprocess.run(
        [sys.executable, "-m", "imgsearch", "info", "--index", str(folder)], capture_output=True, text=True, timeout=120
    )
    check = subprocess.run(
        [sys.executable, "-m", "imgsearch", "check", "--index", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 1 and ("PROBLEM" in check.stdout or "damaged" in check.stderr), check.stdout
    if proc.returncode:
        assert "is damaged" in proc.stderr and "not an imgsearch collection" not in proc.stderr, proc.stderr


def _check(folder, *flags):
    proc = subprocess.run(
        [sys.executable, "-m", "imgsearch", "check", "--index", str(folder), "--json", *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, json.loads(proc.stdout)


def test_check_finds_each_problem_and_repairs_what_the_store_can_rebuild(coll, tiny_model):
    folder, photos = coll
    code, report = _check(folder)
    assert (
        code == 0
        and report["ok"]
        and {f["part"] for f in report["findings"]} >= {"database", "images vectors", "images.faiss", "export"}
    )
    _garble(folder / "images.faiss")
    db = sqlite3.connect(folder / "imgsearch.db")
    (first,) = db.execute("SELECT id FROM image_vectors ORDER BY id LIMIT 1").fetchone()
    db.execute("UPDATE image_vectors SET vector = ? WHERE id = ?", (np.full(32, np.nan, np.float32).tobytes(), first))
    db.commit()
    db.close()
    code, report = _check(folder)
    problems = {f["part"]: f for f in report["findings"] if not f["ok"]}
    assert code == 1 and set(problems) == {"images vectors", "images.faiss"}, report
    assert "1 hold NaN" in problems["images vectors"]["detail"]
    code, report = _check(folder, "--repair")
    assert code == 0 and report["ok"] and all(f["ok"] or f["repaired"] for f in report["findings"]), report
    code, report = _check(folder)
    assert code == 0 and all(f["ok"] for f in report["findings"]), report
    with imgsearch.open(folder) as engine:
        assert engine.index_folder(photos).added == 1  # the dropped row's file, embedded again
