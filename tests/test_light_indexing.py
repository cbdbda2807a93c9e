"""Indexing on a CPU without torch: once a model's export is cached, `index` embeds files with ONNX Runtime (the
int8 image tower when it passed its check) in a process that never imports torch, with the torch path's results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import imgsearch
from imgsearch import encoders
from imgsearch.config import IndexingConfig, ModelConfig
from imgsearch.inference import backends, probes

from conftest import COCO_MINI, TINY_RESNET, write_image

INDEX_SCRIPT = """
import sys, json, imgsearch
from imgsearch.config import IndexingConfig
with imgsearch.open(sys.argv[1], backend=sys.argv[4]) as engine:
    report = engine.index_folder(sys.argv[2], IndexingConfig(workers=int(sys.argv[3]), batch_size=4))
print(json.dumps({"torch": "torch" in sys.modules, "open_clip": "open_clip" in sys.modules,
                  "backend": report.backend, "added": report.added,
                  "skipped": [(s.path, s.reason) for s in report.skipped]}))
"""


def stored(coll: Path) -> dict[str, np.ndarray]:
    with imgsearch.open(coll) as engine:
        store = engine._store_for()
        rows = dict(store.all_paths())
        return {rows[i]: vector for i, vector in store.vectors("images", list(rows)).items()}


@pytest.fixture
def photos(tmp_path) -> Path:
    """Real photos, generated odd shapes, and one broken file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted(COCO_MINI.glob("*/*.jpg"))[:9]:
        shutil.copy(path, folder)
    for i, size in enumerate([(7, 300), (300, 7), (33, 32)]):
        write_image(folder / "odd" / f"odd{i}.png", i, size)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def _first_run(coll: Path, tiny_model, tmp_path: Path) -> None:
    """A model's first run loads torch and leaves its checked export (the fp32 towers; the int8 image tower is
    made on first use of ``--backend onnx-int8``)."""
    seed = tmp_path / "seed"
    write_image(seed / "one.png", 99)
    with imgsearch.open(coll, model=tiny_model) as engine:
        engine.index_folder(seed)
    export = backends.find_export(tiny_model)
    assert export is not None and export.passed, export and export.meta["check"]
    assert export.openvino_passed or not backends.openvino_installed(), export.meta["check"]


