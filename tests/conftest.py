"""Shared fixtures: a tiny open_clip architecture with random weights (the real code path),
real image files, and paths to the shared COCO data."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COCO_MINI = SHARED_DATA / "coco_mini"

# A real open_clip CLIP config, just small: 32-px images, one layer per tower, 32-dim embeddings.
TINY_MODEL = "imgsearch-tiny"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


# The same, with a ResNet image tower: BatchNorm, which computes wrong vectors in training mode.
TINY_RESNET = "imgsearch-tiny-resnet"
TINY_RESNET_CONFIG = {
    **TINY_CONFIG,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
}


@pytest.fixture(scope="session")
def model_configs_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model_configs")
    (folder / f"{TINY_MODEL}.json").write_text(json.dumps(TINY_CONFIG))
    (folder / f"{TINY_RESNET}.json").write_text(json.dumps(TINY_RESNET_CONFIG))
    return folder


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory) -> Path:
    """One cache of ONNX exports for the session (never the user's ~/.cache)."""
    return tmp_path_factory.mktemp("imgsearch_cache")


@pytest.fixture(scope="session", autouse=True)
def _session_env(model_configs_dir, export_cache):
    """Set before any fixture of any scope runs (a module's collection built with the tiny model included), and
    put back at the end: the tiny architectures by name, exports in the session's cache, never the user's."""
    names = ("IMGSEARCH_MODEL_CONFIGS", "IMGSEARCH_CACHE")
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(IMGSEARCH_MODEL_CONFIGS=str(model_configs_dir), IMGSEARCH_CACHE=str(export_cache))
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _tiny_model_env(model_configs_dir, export_cache, monkeypatch, tmp_path_factory):
    """Every test (and every CLI subprocess it starts) can use the tiny architecture by name, whatever an earlier
    test changed; the default collection lives in a temporary XDG data folder, never the user's."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg_data")))
    monkeypatch.setenv("IMGSEARCH_MODEL_CONFIGS", str(model_configs_dir))
    monkeypatch.setenv("IMGSEARCH_CACHE", str(export_cache))
    monkeypatch.delenv("IMGSEARCH_INDEX", raising=False)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A real tmpfs of ``size`` mounted at ``folder`` (skips the test where mounting needs root), then unmounted."""
    import subprocess

    folder.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)])


def run_cli(*args, env: dict | None = None, timeout: float = 300):
    """``python -m imgsearch ARGS`` as a user runs it: a real process, output captured, never raising on failure."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "imgsearch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
    )


@pytest.fixture
def engine(tmp_path, tiny_model):
    """An empty collection with the tiny model (tests that need one indexed define their own ``engine``)."""
    import imgsearch

    with imgsearch.open(tmp_path / "coll", model=tiny_model) as collection:
        yield collection


@pytest.fixture(scope="session")
def tiny_model():
    from imgsearch.config import ModelConfig

    return ModelConfig(name=TINY_MODEL, pretrained=None, device="cpu")


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model):
    from imgsearch.clip.embedder import Embedder

    return Embedder(tiny_model)


@pytest.fixture(scope="session")
def coco_captions() -> list[dict]:
    path = COCO_MINI / "coco_mini_captions.json"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return json.loads(path.read_text())


def write_image(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    """A distinct real image file (format from the extension): random blocks seeded by `seed`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((size[1] // 4 + 1, size[0] // 4 + 1, 1), np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[: size[1], : size[0]]).save(path)
    return path


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    """Ten distinct generated images in a nested folder."""
    folder = tmp_path / "photos"
    for i in range(10):
        write_image(folder / ("sub" if i % 2 else "") / f"img{i}.{'png' if i % 3 else 'jpg'}", seed=i)
    return folder


@pytest.fixture(scope="session")
def serve_env(model_configs_dir, export_cache) -> dict:
    """What a server subprocess needs to find the tiny model (module-scoped fixtures cannot use the autouse one)."""
    return {"IMGSEARCH_MODEL_CONFIGS": str(model_configs_dir), "IMGSEARCH_CACHE": str(export_cache)}


def index_captioned(coll: Path, photos: Path, embedder, captions: list[dict], names) -> None:
    """A collection of ``photos`` whose text collection is the first COCO caption of each image in ``names``."""
    import imgsearch

    first = {entry["image"].split("/")[-1]: entry["caption"][0] for entry in captions}
    with imgsearch.open(coll, embedder=embedder) as engine:
        engine.index_folder(photos)
        engine.add_texts([first[name] for name in names], source="captions")


class Served:
    """A real `imgsearch serve` subprocess on a free port, found through its discovery file."""

    def __init__(self, collection: Path, *args: str, env: dict | None = None, files: int | None = None):
        """``files``: the server process's limit of open files (RLIMIT_NOFILE), to test what fills it."""
        import subprocess
        import sys
        import time

        self.collection = collection
        discovery = collection / "server.json"
        discovery.unlink(missing_ok=True)
        self.log = collection.parent / f"serve-{collection.name}.log"

        def limit():
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imgsearch", "serve", "--index", str(collection), "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            env=dict(os.environ, **(env or {})),
            preexec_fn=limit if files else None,
        )
        deadline = time.monotonic() + 120
        while not discovery.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start: {self.log.read_text()}")
            time.sleep(0.1)
        self.url = json.loads(discovery.read_text())["url"]

    def get(
        self, path: str, params=None, body: bytes | None = None, headers: dict | None = None, method: str | None = None
    ):
        """(status, headers, body bytes), whatever the status."""
        import urllib.error
        import urllib.parse
        import urllib.request

        query = f"?{urllib.parse.urlencode(params, doseq=True)}" if params else ""
        headers = dict(headers or {})
        if body is not None and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/octet-stream"  # as the CLI and the gallery send uploads
        request = urllib.request.Request(self.url + path + query, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def json(self, path: str, params=None, **kwargs):
        status, _, body = self.get(path, params, **kwargs)
        return status, json.loads(body)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def stamp_of(path: Path) -> dict:
    """A derived file's stamp (``*.generation``, JSON since 0.2): generation, since, collection[, size, crc]."""
    return json.loads(Path(path).read_text())


def same_state(a: Path, b: Path) -> bool:
    """Whether two stamps name the same saved state of the same collection (the float16 rows' and the index's)."""
    first, second = stamp_of(a), stamp_of(b)
    return all(first[k] == second[k] for k in ("generation", "since", "collection"))
