"""Inference backends against each other on CPU: torch fp32, torch bf16 weights, ONNX Runtime; the torch-free
tokenizer and transform against open_clip's own; queries in a process that never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

import imgsearch
from imgsearch.inference import backends, probes
from imgsearch.inference.preprocess import preprocess
from imgsearch.inference.tokenizer import ClipTokenizer

from conftest import COCO_MINI, SHARED_DATA, write_image

KARPATHY_COCO = SHARED_DATA / "annotations" / "coco_test_karpathy.json"
EDGE_TEXTS = [
    "",
    "   ",
    "Café &amp;amp; crème brûlée 😀",
    "日本語のテキスト",
    "I'm 3 o'clock's BEST!!!",
    "<start_of_text> hi <end_of_text>",
    "a + b - c",
    "x" * 400,
    "word " * 100,
    "tab\tand\nnewline",
    # plain ASCII that skips ftfy, and ASCII that must not: entities, control characters, odd breaks
    "A Dog, on 2 beaches; (50%) [x] {y} ~z` ^_^ |pipe| \\back/",
    "Tom &amp;amp; Jerry &lt;3",
    "ctrl\x00char\x07s",
    "del\x7fete",
    "crlf\r\nline\rbreaks",
    "form\x0cfeed\x0bvtab",
]


def _embedder(config):
    from imgsearch.clip.embedder import Embedder

    return Embedder(config)


def test_tokenizer_matches_open_clip_on_every_coco_caption():
    import open_clip

    captions = (
        [a["caption"] for a in json.loads(KARPATHY_COCO.read_text())["annotations"]] if (KARPATHY_COCO.exists()) else []
    )
    texts = captions + EDGE_TEXTS
    ours, theirs = ClipTokenizer()(texts), open_clip.get_tokenizer("ViT-B-32")(texts).numpy()
    assert ours.shape == theirs.shape == (len(texts), 77)
    bad = np.flatnonzero((ours != theirs).any(axis=1))
    assert bad.size == 0, [texts[i] for i in bad[:5]]
    assert len(texts) > 25_000 or not KARPATHY_COCO.exists()


def test_transform_matches_the_models_own_on_real_and_odd_shaped_photos(tiny_embedder, tmp_path):
    import open_clip

    photos = sorted(COCO_MINI.glob("*/*.jpg"))[:6] if COCO_MINI.exists() else []
    odd = [write_image(tmp_path / f"odd{i}.png", i, size) for i, size in enumerate([(7, 300), (300, 7), (33, 32)])]
    for size in (32, 224):
        theirs_fn = open_clip.image_transform(size, is_train=False)
        cfg = {
            "size": size,
            "mean": open_clip.OPENAI_DATASET_MEAN,
            "std": open_clip.OPENAI_DATASET_STD,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        }
        for path in [*photos, *odd]:
            with Image.open(path) as im:
                ours, theirs = preprocess(im, cfg), theirs_fn(im).numpy()
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(ours, theirs, atol=1e-5, err_msg=str(path))


@pytest.mark.parametrize("shape", [(224, 224), (256, 341), (7, 300), (1, 1)])
def test_normalising_in_place_matches_the_plain_formula(shape):
    import open_clip

    from imgsearch.inference.preprocess import normalised, normalised_reference

    rgb = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    rgb[0, 0] = (0, 128, 255)
    for mean, std in (
        (open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD),
        ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's (timm towers)
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ):
        ours, plain = normalised(rgb, mean, std), normalised_reference(rgb, mean, std)
        assert ours.dtype == np.float32 and ours.shape == (3, *shape) and ours.flags["C_CONTIGUOUS"]
        np.testing.assert_allclose(ours, plain, rtol=0, atol=2e-6)


def test_onnx_export_is_checked_cached_and_agrees_with_torch(tiny_model, coco_captions):
    fp32 = _embedder(replace(tiny_model, backend="torch", precision="fp32"))
    onnx = _embedder(replace(tiny_model, backend="onnx"))
    assert onnx.backend == "onnx fp32" and fp32.backend == "torch fp32"
    export = backends.find_export(tiny_model)
    assert export is not None and export.passed and export.check["onnx"]["cosine"] > 0.9999
    texts = [c for item in coco_captions[:20] for c in item["caption"]]
    images = [Image.open(p).convert("RGB") for p in sorted(COCO_MINI.glob("*/*.jpg"))[:16]]
    for a, b in (
        (onnx.embed_texts(texts), fp32.embed_texts(texts)),
        (onnx.embed_images(images), fp32.embed_images(images)),
    ):
        assert np.sum(a * b, axis=1).min() > 0.9999
    stamp = export.text_path.stat().st_mtime_ns
    again = _embedder(replace(tiny_model, backend="onnx"))
    again.embed_texts(["reuse"])
    assert export.text_path.stat().st_mtime_ns == stamp, "the cached export was redone"


def test_an_incomplete_export_is_ignored_and_redone(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    folder = backends.export_folder(tiny_model)
    folder.mkdir(parents=True)
    (folder / "text.onnx").write_bytes(b"half a file")  # killed mid-export: no meta.json
    assert backends.find_export(tiny_model) is None
    vec = _embedder(replace(tiny_model, backend="onnx")).embed_texts(["a dog"])
    assert backends.find_export(tiny_model).passed and vec.shape == (1, 32)


def test_bf16_weights_stay_close_to_fp32(tiny_model, coco_captions):
    fp32 = _embedder(replace(tiny_model, backend="torch", precision="fp32"))
    bf16 = _embedder(replace(tiny_model, backend="torch", precision="bf16"))
    assert bf16.backend == "torch bf16"
    texts = [c for item in coco_captions[:10] for c in item["caption"]]
    images = [Image.open(p).convert("RGB") for p in sorted(COCO_MINI.glob("*/*.jpg"))[:8]]
    for a, b in (
        (bf16.embed_texts(texts), fp32.embed_texts(texts)),
        (bf16.embed_images(images), fp32.embed_images(images)),
    ):
        assert a.dtype == np.float32 and np.sum(a * b, axis=1).min() > 0.99


def test_auto_never_picks_a_path_that_fails_its_check(tiny_model, monkeypatch):
    monkeypatch.setattr(probes, "MIN_COSINE", 1.5)  # nothing can pass
    monkeypatch.setattr(backends, "native_bf16", lambda: True)
    installed = backends.openvino_installed
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)  # auto's bf16 torch path, checked at load
    bf16 = _embedder(replace(tiny_model, backend="auto"))
    assert bf16.backend == "torch fp32" and "bf16 failed its check against fp32" in bf16.notes[0]
    monkeypatch.setattr(backends, "openvino_installed", installed)
    monkeypatch.setattr(backends, "native_bf16", lambda: False)
    monkeypatch.setenv("IMGSEARCH_CACHE", os.environ["IMGSEARCH_CACHE"] + "_strict")
    onnx = _embedder(replace(tiny_model, backend="auto"))
    assert onnx.backend == "torch fp32" and "failed its check against torch fp32" in onnx.notes[-1]
    assert not backends.find_export(tiny_model).passed  # nor OpenVINO, installed or not
    forced = _embedder(replace(tiny_model, backend="onnx"))  # an explicit choice is honoured
    assert forced.backend == "onnx fp32"


def test_an_export_makes_and_checks_only_what_auto_may_run(tiny_model, tmp_path, monkeypatch):
    """The int8 tower is never made up front (auto never runs it), and torch bf16 is judged only where auto could
    fall to it: where OpenVINO passed, auto runs OpenVINO."""
    monkeypatch.setattr(backends, "native_bf16", lambda: True)
    for openvino in ([True] if backends.openvino_installed() else []) + [False]:
        monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / f"cache-{openvino}"))
        monkeypatch.setattr(backends, "openvino_installed", lambda o=openvino: o)
        _embedder(replace(tiny_model, backend="onnx")).load()
        export = backends.find_export(tiny_model)
        assert export.passed and "int8" not in export.check and not export.image_int8_path.exists()
        assert [p for p in export.folder.iterdir() if "int8" in p.name] == []
        assert export.openvino_passed == openvino, export.check
        assert ("torch-bf16" in export.check) == (not openvino), export.check


def test_trimmed_cuts_tokens_after_the_batchs_longest_text():
    from imgsearch.inference.onnx import trimmed

    tokens = ClipTokenizer()(["a dog", "two people on a beach at sunset", ""])
    cut = trimmed(tokens)
    assert cut.shape == (3, 9) and (cut[1, -1] == tokens[1].max()) and not tokens[:, 9:].any()
    np.testing.assert_array_equal(cut, tokens[:, :9])
    assert trimmed(np.zeros((2, 77), np.int64)).shape == (2, 1)


def test_the_text_tower_runs_cut_after_the_longest_text_with_the_same_vectors(
    tiny_model, tmp_path, monkeypatch, coco_captions
):
    """A causal text tower pooled at its end token gives the same vectors for tokens cut after the batch's longest
    text (a caption: ~15 of 77 tokens); the export takes any length and is marked so only when its probes agree."""
    from imgsearch.inference.onnx import OnnxTowers, trimmed

    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    fp32 = _embedder(replace(tiny_model, backend="torch", precision="fp32"))
    _embedder(replace(tiny_model, backend="onnx")).load()
    export = backends.find_export(tiny_model)
    assert export.meta["text_trim"] is True and export.passed
    texts = [c for item in coco_captions[:40] for c in item["caption"]]
    tokens = ClipTokenizer()(texts)
    towers = OnnxTowers(export)
    vectors = np.concatenate([towers.encode_text(tokens[i : i + 16]) for i in range(0, len(tokens), 16)])
    assert max(trimmed(tokens[i : i + 16]).shape[1] for i in range(0, len(tokens), 16)) < 40  # far under 77
    assert np.sum(vectors * fp32.embed_texts(texts), axis=1).min() >= probes.TRIM_COSINE
    short = towers._text.run(None, {"tokens": trimmed(tokens[:4]).astype(np.int64)})[0]  # the graph takes it
    assert short.shape == (4, export.dim)

    monkeypatch.setattr(probes, "TRIM_COSINE", 1.5)  # the cut vectors cannot agree: full length, as before
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "strict"))
    _embedder(replace(tiny_model, backend="onnx")).load()
    strict = backends.find_export(tiny_model)
    assert "text_trim" not in strict.meta and strict.passed
    full = OnnxTowers(strict).encode_text(tokens[:16])
    np.testing.assert_allclose(full, vectors[:16], atol=1e-5)


def test_unknown_backend_is_a_clear_error(tiny_model):
    with pytest.raises(imgsearch.ImgsearchError, match="unknown backend 'tensorrt'"):
        _embedder(replace(tiny_model, backend="tensorrt"))


QUERY_SCRIPT = """
import sys, json, imgsearch
with imgsearch.open(sys.argv[1]) as engine:
    text = engine.search_text("a photo of a dog", k=5)
    image = engine.search_image(sys.argv[2], k=3)
    info = engine.info()
