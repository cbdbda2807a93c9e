"""Published retrieval results, to show beside measured ones.

Source: open_clip's docs/openclip_retrieval_results.csv (github.com/mlfoundations/open_clip, the version of commit
f862f86), produced with LAION's CLIP_benchmark on the Karpathy test splits (Flickr30K 1K, MSCOCO 5K). "Image
retrieval" there is our text_to_image, "text retrieval" our image_to_text. Values are (R@1, R@5, R@10) as fractions.
A ``-quickgelu`` row there is the same weights as its tag on the plain architecture (the tag carries QuickGELU).
Families that table does not hold (MobileCLIP, MobileCLIP2, SigLIP2) have no row here.
"""

from __future__ import annotations

import hashlib
import os
import re

Triple = tuple[float, float, float]

SOURCE = "open_clip docs/openclip_retrieval_results.csv (CLIP_benchmark, Karpathy test splits)"


def _row(flickr_t2i: Triple, flickr_i2t: Triple, coco_t2i: Triple, coco_i2t: Triple) -> dict:
    return {
        "flickr30k": {"text_to_image": flickr_t2i, "image_to_text": flickr_i2t},
        "coco": {"text_to_image": coco_t2i, "image_to_text": coco_i2t},
    }


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
    ("ViT-B-32", "metaclip_fullcc"): _row(
        (0.6510, 0.8766, 0.9274), (0.8080, 0.9530, 0.9730), (0.3806, 0.6411, 0.7430), (0.5518, 0.7890, 0.8650)
    ),
    ("ViT-B-16", "dfn2b"): _row(
        (0.6912, 0.8982, 0.9406), (0.8540, 0.9780, 0.9860), (0.4339, 0.6924, 0.7882), (0.6038, 0.8310, 0.8946)
    ),
    ("ViT-B-16", "metaclip_fullcc"): _row(
        (0.7072, 0.9082, 0.9454), (0.8550, 0.9740, 0.9890), (0.4134, 0.6718, 0.7696), (0.5936, 0.8058, 0.8784)
    ),
    ("ViT-L-14", "dfn2b"): _row(
        (0.7546, 0.9280, 0.9608), (0.8960, 0.9850, 0.9930), (0.4856, 0.7381, 0.8237), (0.6560, 0.8584, 0.9120)
    ),
    ("ViT-H-14", "dfn5b"): _row(
        (0.8012, 0.9526, 0.9738), (0.9280, 0.9940, 0.9990), (0.5391, 0.7805, 0.8553), (0.7230, 0.9024, 0.9452)
    ),
    ("EVA02-B-16", "merged2b_s8b_b131k"): _row(
        (0.7146, 0.9114, 0.9468), (0.8600, 0.9660, 0.9880), (0.4215, 0.6686, 0.7629), (0.5874, 0.8056, 0.8812)
    ),
    ("convnext_base_w", "laion2b_s13b_b82k"): _row(
        (0.7214, 0.9152, 0.9538), (0.8770, 0.9800, 0.9930), (0.4285, 0.6805, 0.7770), (0.6058, 0.8324, 0.8954)
    ),
    ("ViT-B-16-SigLIP", "webli"): _row(
        (0.7468, 0.9230, 0.9562), (0.8910, 0.9800, 0.9930), (0.4778, 0.7244, 0.8100), (0.6574, 0.8542, 0.9126)
    ),
    ("coca_ViT-B-32", "laion2b_s13b_b90k"): _row(
        (0.6336, 0.8566, 0.9144), (0.8160, 0.9570, 0.9740), (0.3618, 0.6136, 0.7176), (0.5456, 0.7788, 0.8556)
    ),
    ("RN50", "openai"): _row(
        (0.5736, 0.8318, 0.9004), (0.8000, 0.9500, 0.9790), (0.2854, 0.5291, 0.6459), (0.4884, 0.7278, 0.8212)
    ),
    ("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k"): _row(
        (0.6448, 0.8628, 0.9168), (0.8270, 0.9640, 0.9780), (0.3778, 0.6344, 0.7348), (0.5354, 0.7798, 0.8640)
    ),
    ("nllb-clip-base-siglip", "v1"): _row(
        (0.6922, 0.9002, 0.9424), (0.7920, 0.9500, 0.9820), (0.4315, 0.6913, 0.7852), (0.5116, 0.7776, 0.8628)
    ),
    ("ViT-H-14", "laion2b_s32b_b79k"): {
        "flickr30k": {"text_to_image": (0.7764, 0.9418, 0.9660), "image_to_text": (0.9070, 0.9920, 0.9970)},
        "coco": {"text_to_image": (0.4948, 0.7338, 0.8151), "image_to_text": (0.6592, 0.8606, 0.9188)},
    },
}

# The Karpathy test splits, known by their images, not by their size (Flickr8k's test split also has 1,000 images
# and 5,000 captions): (image count, BLAKE2b-128 of the sorted image ids, ``image_id``), taken from
# ../shared/data/annotations (tests/test_evaluate.py checks them). Reference numbers only compare on these.
FULL_SPLITS = {
    "flickr30k": (1000, "fd158b941f7417c9971977051dfcb930"),
    "coco": (5000, "0929282f60ce5ba08c744391c9f52e7c"),
}
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


def find(
    model: str, tag: str | None, dataset: str, full_split: bool, from_file: bool = False
) -> tuple[dict[str, Triple] | None, str | None]:
    """(published numbers, None), or (None, why there are none to compare with)."""
    if dataset not in FULL_SPLITS:
        return None, f"none are recorded for a dataset named {dataset!r} (only {', '.join(FULL_SPLITS)})"
    if from_file:
        return None, (
            "the model came from a checkpoint file not tied to a tag; if it is one of open_clip's "
            "published checkpoints, name its tag with --pretrained-as TAG"
        )
    found = lookup(model, tag, dataset)
    if found is None:
        known = ", ".join(f"{m}/{t}" for m, t in RESULTS)
        return None, f"none are recorded for {model} ({tag or 'random weights'}); recorded: {known}"
    if not full_split:
        return None, (
            f"they are for the images of {dataset}'s Karpathy test split, and this run used other images "
            "(a subset, another split or another dataset)"
        )
    return found, None
