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

import imgsearch
from imgsearch.config import IndexingConfig
from imgsearch.distributed import ray_embed
from imgsearch.errors import BadInputError

from conftest import SHARED_DATA

pytestmark = pytest.mark.e2e  # real processes, browsers or clusters: the end-to-end tier

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
        return {rows[i]: vector for i, vector in store.vectors("images", list(rows)).items()}


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


def _shard_paths(shards: Path) -> set[str]:
    import pyarrow.parquet as pq

    return {
        path for file in shards.glob("*.parquet") for path in pq.read_table(file, columns=["path"])["path"].to_pylist()
    }


def _held_paths(coll: Path, shards: Path) -> set[str]:
    """Files a resumed run need not embed: rows and skip records in the store, and rows in shards."""
    with sqlite3.connect(coll / "imgsearch.db") as conn:
        stored = {r[0] for r in conn.execute("SELECT path FROM images UNION SELECT path FROM skipped")}
    conn.close()
    return stored | _shard_paths(shards)


def test_a_killed_ray_run_resumes_from_its_shards(tmp_path, tiny_model, photos, cluster, monkeypatch):
    coll = tmp_path / "coll"
    for copy in ("val_a", "val_b"):  # a longer run (copies are embedded: none is in the store yet), so the kill lands
        shutil.copytree(photos / "val2017", photos / copy)
    files = sum(1 for f in photos.rglob("*") if f.is_file())
    with imgsearch.open(coll, model=tiny_model) as engine:  # the collection and its model exist up front
        first = engine.index_folder(photos / "train2017", IndexingConfig(workers=0)).added
    shards = coll / ray_embed.SHARDS
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imgsearch.cli",
            "index",
            str(photos),
            "--index",
            str(coll),
            "--ray",
            "local",
            "--batch-size",
            "8",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not list(shards.glob("*.parquet")):
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before its first shard: {proc.communicate()[1][-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and the cluster it started
    proc.wait()
    held = _held_paths(coll, shards)
    assert first < len(held) < files, "the kill did not land mid-run"

    asked, real_run = [], ray_embed._run

    def spied(entries, *args):
        asked.extend(e.path for e in entries)
        yield from real_run(entries, *args)

    monkeypatch.setattr(ray_embed, "_run", spied)
    with imgsearch.open(coll) as engine:
        report = engine.index_folder(photos, IndexingConfig(ray="local", batch_size=8))
    # The cluster was asked only for what neither the store nor a shard already held (fewer still where a copy of
    # an image the killed run committed reuses its vector).
    assert asked and not set(asked) & held and len(asked) <= files - len(held)
    assert report.added + report.unchanged == files - 1 and len(report.skipped) + report.still_skipped == 1
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
