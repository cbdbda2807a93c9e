"""Embedding on a local Ray cluster (2 CPUs) with the tiny model, on the shared COCO photos: the collection equals
one built in this process, and a run killed mid-way resumes from the shards it wrote and loses nothing."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

import imgsearch
from imgsearch.config import IndexingConfig
from imgsearch.distributed import ray_embed
from imgsearch.errors import BadInputError

ray = pytest.importorskip("ray", reason="the Ray extra is not installed: pip install -e '.[ray]'")

PHOTOS = SHARED_DATA / "coco_mini"


@pytest.fixture(scope="module")
def cluster(model_configs_dir, export_cache):
    if not PHOTOS.is_dir():
        pytest.skip(f"shared photos not found at {PHOTOS}")
    env = {"IMGSEARCH_MODEL_CONFIGS": str(model_configs_dir), "IMGSEARCH_CACHE": str(export_cache)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


@pytest.fixture
def photos(tmp_path) -> Path:
    """The shared photos, plus one file that is not an image (skipped, with its reason, both ways)."""
    folder = tmp_path / "photos"
    shutil.copytree(PHOTOS, folder, ignore=shutil.ignore_patterns("*.json"))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def stored(coll: Path) -> dict[str, np.ndarray]:
    with imgsearch.open(coll) as engine:
        store = engine._store_for()
        rows = dict(store.all_paths())
        return {path: vector for i, vector in store.vectors("images", list(rows)).items() for path in [rows[i]]}


def test_a_ray_build_equals_a_local_build(tmp_path, tiny_model, photos, cluster):
    with imgsearch.open(tmp_path / "local", model=tiny_model) as engine:
        local = engine.index_folder(photos, IndexingConfig(workers=0))
    with imgsearch.open(tmp_path / "ray", model=tiny_model) as engine:
        report = engine.index_folder(photos, IndexingConfig(ray="local", batch_size=32))
    assert report.backend == "ray" and report.added == local.added == 239
    assert [(s.path, s.reason) for s in report.skipped] == [(s.path, s.reason) for s in local.skipped]
    assert len(report.skipped) == 1 and report.skipped[0].path.endswith("broken.jpg")
    want, got = stored(tmp_path / "local"), stored(tmp_path / "ray")
    assert sorted(got) == sorted(want)
    cosines = [float(np.dot(want[p], got[p])) for p in want]
    assert min(cosines) >= 0.9999
    assert not (tmp_path / "ray" / ray_embed.SHARDS).exists(), "committed shards were left behind"
    with imgsearch.open(tmp_path / "ray") as engine:  # the index and the details came through too
        hit = engine.search(next(iter(want)), k=1)[0]
        assert hit.path == next(iter(want)) and hit.width > 0 and hit.format == "jpeg"
    # Incremental rules hold: nothing changed, nothing embedded (Ray is not even asked).
    with imgsearch.open(tmp_path / "ray") as engine:
        again = engine.index_folder(photos, IndexingConfig(ray="local"))
    assert (again.added, again.unchanged, again.embedded) == (0, 239, 0)


def _shard_rows(shards: Path) -> int:
    import pyarrow.parquet as pq

    total = 0
    for file in shards.glob("*.parquet"):
        try:
            total += pq.read_metadata(file).num_rows
        except Exception:  # noqa: BLE001 - a shard being written at the kill
            pass
    return total


def test_a_killed_ray_run_resumes_from_its_shards(tmp_path, tiny_model, photos, cluster, monkeypatch):
    coll = tmp_path / "coll"
    with imgsearch.open(coll, model=tiny_model) as engine:  # the collection and its model exist up front
        engine.index_folder(tmp_path / "photos" / "val2017", IndexingConfig(workers=0))
    shards = coll / ray_embed.SHARDS
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgsearch.cli", "index", str(photos), "--index", str(coll), "--ray", "local",
         "--batch-size", "8", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and _shard_rows(shards) == 0:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before its first shard: {proc.communicate()[1][-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and the cluster it started
    proc.wait()
    left = _shard_rows(shards)
    with sqlite3.connect(coll / "imgsearch.db") as conn:
        before = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    conn.close()

    asked = []
    real_run = ray_embed._run
    monkeypatch.setattr(ray_embed, "_run", lambda entries, *a: (asked.append(len(entries)), real_run(entries, *a)))
    with imgsearch.open(coll) as engine:
        report = engine.index_folder(photos, IndexingConfig(ray="local", batch_size=8))
    assert 0 < left < 239 + 1 - before  # the kill landed mid-run: some shards written, not all
    # The cluster was asked only for what neither the store nor a shard already held.
    assert sum(asked) <= 239 + 1 - before - left
    assert report.added + report.unchanged == 239 and len(report.skipped) == 1
    assert not shards.exists()
    with imgsearch.open(tmp_path / "local", model=tiny_model) as engine:
        engine.index_folder(photos, IndexingConfig(workers=0))
    want, got = stored(tmp_path / "local"), stored(coll)
    assert sorted(got) == sorted(want)
    assert min(float(np.dot(want[p], got[p])) for p in want) >= 0.9999


def test_without_ray_the_error_says_how_to_install_it(tmp_path, tiny_model, photos, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with imgsearch.open(tmp_path / "c", model=tiny_model) as engine:
        with pytest.raises(BadInputError, match=r"pip install 'imgsearch\[ray\]'"):
            engine.index_folder(photos, IndexingConfig(ray="local"))
