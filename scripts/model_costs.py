"""Image-tower compute per image of the models `imgsearch models` lists: GFLOPs (2 per multiply-add) counted by
torch's FlopCounterMode on the meta device (no weights are made), at each model's input size. Prints the table that
imgsearch/catalog.py holds (tests/test_catalog.py re-counts two of them).

    .venv/bin/python scripts/model_costs.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def image_gflops(name: str) -> float:
    """The image tower's GFLOPs for one image, counted on the meta device."""
    import logging

    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from imgsearch import architectures

    logging.getLogger().setLevel(logging.ERROR)
    config = open_clip.get_model_config(name)
    with torch.device("meta"):  # the image tower alone: a text tower from the hub would need its config downloaded
        tower = open_clip.model._build_vision_tower(
            config["embed_dim"], config["vision_cfg"], config.get("quick_gelu", False)
        )
    side = architectures.input_side(config)
    counter = FlopCounterMode(display=False)
    with counter:
        tower.eval()(torch.empty(1, 3, side, side, device="meta"))
    return counter.get_total_flops() / 1e9


def main() -> None:
    from imgsearch.catalog import CHOICES

    for name in dict.fromkeys(c.name for c in CHOICES):
        print(f"{name:28} {image_gflops(name):8.2f} GFLOPs")


if __name__ == "__main__":
    main()
