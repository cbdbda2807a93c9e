"""Recommended open_clip models, for `imgsearch models`: what each costs and how well it retrieves.

Quality: the published Karpathy-test retrieval numbers the evaluator already holds (imgsearch.reference), never a
guess; a model without recorded numbers shows none. Cost: the image tower's multiply-adds per image, computed from
the model's open_clip architecture config, relative to ViT-B-32 (what indexing time scales with). Cached: whether
open_clip's weights for the tag are already in the local Hugging Face cache (no download needed).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import reference


@dataclass(frozen=True)
class Choice:
    name: str
    pretrained: str
    why: str
    languages: str = "English"


CHOICES = (
    Choice("ViT-B-32", "laion2b_s34b_b79k", "the default: fast on a CPU, good quality"),
    Choice("ViT-B-16", "laion2b_s34b_b88k", "better matches, several times the indexing time"),
    Choice("ViT-L-14", "laion2b_s32b_b82k", "much better matches; for a GPU"),
    Choice("ViT-H-14", "laion2b_s32b_b79k", "the best recorded here; GPU only"),
    Choice("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k", "queries in ~100 languages", "multilingual"),
    Choice("ViT-B-32", "openai", "OpenAI's original CLIP"),
)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    pretrained: str
    why: str
    languages: str
    dim: int | None  # embedding size
    image_size: int | None
    relative_cost: float | None  # image tower multiply-adds relative to ViT-B-32
    coco_text_to_image_r5: float | None  # published, Karpathy 5K test
    flickr_text_to_image_r5: float | None  # published, Karpathy 1K test
    cached: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def image_macs(config: dict) -> float | None:
    """Multiply-adds of a ViT image tower for one image, from its open_clip config (None for other towers)."""
    vision = config.get("vision_cfg", {})
    width, layers, patch = vision.get("width"), vision.get("layers"), vision.get("patch_size")
    size = vision.get("image_size", 224)
    if not (isinstance(width, int) and isinstance(layers, int) and patch):
        return None
    size = size[0] if isinstance(size, (list, tuple)) else size
    tokens = (size // patch) ** 2 + 1
    mlp = vision.get("mlp_ratio", 4.0)
    per_layer = tokens * (4 + 2 * mlp) * width * width + 2 * tokens * tokens * width  # qkv+out+mlp, attention
    return layers * per_layer + tokens * 3 * patch * patch * width


def describe(choices=CHOICES) -> list[ModelInfo]:
    from .clip.models import weights_cached  # open_clip (and torch) load only here
    from .architectures import architecture

    base = image_macs(architecture("ViT-B-32") or {}) or 1.0
    out = []
    for c in choices:
        config = architecture(c.name) or {}
        macs = image_macs(config)
        vision = config.get("vision_cfg", {})
        coco = reference.lookup(c.name, c.pretrained, "coco")
        flickr = reference.lookup(c.name, c.pretrained, "flickr30k")
        out.append(ModelInfo(
            c.name, c.pretrained, c.why, c.languages, config.get("embed_dim"), vision.get("image_size"),
            round(macs / base, 1) if macs else None,
            coco["text_to_image"][1] if coco else None, flickr["text_to_image"][1] if flickr else None,
            weights_cached(c.name, c.pretrained)))
    return out
