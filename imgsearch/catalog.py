"""Recommended open_clip models, for `imgsearch models`: what each costs and how well it retrieves. Imports neither
torch nor open_clip: a table of data, open_clip's JSON architectures (``architectures.py``) and the local Hugging
Face cache.

Quality: the published Karpathy-test retrieval numbers the evaluator holds (``reference.py``), never a guess; a
model open_clip's results table does not hold shows none. Cost: the image tower's compute per image, counted by
``scripts/model_costs.py`` (torch's FlopCounterMode, at the model's input size; tests/test_catalog.py re-counts
some), relative to ViT-B-32: what indexing time scales with. Cached: whether the weights are already in the local
Hugging Face cache (no download needed). Each row's repository is open_clip's own (the test checks them).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import architectures, hub
from .evaluation import reference

_BASE_GFLOPS = 8.82  # ViT-B-32's image tower at 224 px


@dataclass(frozen=True)
class Choice:
    name: str
    pretrained: str
    why: str
    hf_hub: str  # open_clip's hub location of the weights (repo/ or repo/filename)
    image_gflops: float  # image tower, one image (scripts/model_costs.py)
    languages: str = "English"


CHOICES = (
    Choice(
        "ViT-B-32",
        "laion2b_s34b_b79k",
        "the default: fast on a CPU, good quality",
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/",
        8.82,
    ),
    Choice(
        "MobileCLIP2-S0",
        "dfndr2b",
        "half the default's compute, newer training (Apple)",
        "timm/MobileCLIP2-S0-OpenCLIP/",
        4.79,
    ),
    Choice("MobileCLIP-S1", "datacompdr", "fast, trained by Apple", "apple/MobileCLIP-S1-OpenCLIP/", 9.34),
    Choice(
        "ViT-B-32",
        "metaclip_fullcc",
        "MetaCLIP data (Meta), ViT-B-32 cost",
        "timm/vit_base_patch32_clip_224.metaclip_2pt5b/",
        8.82,
    ),
    Choice(
        "ViT-B-16",
        "dfn2b",
        "DFN data (Apple): better matches, 4x the indexing time",
        "apple/DFN2B-CLIP-ViT-B-16/",
        35.13,
    ),
    Choice(
        "ViT-B-16",
        "laion2b_s34b_b88k",
        "better matches, 4x the indexing time",
        "laion/CLIP-ViT-B-16-laion2B-s34B-b88K/",
        35.13,
    ),
    Choice(
        "EVA02-B-16",
        "merged2b_s8b_b131k",
        "EVA-02: strong at ViT-B-16's cost",
        "timm/eva02_base_patch16_clip_224.merged2b_s8b_b131k/",
        35.13,
    ),
    Choice("ViT-B-16-SigLIP", "webli", "SigLIP (Google): among the best at this cost", "timm/ViT-B-16-SigLIP/", 35.42),
    Choice(
        "ViT-B-16-SigLIP2",
        "webli",
        "SigLIP 2 (Google), multilingual tokenizer",
        "timm/ViT-B-16-SigLIP2/",
        35.42,
        "multilingual",
    ),
    Choice(
        "convnext_base_w", "laion2b_s13b_b82k", "ConvNeXt tower", "laion/CLIP-convnext_base_w-laion2B-s13B-b82K/", 40.11
    ),
    Choice(
        "ViT-L-14",
        "laion2b_s32b_b82k",
        "much better matches; for a GPU",
        "laion/CLIP-ViT-L-14-laion2B-s32B-b82K/",
        162.03,
    ),
    Choice("ViT-H-14", "dfn5b", "the best recorded here; GPU only", "apple/DFN5B-CLIP-ViT-H-14/", 334.59),
    Choice(
        "xlm-roberta-base-ViT-B-32",
        "laion5b_s13b_b90k",
        "queries in ~100 languages",
        "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k/",
        8.82,
        "multilingual",
    ),
    Choice(
        "nllb-clip-base-siglip",
        "v1",
        "queries in 200 languages",
        "visheratin/nllb-clip-base-siglip/",
        112.13,
        "multilingual",
    ),
    Choice("ViT-B-32", "openai", "OpenAI's original CLIP", "timm/vit_base_patch32_clip_224.openai/", 8.82),
)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    pretrained: str
    why: str
    languages: str
    dim: int | None  # embedding size
    image_size: int | None
    relative_cost: float  # image-tower compute relative to ViT-B-32
    coco_text_to_image_r5: float | None  # published, Karpathy 5K test
    flickr_text_to_image_r5: float | None  # published, Karpathy 1K test
    cached: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def is_cached(choice: Choice) -> bool:
    repo, filename = split_hub(choice.hf_hub)
    return hub.cached(repo, hub.weight_files(filename))


def split_hub(hf_hub: str) -> tuple[str, str]:
    """("org/repo", filename or "") of open_clip's ``org/repo/`` or ``org/repo/filename``."""
    org, repo, *rest = hf_hub.strip("/").split("/")
    return f"{org}/{repo}", "/".join(rest)


def describe(choices=CHOICES) -> list[ModelInfo]:
    out = []
    for c in choices:
        config = architectures.architecture(c.name) or {}
        coco = reference.lookup(c.name, c.pretrained, "coco")
        flickr = reference.lookup(c.name, c.pretrained, "flickr30k")
        out.append(
            ModelInfo(
                c.name,
                c.pretrained,
                c.why,
                c.languages,
                config.get("embed_dim"),
                architectures.input_side(config) if config else None,
                round(c.image_gflops / _BASE_GFLOPS, 1),
                coco["text_to_image"][1] if coco else None,
                flickr["text_to_image"][1] if flickr else None,
                is_cached(c),
            )
        )
    return out
