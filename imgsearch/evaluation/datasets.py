"""Readers for image-text retrieval test sets.

Formats (detected from the file): Karpathy ``dataset_*.json`` (test split kept), COCO ``captions_*.json``,
BLIP-style JSON lists (``[{"image": ..., "caption": [...]}]``) and CLIP_benchmark CSV (``image,caption``).
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError

FORMATS = "Karpathy dataset_*.json, COCO captions_*.json, BLIP-style JSON list, CLIP_benchmark CSV (image,caption)"
Pairs = list[tuple[str, list[str]]]  # (image path relative to the images folder, its captions)


@dataclass(frozen=True)
class RetrievalDataset:
    name: str
    image_paths: tuple[str, ...]  # resolved paths (or as written, when images were not checked)
    captions: tuple[str, ...]
    caption_image: np.ndarray  # (n_captions,) index into image_paths of each caption's image

    @property
    def n_images(self) -> int:
        return len(self.image_paths)

    @property
    def n_captions(self) -> int:
        return len(self.captions)


# The Karpathy test protocol scores 5 captions per image; some files hold more for a few images
# (COCO's widely used dataset_coco.json has ~25,010 test captions), which would shift published numbers.
PROTOCOL_CAPTIONS = {"coco": 5, "flickr30k": 5}


def load_dataset(
    kind: str, annotations: str | os.PathLike, images: str | os.PathLike, check_images: bool = True
) -> RetrievalDataset:
    """Read annotations and find each image under ``images``; raises DatasetError on any gap.

    For coco and flickr30k only the first 5 captions of each image are kept, as the protocol does.
    """
    pairs = read_pairs(Path(annotations))
    if not pairs:
        raise DatasetError(f"{annotations} holds no image/caption pairs")
    if kind in PROTOCOL_CAPTIONS:
        pairs = [(image, caps[: PROTOCOL_CAPTIONS[kind]]) for image, caps in pairs]
    paths = [p for p, _ in pairs]
    if check_images:
        paths = resolve_images(paths, Path(images))
    captions = [c for _, caps in pairs for c in caps]
    owner = np.repeat(np.arange(len(pairs)), [len(caps) for _, caps in pairs])
    return RetrievalDataset(kind, tuple(paths), tuple(captions), owner)


def read_pairs(path: Path) -> Pairs:
    """(image, captions) pairs from any supported file; any flaw is a one-line DatasetError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot read annotations {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not a text file (not UTF-8); supported: {FORMATS}") from None
    if not text.lstrip().startswith(("[", "{")):
        return _read_csv(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    try:
        return _read_json(data, path)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise DatasetError(f"unexpected structure in {path}: {_describe(exc)}; supported: {FORMATS}") from None


def _read_json(data, path: Path) -> Pairs:
    if isinstance(data, list):
        return _read_blip(data)
    if isinstance(data, dict) and "annotations" in data:
        return _read_coco(data)
    if isinstance(data, dict) and data.get("images") and "sentences" in data["images"][0]:
        return _read_karpathy(data, path)
    raise DatasetError(f"unknown annotation format in {path}; supported: {FORMATS}")


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"an entry has no {exc.args[0]!r} field"
    return f"{type(exc).__name__}: {exc}"


def _grouped(rows) -> Pairs:
    """(image, caption) rows -> pairs, images in first-seen order."""
    groups: dict[str, list[str]] = defaultdict(list)
    for image, caption in rows:
        groups[image].append(caption)
    return list(groups.items())


def _read_csv(text: str) -> Pairs:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
        raise DatasetError(f"CSV annotations need an 'image,caption' header; supported: {FORMATS}")
    return _grouped((row["image"], row["caption"]) for row in reader)


def _read_blip(items: list) -> Pairs:
    def rows():
        for item in items:
            captions = item["caption"] if isinstance(item["caption"], list) else [item["caption"]]
            yield from ((item["image"], c) for c in captions)

    return _grouped(rows())


def _read_coco(data: dict) -> Pairs:
    names = {img["id"]: img["file_name"] for img in data["images"]}

    def rows():
        for i, a in enumerate(data["annotations"]):
            if a["image_id"] not in names:
                raise DatasetError(
                    f'annotation #{i} (id {a.get("id")}) names image_id {a["image_id"]}, which is not in "images"'
                )
            yield names[a["image_id"]], a["caption"].strip()

    return _grouped(rows())


def _read_karpathy(data: dict, path: Path) -> Pairs:
    images = data["images"]
    test = [img for img in images if img.get("split") == "test"]
    if not test:
        splits = sorted({str(img.get("split")) for img in images})
        raise DatasetError(
            f"{path} has no image in the 'test' split (splits: {', '.join(splits)}); the Karpathy "
            "protocol evaluates the test split: pass the dataset_*.json that has one, or a BLIP-style "
            "JSON or CSV file listing exactly the images to evaluate"
        )
    return [
        (os.path.join(img.get("filepath", ""), img["filename"]), [s["raw"] for s in img["sentences"]]) for img in test
    ]


def resolve_images(paths: list[str], root: Path) -> list[str]:
    """Each path under root as written, else by file name anywhere under root."""
    if not root.is_dir():
        raise DatasetError(f"images folder not found: {root}; pass --images DIR with the dataset's images")
    by_name: dict[str, str] | None = None
    found, missing = [], []
    for rel in paths:
        direct = root / rel
        if direct.is_file():
            found.append(str(direct))
            continue
        by_name = by_name if by_name is not None else _files_by_name(root)
        match = by_name.get(os.path.basename(rel))
        (found.append(match) if match else missing.append(rel))
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(paths)} images are missing under {root}, e.g. {', '.join(missing[:5])}; "
            "point --images at the folder that holds the dataset's images"
        )
    return found


def _files_by_name(root: Path) -> dict[str, str]:
    names: dict[str, str] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            names.setdefault(name, os.path.join(dirpath, name))
    return names
