"""Caches are verified before they are believed: a damaged cached export is found when it is loaded (probes through
the loaded graph against what torch computed when it was made), removed, said so in one line, and made again; a
vector that is not finite is never stored; a killed export's private folder is cleaned up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import imgsearch
from imgsearch import indexing
from imgsearch.config import ModelConfig
from imgsearch.inference import backends
from imgsearch.planning import Plan
from imgsearch.records import EmbeddedBatch, FileEntry, ImageDetails

from conftest import TINY_MODEL, write_image

TINY = ModelConfig(TINY_MODEL, None, device="cpu")


@pytest.fixture
def built(tmp_path, photo_dir, monkeypatch):
    """A collection whose first run made the model's export in a fresh cache."""
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    with imgsearch.open(tmp_path / "coll", model=TINY) as engine:
        engine.index_folder(photo_dir)
    export = backends.find_export(TINY)
    assert export is not None and export.passed
    return tmp_path / "coll", export


def _garble(path, size: int = 20_000, offset: int = 1024) -> None:
    """Random bytes over part of a file, its size unchanged (what a bad disk or a bad copy leaves)."""
    data = bytearray(path.read_bytes())
    end = min(len(data), offset + size)
    data[offset:end] = np.random.default_rng(0).integers(0, 256, end - offset, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _index_a_new_photo(coll, photo_dir, **options):
    """A run after a cached tower was damaged: it says so, and stores the new photo's right vector."""
    write_image(photo_dir / "new.png", 77)
    with imgsearch.open(coll, **options) as engine:
        report = engine.index_folder(photo_dir)
        assert report.added == 1
        assert any("was damaged" in note and "removed" in note for note in report.notes), report.notes
        new = next(h for h in engine.browse() if h.path.endswith("new.png"))
        vector = engine._store_for().vectors("images", [new.id])[new.id]
        assert np.isfinite(vector).all() and engine.search_vector(vector, 1)[0].id == new.id
    return report


@pytest.mark.parametrize("damage", ["garbage in image.onnx.data", "truncated image.onnx"])
def test_a_damaged_image_tower_is_found_removed_and_made_again(built, photo_dir, damage):
    """0.1 believed the cached export: 20 KB of random bytes in image.onnx.data made every later run store NaN
    vectors and report success; a truncated graph gave a raw InvalidProtobuf traceback on every run."""
    coll, export = built
    if damage.startswith("garbage"):
        _garble(export.folder / "image.onnx.data")
    else:
        graph = export.folder / "image.onnx"
        graph.write_bytes(graph.read_bytes()[:200])
    report = _index_a_new_photo(coll, photo_dir)
    assert not report.skipped
    again = backends.find_export(TINY)
    assert again is not None and again.passed  # made again by the run that found it


@pytest.mark.skipif(not backends.openvino_installed(), reason="OpenVINO not installed here")
def test_a_damaged_openvino_int8_tower_is_found_removed_and_made_again(built, photo_dir):
    coll, export = built
    write_image(photo_dir / "first.png", 76)
    with imgsearch.open(coll, backend="openvino-int8") as engine:
        assert engine.index_folder(photo_dir).backend == "openvino int8"  # made now, on first use
    _garble(export.folder / "image.mlp-int8.onnx.data")
    assert _index_a_new_photo(coll, photo_dir, backend="openvino-int8").backend == "openvino int8"
    again = backends.find_export(TINY)
    assert again is not None and again.openvino_int8_path.is_file()  # made again by the run that found it
    assert "cosine" in again.check["openvino-int8"]  # and judged again
    _garble(again.folder / "image.mlp-int8.onnx.data")
    check = subprocess.run(
        [sys.executable, "-m", "imgsearch", "check", "--index", str(coll), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    (finding,) = [f for f in json.loads(check.stdout)["findings"] if f["part"] == "export"]
    assert not finding["ok"] and finding["repaired"] and "was damaged" in finding["detail"], finding
    assert backends.find_export(TINY) is None  # removed as it was found: the next run makes it again


@pytest.mark.e2e
def test_a_damaged_text_tower_gives_way_to_torch_for_a_query_with_a_warning(built, photo_dir):
    coll, export = built
    data = export.folder / "text.onnx.data"
    size = data.stat().st_size
    data.write_bytes(data.read_bytes()[: size // 2])  # truncated
    env = dict(os.environ, IMGSEARCH_SERVER="off")
    proc = subprocess.run(
        [sys.executable, "-m", "imgsearch", "query", "a red square", "--index", str(coll), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 10, proc.stderr
    assert "warning: the cached export of imgsearch-tiny" in proc.stderr and "was damaged" in proc.stderr
    assert "Traceback" not in proc.stderr
    again = backends.find_export(TINY)  # torch, loaded for the query, made it again
    assert again is not None and again.passed and (again.folder / "text.onnx.data").stat().st_size == size


def test_a_vector_that_is_not_finite_is_never_stored():
    entries = [FileEntry(f"/p/{i}.png", 10, 1) for i in range(3)]
    vectors = np.eye(3, 4, dtype=np.float32)
    vectors[1, 0] = np.nan
    details = [ImageDetails(4, 4, f"h{i}", "png") for i in range(3)]
    changes = indexing.batch_changes(EmbeddedBatch([0, 1, 2], details, vectors, []), entries, Plan())
    assert [row.path for row in changes.new] == ["/p/0.png", "/p/2.png"]
    (skip,) = changes.skipped
    assert skip.path == "/p/1.png" and "NaN or infinite" in skip.reason and "imgsearch check" in skip.reason


def test_a_killed_exports_private_folder_is_removed_by_the_next_export(tmp_path, monkeypatch):
    from imgsearch.clip.embedder import Embedder

    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = backends.export_folder(TINY).with_name(f"other-model-0123.{int(dead.stdout)}.tmp")
    leftover.mkdir(parents=True)
    (leftover / "image.onnx.data").write_bytes(b"x" * 10_000)
    alive = leftover.with_name(f"another-model-4567.{os.getpid()}.tmp")  # a live exporter's: kept
    alive.mkdir()
    Embedder(TINY).load()  # exports
    assert not leftover.exists() and alive.exists()


def test_a_full_cache_disk_during_the_export_is_said(tmp_path, photo_dir, monkeypatch):
    """0.1 fell back to torch without a word when the export did not fit."""
    mount = tmp_path / "cache"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        monkeypatch.setenv("IMGSEARCH_CACHE", str(mount))
        with imgsearch.open(tmp_path / "coll", model=TINY) as engine:
            report = engine.index_folder(photo_dir)
        assert report.added == 10 and report.backend.startswith("torch")
        assert any("no space left in" in note and "IMGSEARCH_CACHE" in note for note in report.notes), report.notes
        assert not list(mount.glob("onnx/*.tmp"))  # the private folder went with the failure
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def test_imgsearch_cache_lists_removes_and_prunes(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from imgsearch.cli import app
    from imgsearch.clip.embedder import Embedder

    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    Embedder(TINY).load()
    old = tmp_path / "cache" / "onnx" / "old-model-0123"
    old.mkdir()
    (old / "meta.json").write_text(json.dumps({"format": 1, "model": "old"}))
    listed = CliRunner().invoke(app, ["cache", "--json"])
    rows = json.loads(listed.stdout)
    assert {r["model"] for r in rows} == {TINY_MODEL, "old"} and all(r["bytes"] > 0 for r in rows)
    assert CliRunner().invoke(app, ["cache", "prune"]).exit_code == 0
    assert not old.exists() and backends.find_export(TINY) is not None  # only the old format went
    assert CliRunner().invoke(app, ["cache", "remove", TINY_MODEL]).exit_code == 0
    assert backends.find_export(TINY) is None
    missing = CliRunner().invoke(app, ["cache", "remove", "nothing-like-it"])
    assert missing.exit_code == 1 and "no cached export" in missing.output