print(json.dumps({"torch": "torch" in sys.modules, "open_clip": "open_clip" in sys.modules,
                  "text": [(h.path, h.score) for h in text], "image": [(h.path, h.score) for h in image],
                  "query_backend": info.query_backend, "backend": info.backend}))
"""


def test_queries_in_a_fresh_process_never_import_torch_and_match_torch(tmp_path, tiny_model, photo_dir):
    folder = tmp_path / "coll"
    with imgsearch.open(folder, model=tiny_model) as engine:
        report = engine.index_folder(photo_dir)
        # A run that loaded the model answers with it; one that indexed from the export, without torch, does not
        assert (engine.query_encoder is engine._embedder) == report.backend.startswith("torch")
    query_image = str(sorted(photo_dir.rglob("*.png"))[0])
    with imgsearch.open(folder, model=replace(tiny_model, backend="torch", precision="fp32")) as engine:
        text_torch = engine.search_text("a photo of a dog", k=5)
        image_torch = engine.search_image(query_image, k=3)
    out = subprocess.run(
        [sys.executable, "-c", QUERY_SCRIPT, str(folder), query_image],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    got = json.loads(out.stdout)
    assert not got["torch"] and not got["open_clip"], "a query imported torch"
    assert got["query_backend"] == "onnx" and got["backend"] == report.backend
    assert [p for p, _ in got["image"]][0] == query_image
    for fresh, loaded in ((got["text"], text_torch), (got["image"], image_torch)):
        assert [p for p, _ in fresh] == [h.path for h in loaded]
        np.testing.assert_allclose([s for _, s in fresh], [h.score for h in loaded], atol=1e-4)


def test_torch_backend_queries_do_not_use_the_export(tmp_path, tiny_model, photo_dir):
    with imgsearch.open(tmp_path / "c", model=tiny_model) as engine:
        engine.index_folder(photo_dir)
    with imgsearch.open(tmp_path / "c", backend="torch") as engine:
        assert type(engine.query_encoder).__name__ == "Embedder"
        assert engine.info().query_backend == "torch"


@pytest.mark.e2e
def test_vit_b_32_backends_agree_with_torch_fp32(tmp_path, monkeypatch, coco_captions):
    """The real architecture (random weights: the same compute): its export's checks, and every CPU backend's
    vectors on real photos and captions against torch fp32, within each one's quality guard."""
    from imgsearch.config import ModelConfig
    from imgsearch.inference.files import image_tower
    from imgsearch.inference.onnx import OnnxTowers

    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    fp32 = _embedder(ModelConfig("ViT-B-32", None, device="cpu", backend="torch", precision="fp32"))
    from imgsearch.inference.onnx import with_int8

    export = with_int8(fp32.export_onnx())
    assert export is not None and export.passed and export.int8_passed, export and export.meta["check"]
    photos = [Image.open(p).convert("RGB") for p in sorted(COCO_MINI.glob("*/*.jpg"))[:12]]
    pixels = np.stack([preprocess(im, export.meta["preprocess"]) for im in photos])
    reference = fp32.embed_images(photos)
    plans = {"fp32": probes.MIN_COSINE, "int8": probes.MIN_COSINE_INT8}
    if backends.openvino_installed():
        assert export.openvino_passed, export.meta["check"]
        plans["openvino"] = probes.MIN_COSINE
    for plan, guard in plans.items():
        tower, label = image_tower(export, plan)
        cosine = np.sum(tower.encode_image(pixels) * reference, axis=1)
        assert cosine.min() >= guard, (label, cosine.min())
    texts = [c for item in coco_captions[:8] for c in item["caption"]]
    text_cosine = np.sum(OnnxTowers(export).encode_text(ClipTokenizer()(texts)) * fp32.embed_texts(texts), axis=1)
    assert text_cosine.min() >= probes.MIN_COSINE


