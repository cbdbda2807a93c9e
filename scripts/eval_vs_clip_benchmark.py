"""`imgsearch eval` against LAION's clip_benchmark on the same photos, captions and weights: hit counts side by side.

The shared COCO photos (../shared/data/coco_mini) with their five human captions each, ViT-B-32 with seeded random
weights (no pretrained weights can be downloaded here; the computation is the same). imgsearch runs with its
defaults (`imgsearch eval` as a user types it); clip_benchmark 1.6.2's ``zeroshot_retrieval.evaluate`` runs with
``amp=False``: its ``--no_amp``, fp32, the only precision in which both are deterministic on a CPU (its default
autocast there is bf16). clip_benchmark counts a hit for a query whose relevant item is in the top k; imgsearch
scores ties by their expected value (docs/evaluation.md), which equals it when nothing ties.

    pip install --no-deps clip_benchmark==1.6.2     # scripts/setup.sh installs it
    .venv/bin/python scripts/eval_vs_clip_benchmark.py [--images 239] [--model ViT-B-32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COCO_MINI = ROOT.parent / "shared" / "data" / "coco_mini"
KS = (1, 5, 10)


def annotations(folder: Path, n: int) -> Path:
    """A BLIP-style annotation file of the first ``n`` shared photos and their captions."""
    entries = json.loads((COCO_MINI / "coco_mini_captions.json").read_text())[:n]
    path = folder / "coco_mini.json"
    path.write_text(json.dumps([{"image": e["image"], "caption": e["caption"]} for e in entries]))
    return path


def imgsearch_hits(model: str, file: Path, env: dict) -> tuple[dict, dict]:
    """(hits per direction and k, the report) from `imgsearch eval` with its defaults."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgsearch",
            "eval",
            "coco_mini",
            "--images",
            str(COCO_MINI),
            "--annotations",
            str(file),
            "--model",
            model,
            "--pretrained",
            "none",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    report = json.loads(proc.stdout)
    hits = {}
    for direction, n in (("text_to_image", report["n_captions"]), ("image_to_text", report["n_images"])):
        exact = report[direction]["exact"]
        hits[direction] = {k: exact[f"r{k}"] * n for k in KS}
    return hits, report


def clip_benchmark_hits(model_name: str, file: Path) -> dict:
    """Hits per direction and k from clip_benchmark's own retrieval code, with the same seeded weights."""
    import open_clip
    import torch
    from clip_benchmark.metrics import zeroshot_retrieval
    from PIL import Image

    entries = json.loads(file.read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # as imgsearch seeds random weights (clip/models._seeded_if_random)
        model, _, transform = open_clip.create_model_and_transforms(model_name, pretrained=None)
    model.eval()

    class Photos(torch.utils.data.Dataset):
        def __len__(self):
            return len(entries)

        def __getitem__(self, i):
            image = Image.open(COCO_MINI / entries[i]["image"]).convert("RGB")  # as clip_benchmark's datasets do
            return transform(image), entries[i]["caption"]

    def collate(batch):
        return torch.stack([b[0] for b in batch]), [b[1] for b in batch]

    loader = torch.utils.data.DataLoader(Photos(), batch_size=64, collate_fn=collate)
    metrics = zeroshot_retrieval.evaluate(
        model, loader, open_clip.get_tokenizer(model_name), "cpu", amp=False, recall_k_list=list(KS)
    )
    n_captions, n_images = sum(len(e["caption"]) for e in entries), len(entries)
    return {
        "text_to_image": {k: round(metrics[f"image_retrieval_recall@{k}"] * n_captions) for k in KS},
        "image_to_text": {k: round(metrics[f"text_retrieval_recall@{k}"] * n_images) for k in KS},
    }


def compare(model: str = "ViT-B-32", n: int = 239) -> tuple[dict, dict, dict]:
    """(imgsearch's hits, clip_benchmark's hits, imgsearch's report)."""
    with tempfile.TemporaryDirectory() as tmp:
        file = annotations(Path(tmp), n)
        env = dict(os.environ, IMGSEARCH_CACHE=str(Path(tmp) / "cache"))
        ours, report = imgsearch_hits(model, file, env)
        return ours, clip_benchmark_hits(model, file), report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=239)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args()
    ours, theirs, report = compare(args.model, args.images)
    print(
        f"{args.model}, random weights, {report['n_images']} photos, {report['n_captions']} captions; imgsearch "
        f"{report['backend']} on {report['device']}, clip_benchmark fp32 (amp off)"
    )
    print(f"{'direction':14}{'k':>4}{'imgsearch':>12}{'clip_benchmark':>16}")
    for direction in ("text_to_image", "image_to_text"):
        for k in KS:
            print(f"{direction:14}{k:>4}{ours[direction][k]:>12.2f}{theirs[direction][k]:>16}")
    same = all(abs(ours[d][k] - theirs[d][k]) < 1e-6 for d in ours for k in KS)
    print("identical hit counts" if same else "hit counts differ")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
