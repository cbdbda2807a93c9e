"""Cold start: one `imgsearch query` as a whole new process, as a user runs it, against importing torch.

    python scripts/bench_cold_query.py --model ViT-B-32 --pretrained none --runs 5

It indexes --images into a temporary collection first (which exports the model's ONNX towers to the cache,
once per model), then times, interleaved, each run a fresh process:
- `imgsearch query TEXT` (auto: the cached ONNX text tower, no torch import), and (random weights only) the same
  with the text tower run at 77 tokens, as before exports cut texts (bench_serve.full_length_cache);
- `imgsearch query TEXT --backend torch` (imports torch and open_clip, builds the model: the old path);
- `python -c "import torch, open_clip"` (the floor of any torch path);
- `imgsearch query --image PHOTO` (auto);
- `python -c "import numpy, sqlalchemy, faiss, onnxruntime, PIL.Image, typer"`: the libraries a text query
  imports, the floor under any query in this process design.
Each figure is the median wall time of --runs processes, with min and max. The processes run with Python's
bytecode cache on (as an installed package runs: pip compiles it; PYTHONDONTWRITEBYTECODE is dropped from their
environment), warmed by one untimed query.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "coco_mini"
FLOOR = ("numpy", "sqlalchemy", "faiss", "onnxruntime", "PIL.Image", "typer")  # what a text query imports


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="laion2b_s34b_b79k", help="tag, checkpoint file, or 'none'")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--index", type=Path, default=None, help="an existing collection to query instead of a new one")
    return p.parse_args(argv)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "imgsearch", *args]


def wall(cmd: list[str], env: dict | None = None) -> float:
    env = {k: v for k, v in (env or os.environ).items() if k != "PYTHONDONTWRITEBYTECODE"}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return time.perf_counter() - start


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imgsearch-cold-") as tmp:
        index = args.index or Path(tmp) / "collection"
        if args.index is None:
            start = time.perf_counter()
            subprocess.run(
                cli(
                    "index",
                    str(args.images),
                    "--index",
                    str(index),
                    "--model",
                    args.model,
                    "--pretrained",
                    args.pretrained,
                    "-q",
                ),
                check=True,
                stdout=subprocess.DEVNULL,
            )
            print(
                f"indexed {args.images} with {args.model} in {time.perf_counter() - start:.1f} s "
                "(ONNX export included on a model's first run)"
            )
        photo = next(p for p in sorted(args.images.rglob("*.jpg")))
        cases = {
            "imgsearch query TEXT (auto: ONNX, no torch)": cli("query", "a dog on a beach", "--index", str(index)),
            "imgsearch query TEXT --backend torch": cli(
                "query", "a dog on a beach", "--index", str(index), "--backend", "torch"
            ),
            'python -c "import torch, open_clip"': [sys.executable, "-c", "import torch, open_clip"],
            "imgsearch query --image PHOTO (auto)": cli("query", "--image", str(photo), "--index", str(index)),
            'python -c "import imgsearch.cli"': [sys.executable, "-c", "import imgsearch.cli"],
            "python -c 'import numpy, sqlalchemy, ...'": [sys.executable, "-c", f"import {', '.join(FLOOR)}"],
        }
        envs = {}
        if args.pretrained == "none":  # the export found by its random weights' key, as bench_serve does
            from bench_serve import full_length_cache

            before = "imgsearch query TEXT, 77 tokens (before)"
            cases[before] = cases["imgsearch query TEXT (auto: ONNX, no torch)"]
            envs[before] = full_length_cache(args.model, Path(tmp))
        times: dict[str, list[float]] = {name: [] for name in cases}
        wall(cases["imgsearch query TEXT (auto: ONNX, no torch)"])  # page cache warm, as for a user's 2nd query
        for _ in range(args.runs):
            for name, cmd in cases.items():
                times[name].append(wall(cmd, envs.get(name)))
    print(f"\n{args.runs} processes each, interleaved; {os.cpu_count()} cores; model {args.model}")
    print(f"{'':48} {'median s':>9} {'min':>6} {'max':>6}")
    for name, t in times.items():
        print(f"{name:48} {statistics.median(t):9.2f} {min(t):6.2f} {max(t):6.2f}")


if __name__ == "__main__":
    main()
