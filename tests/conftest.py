"""Shared fixtures: a tiny open_clip architecture with random weights (the real code path),
real image files, and paths to the shared COCO data."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def model_configs_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model_configs")
    (folder / f"{TINY_MODEL}.json").write_text(json.dumps(TINY_CONFIG))
    return folder


@pytest.fixture(autouse=True)
def _tiny_model_env(model_configs_dir, monkeypatch):
    """Every test (and every CLI subprocess it starts) can use the tiny architecture by name."""
    monkeypatch.setenv("IMGSEARCH_MODEL_CONFIGS", str(model_configs_dir))
    monkeypatch.delenv("IMGSEARCH_INDEX", raising=False)


@pytest.fixture(scope="session")
def tiny_model():
    from imgsearch.config import ModelConfig

    return ModelConfig(name=TINY_MODEL, pretrained=None, device="cpu")


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model, model_configs_dir):
    os.environ["IMGSEARCH_MODEL_CONFIGS"] = str(model_configs_dir)
    from imgsearch.embedder import Embedder

    return Embedder(tiny_model)


@pytest.fixture(scope="session")
def coco_captions() -> list[dict]:
    path = COCO_MINI / "coco_mini_captions.json"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return json.loads(path.read_text())