@pytest.mark.parametrize(
    "backend, threads, ran, guard",
    [
        pytest.param(
            "auto",
            0,
            "openvino",
            probes.MIN_COSINE,  # auto on x86: OpenVINO (bf16 where the CPU has it)
            marks=pytest.mark.skipif(not backends.openvino_installed(), reason="OpenVINO not installed here"),
        ),
        ("onnx-int8", 3, "onnx int8", probes.MIN_COSINE_INT8),
        ("onnx", 2, "onnx fp32", probes.MIN_COSINE),
        pytest.param(
            "openvino-int8",
            2,
            "openvino int8",
            probes.MIN_COSINE,  # its MLP layers in int8, held to the fp32 bound where auto runs it (VNNI)
            marks=pytest.mark.skipif(
                not (backends.openvino_installed() and backends.fast_int8()), reason="needs OpenVINO and VNNI"
            ),
        ),
    ],
)
def test_later_runs_index_without_torch_and_match_the_torch_pipeline(
    tmp_path, tiny_model, photos, backend, threads, ran, guard
):
    coll = tmp_path / "coll"
    _first_run(coll, tiny_model, tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", INDEX_SCRIPT, str(coll), str(photos), str(threads), backend],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    got = json.loads(out.stdout)
    assert not got["torch"] and not got["open_clip"], "indexing imported torch"
    assert got["backend"].startswith(ran) and got["added"] == 12
    assert [(Path(p).name, reason.split(":")[0]) for p, reason in got["skipped"]] == [
        ("broken.jpg", "corrupt or truncated image")
    ]
    light = stored(coll)

    # The same files through the torch pipeline (DataLoader, the model's own transform) running the same tower:
    # the same vectors. And through torch fp32: within the backend's quality guard.
    for other_backend, precision, tolerance in (
        (backend, "auto", 1e-3 if ran.startswith("openvino") else 1e-5),
        ("torch", "fp32", None),
    ):
        other = tmp_path / f"via-{other_backend}"
        with imgsearch.open(other, model=replace(tiny_model, backend=other_backend, precision=precision)) as engine:
            engine.embedder.load()  # the torch Embedder, not the light path
            # The same batches: int8's activation scales are computed per batch (dynamic quantization)
            report = engine.index_folder(photos, IndexingConfig(workers=0, batch_size=4))
            assert report.backend == (got["backend"] if tolerance else "torch fp32")
        theirs = stored(other)
        for path, vector in theirs.items():
            if path.startswith(str(photos)):
                if tolerance:
                    np.testing.assert_allclose(light[path], vector, atol=tolerance, err_msg=path)
                else:
                    assert float(light[path] @ vector) >= guard, path


def test_light_path_decodes_in_order_whatever_the_threads(tmp_path, tiny_model, photos):
    from imgsearch.inference.files import ExportImageFiles

    _first_run(tmp_path / "coll", tiny_model, tmp_path)
    encoder = ExportImageFiles(backends.find_export(tiny_model), "onnx").load()
    paths = sorted(str(p) for p in photos.rglob("*.*")) * 3  # 39 files, batches of 5: ten batches in flight
    runs = {t: list(encoder.embed_files(paths, IndexingConfig(workers=t, batch_size=5))) for t in (0, 1, 4)}
    for batches in runs.values():
        assert [p for b in batches for p in b.positions] == [i for i, p in enumerate(paths) if "broken" not in p]
        assert [i for b in batches for i, _ in b.failures] == [i for i, p in enumerate(paths) if "broken" in p]
        np.testing.assert_array_equal(
            np.concatenate([b.vectors for b in batches]), np.concatenate([b.vectors for b in runs[0]])
        )


def test_auto_falls_back_from_int8_that_failed_its_check(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(probes, "MIN_COSINE_INT8", 1.5)  # the int8 tower cannot pass
    monkeypatch.setattr(backends, "native_bf16", lambda: False)
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)  # a CPU where auto would run ONNX Runtime
    from imgsearch.clip.embedder import Embedder

    auto = Embedder(replace(tiny_model, backend="auto"))
    assert auto.backend == "onnx fp32"
    assert not backends.find_export(tiny_model).image_int8_path.exists()  # auto never makes it
    forced = Embedder(replace(tiny_model, backend="onnx-int8"))
    assert forced.backend == "onnx int8"  # asked for: made now, and run although it failed its check
    export = backends.find_export(tiny_model)
    assert export.passed and not export.int8_passed and export.image_int8_path.is_file()
    assert export.check["int8"]["bound"] == 1.5 and not export.check["int8"]["passed"]
    assert encoders.for_files(tiny_model, export, cuda=False).runner == "onnx"
    assert encoders.for_files(replace(tiny_model, backend="onnx-int8"), export, False).runner == "onnx-int8"  # asked
    export.image_int8_path.unlink()
    missing = Embedder(replace(tiny_model, backend="onnx-int8"))
    assert missing.backend == "onnx fp32" and "no int8 tower could be made" in missing.notes[-1]


def test_the_int8_tower_is_made_once_on_first_use_and_published_whole(tmp_path, tiny_model, monkeypatch):
    from imgsearch.inference.onnx import with_int8

    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    _first_run(tmp_path / "coll", tiny_model, tmp_path)
    export = backends.find_export(tiny_model)
    assert "int8" not in export.check and not export.image_int8_path.exists()  # not made up front
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = export.folder / f"image.int8.onnx.{dead.stdout.strip()}.tmp"  # a quantization killed half way
    leftover.write_bytes(b"half a tower")
    made = with_int8(export)
    assert made.int8_passed and made.check["int8"]["bound"] == probes.MIN_COSINE_INT8, made.check
    assert not leftover.exists() and not list(export.folder.glob("*.tmp"))
    assert backends.find_export(tiny_model).int8_passed  # recorded in meta.json, beside the export's own checks
    stamp = made.image_int8_path.stat().st_mtime_ns
    assert with_int8(backends.find_export(tiny_model)).int8_passed
    assert made.image_int8_path.stat().st_mtime_ns == stamp, "the int8 tower was made again"
    from imgsearch.inference.files import image_tower

    tower, label = image_tower(made, "onnx-int8")
    assert label == "onnx int8" and tower.encode_image(probes.pixels(made.meta["preprocess"], 2)).shape[0] == 2


needs_openvino = pytest.mark.skipif(not backends.openvino_installed(), reason="OpenVINO not installed here")
# Where int8 must pass the fp32 bound: on CPUs with VNNI, the only ones auto runs it on (elsewhere int8 products may
# saturate, and only an explicit --backend openvino-int8 runs it, judged all the same).
needs_vnni = pytest.mark.skipif(
    not (backends.openvino_installed() and backends.fast_int8()), reason="needs OpenVINO and a CPU with VNNI"
)


@needs_vnni
def test_auto_makes_openvino_int8_once_on_a_cpu_with_native_int8(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "fast_int8", lambda: True)
    _first_run(tmp_path / "coll", tiny_model, tmp_path)  # one photo: not worth making it
    export = backends.find_export(tiny_model)
    assert "openvino-int8" not in export.check and not export.openvino_int8_path.exists()  # not made up front
    small = encoders.file_encoder(tiny_model, "auto", files=encoders.INT8_WORTH_FILES - 1)[1]
    assert small.runner == "openvino" and small.reason is None and not export.openvino_int8_path.exists()
    monkeypatch.setattr(backends, "fast_int8", lambda: False)
    assert encoders.file_encoder(tiny_model, "auto", files=10**6)[1].runner == "openvino"  # no VNNI: not made
    assert not export.openvino_int8_path.exists()
    monkeypatch.setattr(backends, "fast_int8", lambda: True)
    told: list[str] = []
    encoder, plan = encoders.file_encoder(tiny_model, "auto", files=encoders.INT8_WORTH_FILES, stage=told.append)
    assert plan.runner == "openvino-int8" and plan.reason is None and encoder.backend == "openvino int8"
    assert told == ["quantizing the image tower to int8 for this CPU (once per model)"]
    made = backends.find_export(tiny_model)
    verdict = made.check["openvino-int8"]
    assert made.openvino_int8_passed and verdict["bound"] == probes.MIN_COSINE, verdict
    assert verdict["cosine"] >= probes.MIN_COSINE and verdict["rank_error"] <= probes.MAX_RANK_ERROR
    assert made.openvino_int8_path.with_name("image.mlp-int8.onnx.data").is_file()
    assert not list(made.folder.glob("*.tmp"))
    stamp = made.openvino_int8_path.stat().st_mtime_ns
    assert encoders.file_encoder(tiny_model, "auto", files=1)[1].runner == "openvino-int8"  # made: any run uses it
    assert made.openvino_int8_path.stat().st_mtime_ns == stamp, "the int8 tower was made again"
    reference = np.asarray(made.meta["probes"]["image"], np.float32)
    assert probes.min_cosine(encoder.load().embed_images(probes.images()), reference) >= probes.MIN_COSINE


@needs_vnni
def test_a_first_run_worth_it_makes_openvino_int8_with_the_export(tmp_path, tiny_model, photos, monkeypatch):
    """The first big index of a folder is the run int8 is for: it must not wait for a later run to be made."""
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "fast_int8", lambda: True)
    monkeypatch.setattr(encoders, "INT8_WORTH_FILES", 12)  # the photos: 12 images and one broken file
    told: list[str] = []
    with imgsearch.open(tmp_path / "coll", model=tiny_model) as engine:
        report = engine.index_folder(photos, progress=lambda done, total, what: told.append(what))
    assert report.backend == "openvino int8" and report.added == 12
    assert "quantizing the image tower to int8 for this CPU (once per model)" in told
    assert backends.find_export(tiny_model).openvino_int8_passed


