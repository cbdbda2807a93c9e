"""Published retrieval results, to show beside measured ones.

Source: open_clip's docs/openclip_retrieval_results.csv (github.com/mlfoundations/open_clip), produced with
LAION's CLIP_benchmark on the Karpathy test splits (Flickr30K 1K, MSCOCO 5K). "Image retrieval" there is our
text_to_image, "text retrieval" our image_to_text. Values are (R@1, R@5, R@10) as fractions.
"""

from __future__ import annotations

import hashlib
import os
import re

Triple = tuple[float, float, float]

SOURCE = "open_clip docs/openclip_retrieval_results.csv (CLIP_benchmark, Karpathy test splits)"

# (model, pretrained) -> dataset -> direction -> (R@1, R@5, R@10)
RESULTS: dict[tuple[str, str], dict[str, dict[str, Triple]]] = {
    ("ViT-B-32", "openai"): {
        "flickr30k": {"text_to_image": (0.5878, 0.8356, 0.9002), "image_to_text": (0.7890, 0.9490, 0.9820)},
        "coco": {"text_to_image": (0.3044, 0.5594, 0.6687), "image_to_text": (0.5012, 0.7500, 0.8352)},
    },
    ("ViT-B-32", "laion2b_s34b_b79k"): {
        "flickr30k": {"text_to_image": (0.6678, 0.8838, 0.9310), "image_to_text": (0.8410, 0.9620, 0.9830)},
        "coco": {"text_to_image": (0.3934, 0.6543, 0.7561), "image_to_text": (0.5632, 0.7984, 0.8712)},
    },
    ("ViT-B-32", "laion2b_e16"): {
        "flickr30k": {"text_to_image": (0.6638, 0.8830, 0.9322), "image_to_text": (0.8440, 0.9650, 0.9840)},
        "coco": {"text_to_image": (0.3913, 0.6467, 0.7481), "image_to_text": (0.5624, 0.7956, 0.8708)},
    },
    ("ViT-B-16", "openai"): {
        "flickr30k": {"text_to_image": (0.6216, 0.8572, 0.9192), "image_to_text": (0.8220, 0.9660, 0.9900)},
        "coco": {"text_to_image": (0.3309, 0.5842, 0.6899), "image_to_text": (0.5242, 0.7670, 0.8462)},
    },
    ("ViT-B-16", "laion2b_s34b_b88k"): {
        "flickr30k": {"text_to_image": (0.6984, 0.9038, 0.9456), "image_to_text": (0.8630, 0.9790, 0.9940)},
        "coco": {"text_to_image": (0.4231, 0.6770, 0.7706), "image_to_text": (0.5944, 0.8178, 0.8862)},
    },
    ("ViT-L-14", "openai"): {
        "flickr30k": {"text_to_image": (0.6496, 0.8724, 0.9204), "image_to_text": (0.8520, 0.9740, 0.9920)},
        "coco": {"text_to_image": (0.3651, 0.6106, 0.7113), "image_to_text": (0.5634, 0.7938, 0.8660)},
    },
    ("ViT-L-14", "laion2b_s32b_b82k"): {
        "flickr30k": {"text_to_image": (0.7552, 0.9286, 0.9594), "image_to_text": (0.8950, 0.9870, 0.9940)},
        "coco": {"text_to_image": (0.4651, 0.7108, 0.7980), "image_to_text": (0.6336, 0.8398, 0.9074)},
    },
    ("ViT-H-14", "laion2b_s32b_b79k"): {
        "flickr30k": {"text_to_image": (0.7764, 0.9418, 0.9660), "image_to_text": (0.9070, 0.9920, 0.9970)},
        "coco": {"text_to_image": (0.4948, 0.7338, 0.8151), "image_to_text": (0.6592, 0.8606, 0.9188)},
    },
}

# The Karpathy test splits, known by their images, not by their size (Flickr8k's test split also has 1,000 images
# and 5,000 captions): (image count, BLAKE2b-128 of the sorted image ids, ``image_id``), taken from
# ../shared/data/annotations (tests/test_evaluate.py checks them). Reference numbers only compare on these.
FULL_SPLITS = {"flickr30k": (1000, "fd158b941f7417c9971977051dfcb930"),
               "coco": (5000, "0929282f60ce5ba08c744391c9f52e7c")}
_COCO_NAME = re.compile(r"(?:COCO_[A-Za-z]+\d*_)?0*(\d+)")


def image_id(path: str) -> str:
    """An image's identity in a split: its file name without extension, COCO's numeric id for COCO's names
    ("COCO_val2014_000000391895.jpg" and "391895.jpg" are the same image)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    found = _COCO_NAME.fullmatch(stem)
    return str(int(found.group(1))) if found else stem


def split_fingerprint(image_paths) -> tuple[int, str]:
    ids = sorted({image_id(p) for p in image_paths})
    return len(ids), hashlib.blake2b(",".join(ids).encode(), digest_size=16).hexdigest()


def is_full_split(dataset: str, image_paths) -> bool:
    """Whether these are exactly the images of that dataset's Karpathy test split."""
    return dataset in FULL_SPLITS and split_fingerprint(image_paths) == FULL_SPLITS[dataset]


def lookup(model: str, pretrained: str | None, dataset: str) -> dict[str, Triple] | None:
    return RESULTS.get((model, pretrained or ""), {}).get(dataset)


def find(model: str, tag: str | None, dataset: str, full_split: bool,
         from_file: bool = False) -> tuple[dict[str, Triple] | None, str | None]:
    """(published numbers, None), or (None, why there are none to compare with)."""
    if dataset not in FULL_SPLITS:
        return None, f"none are recorded for a dataset named {dataset!r} (only {', '.join(FULL_SPLITS)})"
    if from_file:
        return None, ("the model came from a checkpoint file not tied to a tag; if it is one of open_clip's "
                      "published checkpoints, name its tag with --pretrained-as TAG")
    found = lookup(model, tag, dataset)
    if found is None:
        known = ", ".join(f"{m}/{t}" for m, t in RESULTS)
        return None, f"none are recorded for {model} ({tag or 'random weights'}); recorded: {known}"
    if not full_split:
        return None, (f"they are for the images of {dataset}'s Karpathy test split, and this run used other images "
                      "(a subset, another split or another dataset)")
    return found, None