def test_info_and_the_index_run_say_why_a_faster_path_was_not_taken(tmp_path, photo_dir, monkeypatch):
    from typer.testing import CliRunner

    from imgsearch.cli import app

    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(probes, "MIN_COSINE", 1.5)  # the export fails its check
    monkeypatch.setattr(backends, "native_bf16", lambda: False)
    result = CliRunner().invoke(
        app,
        [
            "index",
            str(photo_dir),
            "--index",
            str(tmp_path / "c"),
            "--model",
            "imgsearch-tiny",
            "--pretrained",
            "none",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "note: " in result.output and "failed its check against torch fp32" in result.output
    info = CliRunner().invoke(app, ["info", "--index", str(tmp_path / "c")])
    assert "queries: torch (queries load torch: the export failed its check" in info.output


def test_a_failed_export_is_believed_only_by_the_version_that_made_it(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(probes, "MIN_COSINE", 1.5)
    _embedder(replace(tiny_model, backend="auto")).load()
    failed = backends.find_export(tiny_model)
    assert failed is not None and not failed.passed  # the same version believes its own failure
    meta = json.loads((failed.folder / "meta.json").read_text())
    (failed.folder / "meta.json").write_text(json.dumps({**meta, "imgsearch": "0.0.1"}))
    assert backends.find_export(tiny_model) is None  # made by another version: its export code may be the cause
    monkeypatch.setattr(probes, "MIN_COSINE", 0.999)
    _embedder(replace(tiny_model, backend="auto")).load()
    assert backends.find_export(tiny_model).passed