@needs_openvino
def test_openvino_int8_that_fails_its_check_is_judged_once_and_not_run_by_auto(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    _first_run(tmp_path / "coll", tiny_model, tmp_path)
    monkeypatch.setattr(backends, "fast_int8", lambda: True)
    monkeypatch.setattr(probes, "MIN_COSINE", 1.5)  # after the export's own checks: the int8 tower cannot pass
    encoder, plan = encoders.file_encoder(tiny_model, "auto", files=encoders.INT8_WORTH_FILES)
    assert plan.runner == "openvino" and "int8 is not used" in plan.reason and encoder.backend.startswith("openvino")
    assert encoder.backend != "openvino int8"
    export = backends.find_export(tiny_model)
    assert export.check["openvino-int8"]["bound"] == 1.5 and not export.openvino_int8_passed
    stamp = export.openvino_int8_path.stat().st_mtime_ns  # published: --backend openvino-int8 still runs it
    assert encoders.file_encoder(tiny_model, "auto", files=10**6)[1].runner == "openvino"
    assert export.openvino_int8_path.stat().st_mtime_ns == stamp, "a failed int8 tower was made again"
    asked, plan = encoders.file_encoder(replace(tiny_model, backend="openvino-int8"), "auto")
    assert plan.runner == "openvino-int8" and asked.backend == "openvino int8"


@needs_openvino
def test_a_tower_without_mlp_layers_gets_no_openvino_int8_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    resnet = ModelConfig(TINY_RESNET, None, device="cpu", backend="openvino-int8")
    with imgsearch.open(tmp_path / "coll", model=resnet) as engine:
        engine.embedder.export_onnx()
    encoder, plan = encoders.file_encoder(resnet, "auto")
    assert plan.runner == "openvino" and "no int8 tower could be made" in plan.reason
    assert "has no MLP layers to quantize" in plan.reason
    assert "error" in backends.find_export(resnet).check["openvino-int8"]


def test_exports_keep_weights_beside_the_graph_and_stale_formats_are_removed(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    stale = tmp_path / "cache" / "onnx" / "old-model-0123"
    stale.mkdir(parents=True)
    (stale / "meta.json").write_text(json.dumps({"format": 1}))
    (stale / "text.onnx").write_bytes(b"x" * 1000)
    from imgsearch.clip.embedder import Embedder

    Embedder(replace(tiny_model, backend="onnx")).embed_texts(["a dog"])
    export = backends.find_export(tiny_model)
    for tower in (export.text_path, export.image_path):
        assert tower.with_name(tower.name + ".data").is_file()
    data = export.text_path.with_name("text.onnx.data")  # the token table alone is 49408 x 32 floats
    assert data.stat().st_size > 10 * export.text_path.stat().st_size, "the weights stayed inside the graph file"
    assert not stale.exists() and export.folder.exists()
