"""Stored vectors that no longer describe their images as the model's authors trained it, and why (issue #19).

imgsearch 0.1 ran some models wrongly, without a word: after exporting a model it left the model in training mode,
so the rest of that first run embedded with BatchNorm in batch-statistics mode and dropout on (RN50, MobileCLIP,
ConvNeXt and Hugging Face text towers); a checkpoint file got the architecture's default preprocessing instead of
its tag's; OpenAI's weights ran with GELU instead of their QuickGELU. Since 0.2 a collection's manifest records
how its vectors are made (``embedding``: a version and the recipe, ``clip.models.Recipe``). A collection without
that record was made by 0.1; one whose recipe differs from today's (a checkpoint newly tied to its tag, a recipe
open_clip changed) holds vectors of another model in all but name.

When the next index run finds either, it marks the collection (``stale``: since when, and why) and re-embeds every
row written before that time, in place (same ids); reads say how many rows are still stale until none is.
"""

from __future__ import annotations

import time

EMBEDDING_VERSION = 2
EMBEDDING_KEY = "embedding"  # manifest: {"version", "recipe"}
STALE_KEY = "stale"  # manifest: {"before": epoch seconds, "why": [...]}; rows written before are re-embedded
_RUN_KEYS = ("mean", "std", "interpolation", "resize_mode", "quick_gelu")


def entry(recipe: dict) -> dict:
    """The manifest's record of how the collection's vectors are made."""
    return {"version": EMBEDDING_VERSION, "recipe": recipe}


def runs_like(a: dict, b: dict) -> bool:
    """Whether two recorded recipes give the same vectors (tag and reason aside)."""
    return all(_value(a.get(k)) == _value(b.get(k)) for k in _RUN_KEYS)


def _value(v):
    return [round(float(x), 6) for x in v] if isinstance(v, (list, tuple)) else v


def reasons(model_label: str, recorded: dict | None, made_with: dict, current: dict, sensitive: list[str]) -> list[str]:
    """Why the stored vectors must be made again: ``recorded`` is the manifest's entry (None: imgsearch 0.1),
    ``made_with`` the recipe they were made with, ``current`` today's recipe, ``sensitive`` the kinds of module that
    a model left in training mode computes wrongly (only 0.1 left it so)."""
    found = []
    if recorded is None and sensitive:
        found.append(
            f"imgsearch 0.1 left {model_label} in training mode after exporting it ({', '.join(sensitive)} "
            "then computed wrong vectors)"
        )
    if not runs_like(made_with, current):
        found.append(f"they were made with {summary(made_with)}; {model_label} runs with {summary(current)}")
    return found


def summary(recipe: dict) -> str:
    act = "QuickGELU" if recipe.get("quick_gelu") else "GELU"
    mean = "/".join(f"{float(v):g}" for v in recipe.get("mean", ()))
    return (
        f"{recipe.get('tag') or 'the architecture defaults'}'s recipe (mean {mean}, {recipe.get('interpolation')}, "
        f"{recipe.get('resize_mode')}, {act})"
    )


def mark(why: list[str]) -> dict:
    """The manifest's stale marker: every row written before now is re-embedded."""
    return {"before": time.time(), "why": why}


def warning(stale: dict, images: int, texts: int) -> str:
    what = " and ".join(f"{n} {kind}" for n, kind in ((images, "images"), (texts, "texts")) if n)
    return (
        f"{what} of this collection hold vectors that are wrong: {'; '.join(stale.get('why', []))}. "
        "Searches mix them with correct ones until they are re-embedded: run `imgsearch index` on the "
        "collection's folders"
    )


LEGACY_WARNING = (
    "this collection's vectors were made by imgsearch 0.1, which ran some models wrongly (BatchNorm "
    "models such as RN50 and MobileCLIP, checkpoint files, OpenAI's QuickGELU weights): run "
    "`imgsearch index` on its folders once; it checks them and re-embeds them if they are wrong"
)
