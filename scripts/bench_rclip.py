"""imgsearch against rclip, side by side on one folder and one architecture, as whole processes.

    python -m venv /tmp/rclip-venv && /tmp/rclip-venv/bin/pip install rclip==3.3.0
    python scripts/bench_rclip.py --rclip /tmp/rclip-venv/bin/rclip --runs 5

rclip 3.3 runs CLIP ViT-B-32-256 (datacomp_s34b_b86k) in ONNX Runtime, loading ``visual.onnx`` and
``textual.onnx`` from ``$RCLIP_DATADIR/ViT-B-32-256-datacomp_s34b_b86k/``. Pretrained weights cannot be downloaded
everywhere (nor here), so this script builds ViT-B-32-256 with imgsearch's seeded random weights, which cost the
same compute, and exports them into a private ``$RCLIP_DATADIR``: both tools then run the same architecture with
the same weights. imgsearch's own one-time export (its cache, per model) is made in a warm-up run, not timed.

Timed, interleaved, each a fresh process, --runs times (median, min, max):
- index: rclip indexes the folder it is run in and then answers a query (it has no index-only mode), from an
  empty database; imgsearch indexes into an empty collection, then a query is run as a second process. Both
  totals are whole processes; images/s counts the folder's images over the indexing process alone (rclip's:
  its index+query process minus its median query process).
- query: a text query against the indexed folder (rclip --no-indexing; imgsearch query --server off).
The top-10 of one query is compared between the tools: with the same weights and preprocessing they should
agree closely (imgsearch's default backend on CPU may differ from rclip's fp32 by its quality guard's margin).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "coco_mini"
ARCH = "ViT-B-32-256"
RCLIP_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"
QUERY = "a dog on a beach"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rclip", default=shutil.which("rclip"), help="the rclip executable (pip install rclip==3.3.0)")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--backend", default=None, help="imgsearch --backend for indexing [default: its auto]")
    return p.parse_args(argv)


def export_for_rclip(datadir: Path) -> None:
    """ViT-B-32-256 with imgsearch's seeded random weights, as the ONNX files and vocabulary rclip loads."""
    import torch

    from imgsearch.clip.models import load_model
    from imgsearch.config import ModelConfig
    from imgsearch.inference.tokenizer import vocab_path

    model = load_model(ModelConfig(ARCH, None, device="cpu"), "cpu").model
    folder = datadir / RCLIP_SUBDIR
    folder.mkdir(parents=True)
    (datadir / "tokenizer").mkdir()
    shutil.copy(vocab_path(), datadir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz")

    class Tower(torch.nn.Module):
        def __init__(self, text: bool):
            super().__init__()
            self.model, self.text = model, text

        def forward(self, x):
            return self.model.encode_text(x) if self.text else self.model.encode_image(x)

    samples = {"textual": torch.zeros((2, 77), dtype=torch.int64), "visual": torch.zeros((2, 3, 256, 256))}
    with torch.enable_grad(), warnings.catch_warnings():  # as imgsearch's exporter: no fused attention fast path
        warnings.simplefilter("ignore")
        for name, sample in samples.items():
            torch.onnx.export(
                Tower(name == "textual"),
                (sample,),
                str(folder / f"{name}.onnx"),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "n"}, "output": {0: "n"}},
                opset_version=17,
                dynamo=False,
            )


def timed(cmd: list[str], env: dict, cwd: Path | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


def top_paths(output: str) -> list[str]:
    """Result file names, in order, from either tool's output: score<TAB>path lines (rclip quotes the path and
    prints a header first)."""
    rows = [line.split("\t", 1) for line in output.splitlines() if "\t" in line]
    return [os.path.basename(path.strip().strip('"')) for score, path in rows if score.strip() != "score"]


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.rclip:
        sys.exit("rclip not found: pip install rclip==3.3.0 (in its own venv) and pass --rclip PATH")
    imgsearch = [sys.executable, "-m", "imgsearch"]
    with tempfile.TemporaryDirectory(prefix="bench-rclip-") as tmp:
        tmp = Path(tmp)
        photos = tmp / "photos"
        shutil.copytree(args.images, photos)
        n = sum(1 for p in photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        datadir = tmp / "rclip-data"
        start = time.perf_counter()
        export_for_rclip(datadir)
        print(f"exported {ARCH} (seeded random weights) for rclip in {time.perf_counter() - start:.1f} s")
        env = {**os.environ, "RCLIP_DATADIR": str(datadir)}
        backend = ["--backend", args.backend] if args.backend else []
        index_cmd = lambda coll: [
            *imgsearch,
            "index",
            str(photos),
            "--index",
            str(coll),
            "--model",
            ARCH,  # noqa: E731
            "--pretrained",
            "none",
            "-q",
            *backend,
        ]
        query_cmd = lambda coll: [*imgsearch, "query", QUERY, "--index", str(coll), "--server", "off"]  # noqa: E731
        rclip_index = [args.rclip, "-t", "10", QUERY]
        rclip_query = [args.rclip, "--no-indexing", "-t", "10", QUERY]

        warm, out = timed(index_cmd(tmp / "warm"), env)  # imgsearch's one-time export of this model (cached)
        print(f"imgsearch warm-up index (one-time export included): {warm:.1f} s")
        timed(rclip_index, env, cwd=photos)
        times: dict[str, list[float]] = {
            k: [] for k in ("rclip index+query", "rclip query", "imgsearch index", "imgsearch query")
        }
        outputs = {}
        for run in range(args.runs):
            (datadir / "db.sqlite3").unlink(missing_ok=True)
            coll = tmp / f"coll{run}"
            t, outputs["rclip"] = timed(rclip_index, env, cwd=photos)
            times["rclip index+query"].append(t)
            times["imgsearch index"].append(timed(index_cmd(coll), env)[0])
            t, _ = timed(rclip_query, env, cwd=photos)
            times["rclip query"].append(t)
            t, outputs["imgsearch"] = timed(query_cmd(coll), env)
            times["imgsearch query"].append(t)
        backend_line = timed([*imgsearch, "info", "--index", str(tmp / "coll0")], env)[1]

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{n} images, {args.runs} runs interleaved, {os.cpu_count()} cores, {ARCH}")
    print(f"{'':28} {'median s':>9} {'min':>6} {'max':>6}")
    for name, t in times.items():
        print(f"{name:28} {statistics.median(t):9.2f} {min(t):6.2f} {max(t):6.2f}")
    rclip_index_only = med["rclip index+query"] - med["rclip query"]
    print(
        f"\nindexing images/s: rclip {n / rclip_index_only:.1f} (index+query minus query), "
        f"imgsearch {n / med['imgsearch index']:.1f}; imgsearch / rclip = {rclip_index_only / med['imgsearch index']:.2f}x"
    )
    print(
        f"index+query as processes: rclip {med['rclip index+query']:.2f} s, imgsearch "
        f"{med['imgsearch index'] + med['imgsearch query']:.2f} s (two processes)"
    )
    print(f"cold query: imgsearch / rclip time = {med['imgsearch query'] / med['rclip query']:.2f}")
    ours, theirs = top_paths(outputs["imgsearch"]), top_paths(outputs["rclip"])
    print(f"top-10 overlap for {QUERY!r}: {len(set(ours) & set(theirs))}/10")
    print("imgsearch " + " ".join(line.strip() for line in backend_line.splitlines() if line.startswith("backend")))


if __name__ == "__main__":
    main()
