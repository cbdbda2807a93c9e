"""Each set of weights runs with its recipe (clip/models.py): its tag's preprocessing and activation, for a tag, for
a checkpoint file tied to one (by --pretrained-as, its Hugging Face cache folder, or the one recipe its architecture's
published weights share), and a file that cannot be told apart is refused with the fix."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import imgsearch
from imgsearch.clip.models import recipe_for
from imgsearch.config import ModelConfig
from imgsearch.errors import ModelLoadError, ModelMismatchError

from conftest import TINY_MODEL


def test_a_tag_runs_with_its_own_recipe():
    openai = recipe_for(ModelConfig("ViT-B-32", "openai"))
    assert openai.quick_gelu and openai.tag == "openai"  # open_clip 3 builds plain GELU for it, and only warns
    laion = recipe_for(ModelConfig("ViT-B-32", "laion2b_s34b_b79k"))
    assert not laion.quick_gelu and laion.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    siglip = recipe_for(ModelConfig("ViT-B-16-SigLIP", "webli"))
    assert (siglip.mean, siglip.resize_mode) == ((0.5, 0.5, 0.5), "squash")
    mobile = recipe_for(ModelConfig("MobileCLIP2-S0", "dfndr2b"))
    assert (mobile.mean, mobile.std, mobile.interpolation) == ((0.0,) * 3, (1.0,) * 3, "bilinear")


@pytest.mark.e2e
def test_openais_weights_are_built_with_quickgelu():
    import open_clip

    from imgsearch.clip.models import load_model

    loaded = load_model(ModelConfig("ViT-B-32", None, device="cpu", pretrained_as="openai"), "cpu")
    kinds = {type(m).__name__ for m in loaded.model.modules()}
    assert "QuickGELU" in kinds and "GELU" not in kinds and loaded.recipe.quick_gelu
    plain = load_model(ModelConfig("ViT-B-32", None, device="cpu"), "cpu")
    assert not any(isinstance(m, open_clip.transformer.QuickGELU) for m in plain.model.modules())


def test_a_file_of_an_architecture_whose_weights_differ_is_refused_with_the_fix(tmp_path):
    ckpt = tmp_path / "open_clip_model.safetensors"
    ckpt.write_bytes(b"not read: the recipe is decided first")
    with pytest.raises(ModelLoadError) as raised:
        recipe_for(ModelConfig("ViT-B-32", str(ckpt)))
    text = raised.value.for_cli()
    assert "cannot be told from the file" in text and "--pretrained-as TAG" in text
    assert "openai" in text and "QuickGELU" in text
    tied = recipe_for(ModelConfig("ViT-B-32", str(ckpt), pretrained_as="openai"))
    assert tied.quick_gelu and tied.source == "--pretrained-as"
    own = recipe_for(ModelConfig("ViT-B-32", str(ckpt), pretrained_as="none"))
    assert own.tag is None and not own.quick_gelu
    with pytest.raises(ModelLoadError, match="closest: laion2b_s34b_b79k"):
        recipe_for(ModelConfig("ViT-B-32", str(ckpt), pretrained_as="laion2b_s34b_b7"))


def test_a_file_whose_architecture_has_one_recipe_gets_it(tmp_path):
    ckpt = tmp_path / "siglip.bin"
    ckpt.write_bytes(b"x")
    recipe = recipe_for(ModelConfig("ViT-B-16-SigLIP", str(ckpt)))
    assert recipe.mean == (0.5, 0.5, 0.5) and recipe.resize_mode == "squash"
    assert "every published ViT-B-16-SigLIP checkpoint" in recipe.source


def test_a_file_in_the_hugging_face_cache_is_known_by_its_folder(tmp_path):
    snapshot = tmp_path / "hub" / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"x")
    recipe = recipe_for(ModelConfig("ViT-B-32", str(snapshot / "open_clip_pytorch_model.bin")))
    assert recipe.tag == "openai" and recipe.quick_gelu and "Hugging Face cache folder" in recipe.source


def test_the_cli_refuses_an_ambiguous_checkpoint_before_loading_anything(tmp_path, photo_dir):
    from typer.testing import CliRunner

    from imgsearch.cli import app

    ckpt = tmp_path / "ViT-B-32.pt"
    ckpt.write_bytes(b"x")
    result = CliRunner().invoke(
        app,
        [
            "index",
            str(photo_dir),
            "--index",
            str(tmp_path / "c"),
            "--model",
            "ViT-B-32",
            "--pretrained",
            str(ckpt),
            "-q",
        ],
    )
    assert result.exit_code == 1 and "--pretrained-as TAG" in result.output and "Traceback" not in result.output


@pytest.mark.e2e
def test_a_checkpoint_file_runs_like_its_tag(tmp_path, monkeypatch):
    """The README's offline route: the same weights from a file give the same vectors as by tag, with the tag's
    preprocessing (MobileCLIP: mean 0, std 1, bilinear), where imgsearch 0.1 used OpenAI's."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from imgsearch.clip.embedder import Embedder

    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    by_tag = Embedder(
        ModelConfig("MobileCLIP-S1", None, device="cpu", backend="torch", precision="fp32", pretrained_as="datacompdr")
    )
    snapshot = tmp_path / "hub" / "models--apple--MobileCLIP-S1-OpenCLIP" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    path = snapshot / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in by_tag.model.state_dict().items()}, str(path))
    from_file = Embedder(ModelConfig("MobileCLIP-S1", str(path), device="cpu", backend="torch", precision="fp32"))
    assert from_file.recipe.tag == "datacompdr" and from_file.recipe.mean == (0.0, 0.0, 0.0)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    torch.testing.assert_close(from_file.preprocess(image), by_tag.preprocess(image))
    assert float(from_file.embed_images([image])[0] @ by_tag.embed_images([image])[0]) > 0.99999


def test_the_collection_records_the_recipe_and_info_shows_it(tmp_path, photo_dir):
    model = ModelConfig(TINY_MODEL, None, device="cpu", pretrained_as="none")
    with imgsearch.open(tmp_path / "c", model=model) as engine:
        engine.index_folder(photo_dir)
        about = engine.info()
    assert about.pretrained_as == "none" and about.recipe["tag"] is None
    assert about.recipe["source"] == "the architecture's defaults (--pretrained-as none)"
    with imgsearch.open(tmp_path / "c") as engine:
        assert engine.model.pretrained_as == "none"  # reopened as it was built
    with pytest.raises(ModelMismatchError):
        imgsearch.open(tmp_path / "c", model=replace(model, pretrained_as="openai")).model  # noqa: B018
