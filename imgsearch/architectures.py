"""open_clip's model architectures, read from its JSON configs without importing open_clip (and so torch).

open_clip describes each architecture as data: ``model_configs/NAME.json`` inside its package, plus the folder
named by $IMGSEARCH_MODEL_CONFIGS (custom or test architectures), as ``clip/models.register_extra_model_configs``
registers it. Reading the files directly answers "what size, what tokenizer" in milliseconds: ``imgsearch models``
and a collection's checks need no model. Names with a schema (``hf-hub:``, ``local-dir:``) are not known here; the
callers then ask open_clip itself.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path

from .config import MODEL_CONFIGS_ENV


def _folders() -> list[Path]:
    spec = importlib.util.find_spec("open_clip")  # locates the package; runs none of it
    found = [Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])] if spec else []
    extra = os.environ.get(MODEL_CONFIGS_ENV)
    return found + ([Path(extra)] if extra else [])


@functools.lru_cache(maxsize=8)
def _read_all(folders: tuple[Path, ...]) -> dict[str, dict]:
    configs: dict[str, dict] = {}
    for folder in folders:
        files = [folder] if folder.is_file() else sorted(folder.glob("*.json")) if folder.is_dir() else []
        for file in files:
            try:
                config = json.loads(file.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(config, dict) and all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
                configs[file.stem] = config
    return configs


def architecture(name: str) -> dict | None:
    """The architecture config of an open_clip model name, as open_clip reads it (None when unknown here)."""
    found = _read_all(tuple(_folders())).get(name)
    return json.loads(json.dumps(found)) if found is not None else None  # a copy: callers may change it


def names() -> list[str]:
    return sorted(_read_all(tuple(_folders())))


def input_side(config: dict) -> int:
    """The longer side of the image tower's input."""
    size = config.get("vision_cfg", {}).get("image_size", 224)
    return int(max(size)) if isinstance(size, (list, tuple)) else int(size)


def hf_text(config: dict) -> tuple[str | None, str | None]:
    """(tokenizer repo, text tower repo) on the Hugging Face hub, for models whose text side comes from there."""
    text = config.get("text_cfg", {})
    return text.get("hf_tokenizer_name"), text.get("hf_model_name")
