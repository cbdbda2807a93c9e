"""`imgsearch models`: the recommended models with their cost and published quality, answered without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgsearch import catalog
from imgsearch.evaluation import reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


def _models(env) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "imgsearch", "models", "--json"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_models_lists_costs_published_quality_and_what_is_cached(tmp_path):
    hf = tmp_path / "hf"
    env = dict(os.environ, HF_HOME=str(hf))
    listed = _models(env)
    by_key = {(m["name"], m["pretrained"]): m for m in listed}
    families = {
        "ViT-B-16-SigLIP2",
        "MobileCLIP2-S0",
        "EVA02-B-16",
        "convnext_base_w",
        "xlm-roberta-base-ViT-B-32",
        "nllb-clip-base-siglip",
    }
    assert families <= {name for name, _ in by_key}
    assert ("ViT-B-16", "dfn2b") in by_key and ("ViT-B-32", "metaclip_fullcc") in by_key  # DFN, MetaCLIP
    default = by_key[("ViT-B-32", "laion2b_s34b_b79k")]
    assert default["relative_cost"] == 1.0 and by_key[("ViT-B-16", "laion2b_s34b_b88k")]["relative_cost"] == 4.0
    assert by_key[("MobileCLIP2-S0", "dfndr2b")]["relative_cost"] == 0.5  # a non-ViT tower has a cost too
    assert (
        default["coco_text_to_image_r5"]
        == reference.lookup("ViT-B-32", "laion2b_s34b_b79k", "coco")["text_to_image"][1]
    )
    assert by_key[("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k")]["flickr_text_to_image_r5"] == 0.8628
    assert by_key[("MobileCLIP2-S0", "dfndr2b")]["coco_text_to_image_r5"] is None  # not in open_clip's table
    assert not any(m["cached"] for m in listed)
    # a Hugging Face cache entry for the default weights (the layout huggingface_hub writes) is seen as cached
    repo = hf / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "open_clip_model.safetensors").write_bytes(b"x")
    again = _models(env)
    assert [m["cached"] for m in again] == [True] + [False] * (len(again) - 1)


def test_models_answers_without_importing_torch():
    code = (
        "import sys; from imgsearch.cli import app\n"
        "try:\n    app(['models', '--json'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'open_clip' in sys.modules, file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "False False", proc.stderr


def test_every_choice_is_open_clips_own_tag_and_repository():
    import open_clip

    for choice in catalog.CHOICES:
        cfg = open_clip.get_pretrained_cfg(choice.name, choice.pretrained)
        assert cfg, (choice.name, choice.pretrained)
        assert cfg["hf_hub"] == choice.hf_hub, choice


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["MobileCLIP2-S0", "convnext_base_w", "ViT-B-32"])
def test_the_recorded_costs_are_what_torch_counts(name):
    from model_costs import image_gflops

    recorded = {c.name: c.image_gflops for c in catalog.CHOICES}[name]
    assert image_gflops(name) == pytest.approx(recorded, abs=0.01)
