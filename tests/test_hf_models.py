"""Models whose tokenizer or text tower comes from the Hugging Face hub (SigLIP, SigLIP2, xlm-roberta, nllb): what
they need is checked before anything is built and named in one line; random weights download nothing; queries run
without torch through the ``tokenizers`` package, with open_clip's token ids. Hugging Face files are stand-ins in a
real cache layout (tests/standins.py); each case runs in its own process, since huggingface_hub reads its cache
location once, at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import standins
from conftest import COCO_MINI, run_cli, write_image

pytestmark = pytest.mark.e2e  # real processes, browsers or clusters: the end-to-end tier

pytest.importorskip("transformers")
CAPTIONS = (
    [c for e in json.loads((COCO_MINI / "coco_mini_captions.json").read_text()) for c in e["caption"]]
    if (COCO_MINI.exists())
    else ["a dog on a beach", "two cats on a sofa"]
)
OTHER_LANGUAGES = ["Un chien qui court sur la plage", "Ein Hund_im Schnee!!", "海辺で遊ぶ二人の子供", "Собака", ""]


def _run(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_cli(*args, env=env, timeout=timeout)


def _env(tmp_path: Path, **extra) -> dict:
    return dict(
        os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", IMGSEARCH_CACHE=str(tmp_path / "cache"), **extra
    )


def test_without_transformers_the_error_names_the_package(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "transformers.py").write_text("raise ImportError('No module named transformers')\n")
    write_image(tmp_path / "photos" / "a.png", 1)
    env = _env(tmp_path, PYTHONPATH=f"{blocked}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = _run(
        "index",
        str(tmp_path / "photos"),
        "--index",
        str(tmp_path / "c"),
        "--model",
        "ViT-B-16-SigLIP",
        "--pretrained",
        "none",
        "-q",
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert "needs the transformers package; install it with `pip install transformers`" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_an_uncached_tokenizer_offline_is_named_with_its_files_before_the_model_is_built(tmp_path):
    write_image(tmp_path / "photos" / "a.png", 1)
    proc = _run(
        "index",
        str(tmp_path / "photos"),
        "--index",
        str(tmp_path / "c"),
        "--model",
        "ViT-B-16-SigLIP",
        "--pretrained",
        "none",
        "-q",
        env=_env(tmp_path),
        timeout=120,
    )
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert "tokenizer of ViT-B-16-SigLIP (Hugging Face repo timm/ViT-B-16-SigLIP: tokenizer.json" in line
    assert "HF_HUB_OFFLINE is set" in line and "models--timm--ViT-B-16-SigLIP" in line
    assert "--pretrained FILE" not in line  # advice that cannot help: the tokenizer is fetched apart from weights


def test_random_weights_download_no_text_tower_weights(tmp_path):
    """xlm-roberta with --pretrained none: only its config is needed (stand-in); 0.1 fetched its pretrained text
    weights anyway, and offline it failed."""
    standins.xlm_roberta(tmp_path / "hf", "xlm-roberta-base", CAPTIONS[:200])
    write_image(tmp_path / "photos" / "a.png", 1)
    write_image(tmp_path / "photos" / "b.png", 2)
    proc = _run(
        "index",
        str(tmp_path / "photos"),
        "--index",
        str(tmp_path / "c"),
        "--model",
        "xlm-roberta-base-ViT-B-32",
        "--pretrained",
        "none",
        "-q",
        env=_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    query = _run(
        "query",
        "Un chien sur la plage",
        "--index",
        str(tmp_path / "c"),
        "--server",
        "off",
        "-k",
        "1",
        "--json",
        env=_env(tmp_path),
    )
    assert query.returncode == 0 and len(json.loads(query.stdout)) == 1, query.stderr


def test_the_torch_free_tokenizer_gives_open_clips_ids(tmp_path):
    standins.tokenizer(tmp_path / "hf", "timm/ViT-B-16-SigLIP", CAPTIONS[:500])
    code = """
import json, sys
import numpy as np, open_clip
from imgsearch.clip.embedder import Embedder
from imgsearch.config import ModelConfig
from imgsearch.inference import backends
from imgsearch.inference.tokenizer import for_export
model = ModelConfig("ViT-B-16-SigLIP", None, device="cpu", pretrained_as="webli")
Embedder(model).load()
export = backends.find_export(model)
texts = json.loads(sys.stdin.read())
ours = for_export(export.meta, export.folder)(texts)
theirs = open_clip.get_tokenizer("ViT-B-16-SigLIP")(texts).numpy()
print(export.torch_free_text, ours.shape == theirs.shape, int((ours != theirs).any(axis=1).sum()))
"""
    texts = CAPTIONS + OTHER_LANGUAGES + ["x" * 500, "  A  B  ", "don't_stop"]
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=900,
    )
    assert proc.stdout.split() == ["True", "True", "0"], proc.stderr[-2000:]
