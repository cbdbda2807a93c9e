"""Vectors made wrongly are never trusted: an export leaves the model in eval mode, and a collection whose vectors an
earlier imgsearch (or another recipe) made is found, said so, and re-embedded by the next index run (stale.py)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

import imgsearch
from imgsearch import stale
from imgsearch.config import ModelConfig
from imgsearch.inference import backends

from conftest import TINY_MODEL, TINY_RESNET, write_image

RESNET = ModelConfig(TINY_RESNET, None, device="cpu")


def _images(n: int = 4) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def test_an_export_leaves_the_model_in_eval_mode(tmp_path, monkeypatch):
    """imgsearch 0.1 left every module in training mode after exporting: BatchNorm then used each batch's own
    statistics (the same image, alone and in a batch of four: cosine 0.86 for RN50), and the export's own check,
    made against that model, failed and was cached for good."""
    from imgsearch.clip.embedder import Embedder, _TorchTowers

    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    embedder = Embedder(RESNET)
    embedder.load()  # exports (first use), then chooses
    model = embedder.model
    assert [name for name, m in model.named_modules() if m.training] == []
    export = backends.find_export(RESNET)
    assert export.passed and export.check["onnx"]["cosine"] > 0.9999, export.check
    towers, images = _TorchTowers(model, "cpu", "fp32"), _images()
    pixels = np.stack([embedder.preprocess(im).numpy() for im in images])
    import torch

    alone = np.concatenate([towers.encode_image(torch.from_numpy(p[None])) for p in pixels])
    together = towers.encode_image(torch.from_numpy(pixels))
    assert np.sum(alone * together, axis=1).min() > 0.99999


def test_torch_refuses_to_embed_with_a_model_in_training_mode(tmp_path, monkeypatch):
    from imgsearch.clip.embedder import Embedder

    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    embedder = Embedder(replace(RESNET, backend="torch", precision="fp32"))
    embedder.model.train()
    with pytest.raises(RuntimeError, match="training mode"):
        embedder.embed_images(_images(1))


def _as_if_made_by_0_1(collection, model_name: str) -> None:
    """What imgsearch 0.1 left: no record of how the vectors were made, and (for a BatchNorm model) vectors from a
    model in training mode: here any other unit vectors, written straight into the database."""
    db = sqlite3.connect(collection / "imgsearch.db")
    db.execute("DELETE FROM meta WHERE key = ?", (stale.EMBEDDING_KEY,))
    rows = db.execute("SELECT id, vector FROM image_vectors").fetchall()
    rng = np.random.default_rng(0)
    for image_id, blob in rows:
        wrong = rng.normal(size=len(blob) // 4).astype(np.float32)
        db.execute(
            "UPDATE image_vectors SET vector = ? WHERE id = ?", ((wrong / np.linalg.norm(wrong)).tobytes(), image_id)
        )
    db.execute("UPDATE meta SET value = ? WHERE key = 'images_generation'", (json.dumps(1000),))
    db.commit()
    db.close()


def test_a_collection_of_a_batchnorm_model_made_by_0_1_is_re_embedded(tmp_path, photo_dir):
    coll = tmp_path / "coll"
    with imgsearch.open(coll, model=RESNET) as engine:
        engine.index_folder(photo_dir)
        engine.add_texts(["a red square", "a blue circle"])
        right = {h.path: engine._store_for().vectors("images", [h.id])[h.id].copy() for h in engine.browse()}
    _as_if_made_by_0_1(coll, TINY_RESNET)
    with imgsearch.open(coll) as engine:
        assert engine.warnings() == [stale.LEGACY_WARNING]
        assert stale.LEGACY_WARNING in engine.info().warnings
    with imgsearch.open(coll) as engine:
        report = engine.index_folder(photo_dir)
        assert report.reembedded == 10 and report.updated == 0 and report.unchanged == 0
        assert "training mode" in report.reembedded_why and "BatchNorm" in report.reembedded_why
        store = engine._store_for()
        for hit in engine.browse():
            assert float(store.vectors("images", [hit.id])[hit.id] @ right[hit.path]) > 0.9999
        assert engine.warnings() == [] and store.get(stale.STALE_KEY) is None
        assert store.get(stale.EMBEDDING_KEY)["version"] == stale.EMBEDDING_VERSION
        top = engine.search_image(Image.open(sorted(photo_dir.rglob("*.png"))[0]), k=1)[0]
        assert top.score > 0.999  # the index file is the re-embedded vectors, not the wrong ones
    with imgsearch.open(coll) as engine:
        again = engine.index_folder(photo_dir)
        assert again.reembedded == 0 and again.unchanged == 10  # done once


def test_a_partly_re_embedded_collection_says_how_many_remain(tmp_path, photo_dir):
    coll = tmp_path / "coll"
    with imgsearch.open(coll, model=RESNET) as engine:
        engine.index_folder(photo_dir)
    _as_if_made_by_0_1(coll, TINY_RESNET)
    with imgsearch.open(coll) as engine:
        report = engine.index_folder(photo_dir / "sub")  # one of the two folders
        assert report.reembedded == 5
        (warning,) = engine.warnings()
        assert warning.startswith("5 images of this collection hold vectors that are wrong")
        assert "imgsearch index" in warning


def test_a_0_1_collection_of_a_model_that_ran_right_is_not_re_embedded(tmp_path, photo_dir):
    coll = tmp_path / "coll"
    with imgsearch.open(coll, model=ModelConfig(TINY_MODEL, None, device="cpu")) as engine:
        engine.index_folder(photo_dir)
        db = sqlite3.connect(coll / "imgsearch.db")
        db.execute("DELETE FROM meta WHERE key = ?", (stale.EMBEDDING_KEY,))
        db.commit()
        db.close()
    with imgsearch.open(coll) as engine:
        assert engine.warnings() == [stale.LEGACY_WARNING]
        report = engine.index_folder(photo_dir)
        assert report.reembedded == 0 and report.unchanged == 10
        assert engine.warnings() == []  # checked, and recorded


def test_vectors_made_with_another_recipe_are_re_embedded(tmp_path, photo_dir):
    """A collection records its recipe: if the model now runs another way (open_clip changed a tag's preprocessing,
    a checkpoint was tied to its tag), its vectors are of another model in all but name."""
    coll = tmp_path / "coll"
    with imgsearch.open(coll, model=ModelConfig(TINY_MODEL, None, device="cpu")) as engine:
        engine.index_folder(photo_dir)
        store = engine._store_for()
    db = sqlite3.connect(coll / "imgsearch.db")
    entry = json.loads(db.execute("SELECT value FROM meta WHERE key = ?", (stale.EMBEDDING_KEY,)).fetchone()[0])
    entry["recipe"]["mean"] = [0.5, 0.5, 0.5]
    db.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps(entry), stale.EMBEDDING_KEY))
    db.commit()
    db.close()
    with imgsearch.open(coll) as engine:
        report = engine.index_folder(photo_dir)
        assert report.reembedded == 10 and "mean 0.5/0.5/0.5" in report.reembedded_why
        assert engine.warnings() == []
    del store


def test_copies_and_moves_of_stale_rows_are_embedded_afresh(tmp_path, photo_dir):
    coll = tmp_path / "coll"
    with imgsearch.open(coll, model=RESNET) as engine:
        engine.index_folder(photo_dir)
    _as_if_made_by_0_1(coll, TINY_RESNET)
    moved = photo_dir / "img0.jpg"
    moved.rename(photo_dir / "renamed.jpg")
    (photo_dir / "copy.png").write_bytes((photo_dir / "img2.png").read_bytes())
    with imgsearch.open(coll) as engine:
        report = engine.index_folder(photo_dir)
        assert report.moved == 0 and report.reused == 0  # neither keeps a stale vector
        assert engine.warnings() == []
        store = engine._store_for()
        rows = {h.path.rsplit("/", 1)[-1]: h.id for h in engine.browse()}
        copy, original = store.vectors("images", [rows["copy.png"], rows["img2.png"]]).values()
        assert float(copy @ original) > 0.9999


def test_queries_warn_on_stale_vectors(tmp_path, photo_dir):
    from typer.testing import CliRunner

    from imgsearch.cli import app

    coll = tmp_path / "coll"
    write_image(photo_dir / "extra.png", 99)
    with imgsearch.open(coll, model=RESNET) as engine:
        engine.index_folder(photo_dir)
    _as_if_made_by_0_1(coll, TINY_RESNET)
    result = CliRunner().invoke(app, ["query", "a red square", "--index", str(coll), "--server", "off"])
    assert result.exit_code == 0 and "warning: this collection's vectors were made by imgsearch 0.1" in result.output
    info = CliRunner().invoke(app, ["info", "--index", str(coll)])
    assert "imgsearch index" in info.output
