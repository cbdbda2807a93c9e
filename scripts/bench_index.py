"""Indexing throughput: how close `Collection.index_folder` gets to the model's own speed.

    python scripts/bench_index.py --model ViT-B-32 --pretrained none --device cpu

Offline, ``--pretrained none`` (random weights) is the only choice; it costs exactly the compute of
the trained model, so the throughput is representative. Everything is measured in this one
process, side by side, so the ratios hold even on a noisy machine; each figure is the median of
``--repeat`` runs (odd repeats run the steps in reverse order, so slow drift evens out).

- end to end: images/s of ``index_folder`` over --images into a fresh temporary collection: scan,
  decoding + preprocessing in DataLoader workers (their start-up included), forward passes, SQLite
  writes, FAISS add and save. Excluded: imports, model creation and warm-up (a first tiny
  index run of one image, then one forward pass of a full batch of zeros, before the clock starts).
- model only: images/s of ``Embedder.encode_preprocessed`` alone over the same images in the same
  batch size, decoded and preprocessed beforehand and already on the device: the pipeline's ceiling.
  On a CUDA GPU, end to end decodes JPEGs on the GPU (nvJPEG, ``IndexingConfig.decode="auto"``), with the
  batch size the library probes, and all cores but one read files.
- end-to-end / model-only: the headline. 1.0 means decoding and storage hide completely behind the model.
- decode only: images/s of load_image + preprocess in one process (what one worker does).
- workers=N / workers=0: what overlapping decoding (in workers) with the model buys.
- peak memory, read after the first end-to-end run: ru_maxrss of this process, and of its largest
  finished child (a DataLoader worker; it counts pages it shares copy-on-write with this process),
  and torch.cuda.max_memory_allocated on a GPU.

Backends side by side (``--backends torch-fp32 torch-bf16 onnx-fp32``): for each, model-only and end-to-end
images/s (decoding on the library's threads, as a run does) with the ratio to torch fp32, end-to-end / model-only,
images/s with workers=0 (decoding and the model in turn), and the quality guard on the same photos and their
captions: cosine of image and text vectors to torch fp32 (min and mean), and the overlap of each caption's top-10
images with torch fp32's. Backends are run in turn, in reverse order on odd repeats.

Quick smoke run with the tests' tiny architecture (32-px images, one layer):

    mkdir -p /tmp/tiny && python -c "import json, sys; sys.path.insert(0, 'tests'); \\
        from conftest import TINY_CONFIG; json.dump(TINY_CONFIG, open('/tmp/tiny/imgsearch-tiny.json', 'w'))"
    IMGSEARCH_MODEL_CONFIGS=/tmp/tiny python scripts/bench_index.py --model imgsearch-tiny --pretrained none
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import imgsearch
from imgsearch.clip.models import resolve_device
from imgsearch.config import IndexingConfig, ModelConfig
from imgsearch.images import load_image, scan
from imgsearch.records import FileEntry

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "coco_mini"
GIB = 1 << 30


@dataclass
class Figures:
    """Seconds per run of each measurement (one entry per --repeat), and memory after the first run."""

    images: int = 0
    pipeline: list[float] = field(default_factory=list)  # index_folder, --workers
    serial: list[float] = field(default_factory=list)  # index_folder, workers=0
    model: list[float] = field(default_factory=list)  # encode_preprocessed only
    decode: list[float] = field(default_factory=list)  # load_image + preprocess, one process
    memory: dict[str, int | None] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of photos (default: %(default)s)")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture (default: %(default)s)")
    parser.add_argument(
        "--pretrained",
        default="laion2b_s34b_b79k",
        help="pretrained tag, checkpoint file, or 'none' (random weights); default: %(default)s",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (default: %(default)s)")
    parser.add_argument("--precision", default="auto", help="auto, fp32, fp16 or bf16 (default: %(default)s)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per forward pass (default: the library's: 64 on a CPU, probed on a GPU)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding workers (default: the library's, min(8, CPU count))"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the median is printed")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=BACKENDS,
        default=None,
        help="compare these backends side by side (and their quality) instead",
    )
    return parser.parse_args(argv)


BACKENDS = {
    "torch-fp32": ("torch", "fp32"),
    "torch-bf16": ("torch", "bf16"),
    "onnx-fp32": ("onnx", "fp32"),
    "onnx-int8": ("onnx-int8", "auto"),
    "openvino": ("openvino", "auto"),
    "openvino-int8": ("openvino-int8", "auto"),
}


def fresh_collection(
    folder: Path, model: ModelConfig, warm_dir: Path, batch_size: int, torch_model: bool = True
) -> imgsearch.Collection:
    """A new collection whose model is loaded and warmed, so the clock can start at index_folder. Without
    ``torch_model`` only what its index runs use is loaded (an export's tower, where the backend runs one)."""
    engine = imgsearch.open(folder, model=model)
    engine.index_folder(warm_dir, IndexingConfig(workers=0))  # loads the model, imports faiss, creates the DB
    if torch_model:
        side = engine.embedder.image_size
        engine.embedder.encode_preprocessed(torch.zeros(batch_size, 3, side, side))  # first full-size batch
    return engine


def time_index(engine, images: Path, settings: IndexingConfig) -> tuple[int, float]:
    """(images embedded, wall seconds) of one index_folder run."""
    start = time.perf_counter()
    report = engine.index_folder(images, settings)
    seconds = time.perf_counter() - start
    for skipped in report.skipped:
        print(f"warning: skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    return report.embedded, seconds


def time_model_only(embedder, paths: list[str], batch_size: int) -> tuple[float, float]:
    """(decode seconds, forward seconds): decode + preprocess everything first, then time the model alone."""
    preprocess = embedder.preprocess
    start = time.perf_counter()
    tensors = [preprocess(load_image(p, min_side=embedder.image_size).image) for p in paths]
    decode = time.perf_counter() - start
    batches = [torch.stack(tensors[i : i + batch_size]).to(embedder.device) for i in range(0, len(tensors), batch_size)]
    start = time.perf_counter()
    for batch in batches:
        embedder.encode_preprocessed(batch)  # returns numpy, so a GPU has finished when it returns
    return decode, time.perf_counter() - start


def peak_memory(device: str) -> dict[str, int | None]:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return {
        "main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale,
        "cuda": torch.cuda.max_memory_allocated() if device.startswith("cuda") else None,
    }


def measure(tmp: Path, args: argparse.Namespace, model: ModelConfig, paths: list[str], workers: int) -> Figures:
    """Each repeat runs the three measurements, in reverse order on odd repeats so that drift evens out.

    Every step gets its own fresh, warmed collection; memory is read after the first (workers=N) run.
    """
    warm_dir = tmp / "warm"
    warm_dir.mkdir()
    shutil.copy(paths[0], warm_dir)
    figures, order = Figures(), ["pipeline", "model", "serial"]
    for run in range(args.repeat):
        for step in order if run % 2 == 0 else order[::-1]:
            engine = fresh_collection(tmp / f"{step}-{run}", model, warm_dir, args.batch_size)
            if step == "model":
                decode, forward = time_model_only(engine.embedder, paths, args.batch_size)
                figures.decode.append(decode)
                figures.model.append(forward)
            else:
                settings = IndexingConfig(
                    batch_size=args.batch_size,
                    gpu_batch_size=args.batch_size,
                    workers=workers if step == "pipeline" else 0,
                )
                figures.images, seconds = time_index(engine, args.images, settings)
                getattr(figures, step).append(seconds)
            if not figures.memory:
                figures.memory = peak_memory(engine.embedder.device)
            engine.close()
    return figures


def rate(images: int, seconds: list[float]) -> tuple[float, float]:
    """(images/s, seconds) of the median run."""
    median = statistics.median(seconds)
    return images / median, median


def print_figures(figures: Figures, device: str, workers: int) -> None:
    n = figures.images
    rows = [
        (f"end to end   index_folder, workers={workers}", rate(n, figures.pipeline)),
        ("model only   encode_preprocessed, same batches", rate(n, figures.model)),
        ("decode only  load_image + preprocess, 1 process", rate(n, figures.decode)),
        ("end to end   index_folder, workers=0", rate(n, figures.serial)),
    ]
    print(f"{'':48} {'images/s':>9} {'seconds':>8}")
    for label, (per_second, seconds) in rows:
        print(f"{label:48} {per_second:9.2f} {seconds:8.2f}")
    print()
    headline = rows[0][1][0] / rows[1][1][0]
    overlap = rows[0][1][0] / rows[3][1][0]
    print(f"{'end-to-end / model-only':48} {headline:9.2f}   (1.00 = the pipeline runs at the model's speed)")
    print(f"{f'workers={workers} / workers=0, end to end':48} {overlap:9.2f}x  (what decoding in workers buys)")
    print()
    memory = figures.memory
    cuda = f"{memory['cuda'] / GIB:.2f} GiB" if memory["cuda"] is not None else f"n/a ({device})"
    print(f"peak memory after the first end-to-end run (workers={workers}), model and warm-up included:")
    print(f"  main process RSS      {memory['main'] / GIB:.2f} GiB")
    print(
        f"  largest child RSS     {memory['children'] / GIB:.2f} GiB  "
        "(a DataLoader worker, pages shared with the main process included)"
    )
    print(f"  CUDA max allocated    {cuda}")


def captions_for(images: Path) -> list[str]:
    """The shared photos' human captions when the folder has them (coco_mini), else a few fixed texts."""
    import json

    found = sorted(images.glob("*captions*.json"))
    if found:
        return [c for item in json.loads(found[0].read_text()) for c in item["caption"]]
    return ["a photo of a dog", "a red car", "people on a beach", "a plate of food", "a city street at night"]


def compare_backends(tmp: Path, args: argparse.Namespace, model: ModelConfig, paths: list[str]) -> None:
    """Model-only and end-to-end images/s of each backend, and its vectors against torch fp32's."""
    from dataclasses import replace

    import numpy as np

    warm_dir = tmp / "warm"
    warm_dir.mkdir()
    shutil.copy(paths[0], warm_dir)
    names = list(dict.fromkeys(["torch-fp32", *args.backends]))
    configs = {n: replace(model, backend=BACKENDS[n][0], precision=BACKENDS[n][1]) for n in names}
    engines = {n: fresh_collection(tmp / n, configs[n], warm_dir, args.batch_size) for n in names}
    reference = engines["torch-fp32"].embedder
    tensors = [reference.preprocess(load_image(p, min_side=reference.image_size).image) for p in paths]
    batches = [torch.stack(tensors[i : i + args.batch_size]) for i in range(0, len(tensors), args.batch_size)]
    texts = captions_for(args.images)
    model_s: dict[str, list[float]] = {n: [] for n in names}
    e2e_s: dict[str, list[float]] = {n: [] for n in names}  # decoding on the library's threads, as a run does
    serial_s: dict[str, list[float]] = {n: [] for n in names}  # workers=0: decoding, then the model, in turn
    vectors: dict[str, tuple] = {}
    for run in range(args.repeat):
        for n in names if run % 2 == 0 else names[::-1]:
            embedder = engines[n].embedder
            start = time.perf_counter()
            images = np.concatenate([embedder.encode_preprocessed(b) for b in batches])
            model_s[n].append(time.perf_counter() - start)
            vectors[n] = (images, embedder.embed_texts(texts))
            for workers, times in ((args.workers, e2e_s), (0, serial_s)):  # as `imgsearch index` runs (no torch
                # on an export's path), its tower loaded and warmed by a first run of one image
                folder = tmp / f"{n}-e2e-{run}-{workers}"
                with fresh_collection(folder, configs[n], warm_dir, args.batch_size, torch_model=False) as engine:
                    settings = IndexingConfig(
                        batch_size=args.batch_size, gpu_batch_size=args.batch_size, workers=workers
                    )
                    times[n].append(time_index(engine, args.images, settings)[1])
    n_images = len(paths)
    ref_model, ref_e2e = rate(n_images, model_s["torch-fp32"])[0], rate(n_images, e2e_s["torch-fp32"])[0]
    ref_img, ref_txt = vectors["torch-fp32"]
    ref_top = np.argsort(-(ref_txt @ ref_img.T), axis=1)[:, :10]
    print(
        f"{'backend':12} {'ran as':12} {'model img/s':>11} {'x fp32':>7} {'e2e img/s':>10} {'x fp32':>7} "
        f"{'e2e/model':>9} {'workers=0':>9} {'img cos min/mean':>17} {'txt cos min/mean':>17} {'top-10 overlap':>15}"
    )
    for n in names:
        img, txt = vectors[n]
        icos, tcos = np.sum(img * ref_img, axis=1), np.sum(txt * ref_txt, axis=1)
        top = np.argsort(-(txt @ img.T), axis=1)[:, :10]
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, ref_top)])
        m, e, serial = (rate(n_images, s[n])[0] for s in (model_s, e2e_s, serial_s))
        print(
            f"{n:12} {engines[n].embedder.backend:12} {m:11.2f} {m / ref_model:7.2f} {e:10.2f} {e / ref_e2e:7.2f} "
            f"{e / m:9.2f} {serial:9.2f} "
            f"{icos.min():8.5f}/{icos.mean():.5f} {tcos.min():8.5f}/{tcos.mean():.5f} {overlap:15.3f}"
        )
    print(
        f"\n{len(texts)} captions ranked against {n_images} images for the top-10 overlap; end to end with the "
        f"library's decoding (workers={'default' if args.workers is None else args.workers}), and images/s with "
        "workers=0 (decoding, then the model, in turn); the ONNX export (once per model, cached) happened before the "
        "clock started"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "no pretrained weights loaded" notice
    pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    model = ModelConfig(args.model, pretrained, args.device, args.precision)
    paths = [e.path for e in scan(args.images) if isinstance(e, FileEntry)]
    if not paths:
        sys.exit(f"no images found under {args.images}; pass --images DIR")
    device = resolve_device(args.device)
    workers = IndexingConfig(workers=args.workers).resolved_workers(device.startswith("cuda"))
    if args.batch_size is None:  # the library's choice, used for the model-only batches too
        from imgsearch.clip.embedder import Embedder

        args.batch_size = Embedder(model).load().gpu_batch if device.startswith("cuda") else IndexingConfig.batch_size
    print(f"indexing benchmark: {len(paths)} images in {args.images}")
    print(
        f"model {model.label} on {device}, precision {args.precision}, batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}, decode workers {workers}"
    )
    print(f"median of {args.repeat} run(s) each, all in this process; imports, model load and warm-up excluded\n")
    with tempfile.TemporaryDirectory(prefix="imgsearch-bench-") as tmp:
        if args.backends:
            return compare_backends(Path(tmp), args, model, paths)
        figures = measure(Path(tmp), args, model, paths, workers)
    print_figures(figures, device, workers)


if __name__ == "__main__":
    main()
