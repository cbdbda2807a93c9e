"""The Python API end to end: real tiny open_clip model, real FAISS, real SQLite, real files."""

import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

import imgsearch
from imgsearch.config import ModelConfig, VectorIndexConfig
from imgsearch.errors import (
    BadInputError,
    CollectionNotFoundError,
    EmptyCollectionError,
    ModelLoadError,
    ModelMismatchError,
    NotFoundError,
)

from conftest import COCO_MINI, TINY_MODEL, stamp_of, write_image


def _bump_mtime(path, seconds=10):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_text_query_returns_ranked_typed_hits(engine, photo_dir):
    report = engine.index_folder(photo_dir)
    assert report.added == 10 and report.scanned == 10 and not report.skipped
    hits = engine.search("a red car", k=4)
    assert len(hits) == 4 and all(isinstance(h, imgsearch.ImageHit) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert {h.path for h in hits} <= {str(p) for p in photo_dir.rglob("*.*")}
    assert hits[0].width == 64 and hits[0].height == 48


def test_image_query_finds_itself_first_by_path_str_and_pil(engine, photo_dir):
    engine.index_folder(photo_dir)
    target = photo_dir / "sub" / "img5.png"
    for query in (target, str(target), Image.open(target)):
        best = engine.search(query, k=3)[0]
        assert best.path == str(target) and best.score == pytest.approx(1.0, abs=1e-4)


def test_describe_ranks_texts_for_an_image(engine, photo_dir):
    engine.index_folder(photo_dir)
    assert engine.add_texts(["a dog", "", "  ", "a red car", "the sea"], source="t") == 3
    hits = engine.describe(photo_dir / "img0.jpg", k=10)
    assert sorted(h.text for h in hits) == ["a dog", "a red car", "the sea"]
    want = engine.embedder.embed_texts([h.text for h in hits]) @ engine.query_vector(photo_dir / "img0.jpg")
    np.testing.assert_allclose([h.score for h in hits], want, atol=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert engine.clear_texts() == 3
    with pytest.raises(EmptyCollectionError, match="no texts"):
        engine.describe(photo_dir / "img0.jpg")
    engine.add_texts(["a bird"])
    assert [h.text for h in engine.describe(photo_dir / "img0.jpg")] == ["a bird"]


def test_rerun_skips_unchanged_and_follows_change_delete_move(engine, photo_dir):
    engine.index_folder(photo_dir)
    ids = {h.path: h.id for h in engine.search("x", k=10)}
    again = engine.index_folder(photo_dir)
    assert (again.unchanged, again.embedded, again.removed) == (10, 0, 0)

    changed = photo_dir / "img0.jpg"
    write_image(changed, seed=999)
    _bump_mtime(changed)
    (photo_dir / "sub" / "img1.png").unlink()
    moved = photo_dir / "renamed" / "img2_new.png"
    moved.parent.mkdir()
    shutil.move(photo_dir / "img2.png", moved)
    report = engine.index_folder(photo_dir)
    assert (report.updated, report.removed, report.moved, report.added, report.unchanged) == (1, 1, 1, 0, 7)

    paths = {h.path: h.id for h in engine.search("x", k=20)}
    assert len(paths) == 9 and str(photo_dir / "sub" / "img1.png") not in paths
    assert paths[str(moved)] == ids[str(photo_dir / "img2.png")]  # same row: not re-embedded
    best = engine.search(changed, k=1)[0]
    assert best.path == str(changed) and best.id == ids[str(changed)] and best.score > 0.9999
    assert engine.info().images == 9


def test_touched_but_identical_files_are_not_re_embedded(engine, photo_dir):
    engine.index_folder(photo_dir)
    before = {h.path: h.id for h in engine.search("x", k=10)}
    for path in photo_dir.rglob("*.*"):
        _bump_mtime(path)  # what `cp -r` without -p does to a whole library
    report = engine.index_folder(photo_dir)
    assert (report.unchanged, report.embedded) == (10, 0)
    assert engine.index_folder(photo_dir).unchanged == 10  # the new mtimes were stored
    assert {h.path: h.id for h in engine.search("x", k=10)} == before


def test_a_copy_of_an_indexed_file_is_a_new_entry(engine, photo_dir):
    engine.index_folder(photo_dir)
    shutil.copy(photo_dir / "img0.jpg", photo_dir / "copy.jpg")
    report = engine.index_folder(photo_dir)
    assert (report.added, report.moved) == (1, 0)
    top = {h.path for h in engine.search(photo_dir / "img0.jpg", k=2)}
    assert top == {str(photo_dir / "img0.jpg"), str(photo_dir / "copy.jpg")}


def test_indexing_another_folder_keeps_the_first(engine, photo_dir, tmp_path):
    other = tmp_path / "photos_more"  # shares a name prefix with photo_dir on purpose
    write_image(other / "z.png", seed=50)
    engine.index_folder(photo_dir)
    report = engine.index_folder(other)
    assert (report.added, report.removed) == (1, 0)
    assert engine.info().images == 11


def test_ivf_switch_keeps_search_correct_and_survives_reopen(tmp_path, tiny_model):
    folder = tmp_path / "many"
    for i in range(60):
        write_image(folder / f"{i}.png", seed=100 + i, size=(32, 32))
    config = VectorIndexConfig(ivf_threshold=40, nprobe=1000)
    with imgsearch.open(tmp_path / "c", model=tiny_model, index_config=config) as engine:
        engine.index_folder(folder)
        info = engine.info()
        assert info.image_index == "ivf" and info.image_index_lists == round(config.ivf_lists_factor * 60**0.5)
    with imgsearch.open(tmp_path / "c", index_config=config) as engine:
        assert engine.info().image_index == "ivf"
        for i in (0, 17, 59):
            assert engine.search(folder / f"{i}.png", k=1)[0].path == str(folder / f"{i}.png")


def test_stale_or_missing_faiss_file_is_rebuilt_from_the_store(tmp_path, tiny_model, photo_dir):
    with imgsearch.open(tmp_path / "c", model=tiny_model) as engine:
        engine.index_folder(photo_dir)
        want = [h.path for h in engine.search("a cat", k=10)]
    (tmp_path / "c" / "images.faiss").unlink()
    with imgsearch.open(tmp_path / "c") as engine:
        assert [h.path for h in engine.search("a cat", k=10)] == want
    # the reader rebuilt it and, no writer running, saved it for the next one
    assert (tmp_path / "c" / "images.faiss").exists()
    generation = stamp_of(tmp_path / "c" / "images.faiss.generation")["generation"]
    (tmp_path / "c" / "images.faiss.generation").write_text("0")  # an old stamp without a write time
    with imgsearch.open(tmp_path / "c") as engine:
        assert [h.path for h in engine.search("a cat", k=10)] == want
    assert stamp_of(tmp_path / "c" / "images.faiss.generation")["generation"] == generation
    (tmp_path / "c" / "images.faiss.generation").write_text(str(generation))
    (tmp_path / "c" / "images.faiss").write_bytes(b"not a faiss index")
    with imgsearch.open(tmp_path / "c") as engine:
        assert [h.path for h in engine.search("a cat", k=10)] == want


def test_collection_remembers_its_model_and_refuses_another(tmp_path, tiny_model, photo_dir):
    with imgsearch.open(tmp_path / "c", model=tiny_model) as engine:
        engine.index_folder(photo_dir)
    with imgsearch.open(tmp_path / "c") as engine:
        assert engine.model.name == TINY_MODEL and engine.info().dim == 32
    with imgsearch.open(tmp_path / "c", model=ModelConfig()) as engine:
        with pytest.raises(ModelMismatchError, match=f"built with {TINY_MODEL}.*open it with model=None") as caught:
            engine.search("a dog")
    assert "--" not in str(caught.value)  # API errors give API advice, the CLI its flags
    assert "--collection NEW_PATH" in caught.value.for_cli()


def test_missing_and_empty_collections_say_what_to_do(tmp_path, tiny_model, photo_dir):
    with pytest.raises(CollectionNotFoundError, match="index_folder") as caught:
        imgsearch.open(tmp_path / "none").search("a dog")
    assert "imgsearch index DIR" in caught.value.for_cli()
    with imgsearch.open(tmp_path / "c", model=tiny_model) as engine:
        engine.add_texts(["only texts here"])
        with pytest.raises(EmptyCollectionError, match="no images"):
            engine.search("a dog")
        with pytest.raises(BadInputError, match="not a folder"):
            engine.index_folder(tmp_path / "nope")
        engine.index_folder(photo_dir)
        with pytest.raises(BadInputError, match="not found"):
            engine.search(tmp_path / "missing.jpg")
        with pytest.raises(BadInputError, match="empty query"):
            engine.search("   ")


def test_model_errors_name_the_choices(tmp_path):
    from imgsearch.clip.embedder import Embedder

    with pytest.raises(ModelLoadError, match="unknown model 'ViT-Nope'"):
        Embedder(ModelConfig(name="ViT-Nope")).embed_texts(["x"])
    with pytest.raises(ModelLoadError, match="available: .*laion2b_s34b_b79k"):
        Embedder(ModelConfig(name="ViT-B-32", pretrained="no-such-tag")).embed_texts(["x"])
    with pytest.raises(ModelLoadError, match="checkpoint file not found"):
        Embedder(ModelConfig(name="ViT-B-32", pretrained=str(tmp_path / "w.bin"))).embed_texts(["x"])


def test_local_checkpoint_loads_offline_with_its_own_weights(tmp_path, tiny_model):
    import torch

    from imgsearch.clip.embedder import Embedder

    torch_only = replace(tiny_model, backend="torch")  # the weights are edited in place below: no cached export
    random_model = Embedder(torch_only)
    model = random_model.model
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5).add_(0.01)  # weights that differ from the seeded random init
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    from_file = Embedder(
        ModelConfig(name=TINY_MODEL, pretrained=str(tmp_path / "tiny.pt"), device="cpu", backend="torch")
    )
    np.testing.assert_allclose(from_file.embed_texts(["a dog"]), random_model.embed_texts(["a dog"]), atol=1e-6)
    fresh = Embedder(tiny_model).embed_texts(["a dog"])
    assert not np.allclose(fresh, from_file.embed_texts(["a dog"]), atol=1e-4)


def test_vectors_are_unit_float32(tiny_embedder):
    vectors = tiny_embedder.embed_texts(["a", "b c", "a photo of a dog"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_real_coco_photos_index_and_self_retrieve(tmp_path, tiny_model):
    subset = tmp_path / "coco"
    subset.mkdir()
    for src in sorted((COCO_MINI / "val2017").glob("*.jpg"))[:40]:
        shutil.copy(src, subset / src.name)
    with imgsearch.open(tmp_path / "c", model=tiny_model) as engine:
        report = engine.index_folder(subset, imgsearch.IndexingConfig(batch_size=16, workers=2))
        assert report.added == 40 and not report.skipped
        for src in sorted(subset.iterdir())[:5]:
            assert engine.search(src, k=1)[0].path == str(src)


def test_a_collection_reads_well_in_a_notebook(engine, photo_dir):
    """0.1's Collection had no docstring, repr or len; hits gave a str path and a float epoch; only
    ImgsearchError was exported."""
    import datetime as dt
    import inspect
    import json
    from pathlib import Path

    assert "not created yet" in repr(engine) and len(engine) == 0 and bool(engine)
    engine.index_folder(photo_dir)
    assert len(engine) == 10 and repr(engine).endswith(": 10 images>")
    hit = engine.search("a dog", k=1)[0]
    assert hit.file == Path(hit.path) and hit.file.exists()
    assert isinstance(hit.taken, dt.datetime) and abs(hit.taken.timestamp() - hit.taken_at) < 1e-3
    assert json.loads(json.dumps(hit.to_dict())) == hit.to_dict()  # still plain JSON
    public = [n for n, f in inspect.getmembers(imgsearch.Collection, callable) if not n.startswith("_")]
    assert {"search", "close", "info", "skipped", "clear_texts", "search_vector"} <= set(public)
    assert imgsearch.Collection.__doc__ and [n for n in public if not getattr(imgsearch.Collection, n).__doc__] == []
    assert imgsearch.NotFoundError is NotFoundError and "EmptyCollectionError" in dir(imgsearch)


def test_the_renamed_vector_index_settings_still_answer_to_their_old_name():
    import warnings

    import imgsearch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = imgsearch.IndexConfig
    assert old is imgsearch.VectorIndexConfig
    assert [w.category for w in caught] == [DeprecationWarning] and "VectorIndexConfig" in str(caught[0].message)


@pytest.mark.e2e
def test_the_library_prints_nothing_into_a_notebook(tmp_path, serve_env):
    """0.1's add_texts printed open_clip's `WARNING:root:...` into the user's output."""
    import subprocess
    import sys

    write_image(tmp_path / "a.png", 1)
    code = (
        "import sys, imgsearch\n"
        "from imgsearch.config import ModelConfig\n"
        f"with imgsearch.open(sys.argv[1], model=ModelConfig({TINY_MODEL!r}, pretrained=None)) as c:\n"
        "    c.add_texts(['a dog', 'a cat'])\n"
        "    c.index_folder(sys.argv[2])\n"
        "    print(len(c.describe(sys.argv[2] + '/a.png', k=1)))\n"
    )
    env = dict(os.environ, **serve_env)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "c"), str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("1\n", "")
