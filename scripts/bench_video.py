"""Videos: indexing speed against real time, memory against length, and whether a still finds its moment.

    python scripts/bench_video.py --model ViT-B-32 --pretrained none

Offline, ``--pretrained none`` (random weights) costs exactly the compute of the trained model. The videos are
made once with PyAV (libx264, High profile, CABAC and B-frames, as cameras write them) from the shared COCO photos,
each held for a shot of 3-12 s while the picture pans slowly, and kept in ``--cache``:

- a ``--minutes`` (10) long 1080p 30 fps H.264 video: decoding alone (every frame; keyframes only), sampling
  (decoding plus the scene-change thumbnails and the sampled frames' pictures), and the whole ``index`` run
  (model loaded first, then timed: decode and embedding as the run reports them), as a multiple of real time;
  frames sampled per minute; and which shots each decoding mode leaves without a frame;
- memory: the peak resident memory of a process indexing a 1-minute and a 1-hour 640x360 video, each in a fresh
  process with the model's export already cached;
- stills: ``--stills`` frames of the long video at random times, as screenshots are, searched for: how many find
  a moment in their own shot, and within one sampling interval of their time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import imgsearch
from imgsearch.config import IndexingConfig, ModelConfig, VideoConfig
from imgsearch.video import VideoReader

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_mini" / "train2017"


def make_video(path: Path, seconds: float, size: tuple[int, int], fps: int, seed: int = 0) -> list[float]:
    """Shots of 3-12 s of COCO photos panning slowly, H.264; returns the shots' start times (kept beside it)."""
    import av

    shots_file = path.with_suffix(".shots.json")
    if path.exists() and shots_file.exists():
        return json.loads(shots_file.read_text())
    rng = np.random.default_rng(seed)
    photos = sorted(PHOTOS.glob("*.jpg"))
    starts, t, n = [], 0.0, 0
    tmp = path.with_suffix(".part" + path.suffix)
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        while round((seconds - t) * fps) > 0:
            length = min(float(rng.uniform(3, 12)), seconds - t)
            frames = round(length * fps)
            starts.append(t)
            wide = Image.open(photos[n % len(photos)]).convert("RGB").resize((size[0] + 2 * fps, size[1]))
            for i in range(frames):  # a pan of 2 px a frame
                shift = int(2 * fps * i / max(1, frames))
                frame = av.VideoFrame.from_image(wide.crop((shift, 0, shift + size[0], size[1])))
                for packet in stream.encode(frame):
                    out.mux(packet)
            t += frames / fps
            n += 1
        for packet in stream.encode():
            out.mux(packet)
    os.replace(tmp, path)
    shots_file.write_text(json.dumps(starts))
    return starts


def decode_only(path: Path, keyframes: bool) -> tuple[float, int]:
    import av

    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if keyframes:
            stream.codec_context.skip_frame = "NONKEY"
        count = sum(1 for _ in container.decode(stream))
    return time.perf_counter() - started, count


def sampled(path: Path, cfg: VideoConfig, side: int) -> tuple[float, list[float], list[Image.Image]]:
    started = time.perf_counter()
    with VideoReader(str(path), cfg, side) as reader:
        moments = list(reader.moments())
    return time.perf_counter() - started, [m.time for m in moments], [m.image for m in moments]


EPS = 1e-3  # shot starts are sums of frame durations: a frame at a cut may read a hair before it


def missed(starts: list[float], times: list[float], end: float) -> int:
    """Shots with no sampled frame inside them."""
    bounds = list(zip(starts, starts[1:] + [end]))
    return sum(1 for a, b in bounds if not any(a - EPS <= t < b - EPS for t in times))


def peak_memory(video: Path, model: ModelConfig) -> float:
    """Peak RSS (MB) of a fresh process indexing ``video`` alone: its VmHWM (ru_maxrss would not do: Linux keeps
    the forking parent's across exec)."""
    code = (
        "import sys, tempfile, imgsearch; from imgsearch.config import ModelConfig;"
        f"m = ModelConfig(name={model.name!r}, pretrained={model.pretrained!r}, device='cpu');"
        "c = imgsearch.open(tempfile.mkdtemp() + '/c', model=m); r = c.index_folder(sys.argv[1]);"
        "assert r.added == 1, r;"
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)"
    )
    folder = tempfile.mkdtemp()
    os.symlink(video, Path(folder) / video.name)
    out = subprocess.run([sys.executable, "-c", code, folder], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--stills", type=int, default=60)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "imgsearch-bench-video")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--only-memory", action="store_true")
    args = parser.parse_args()
    model = ModelConfig(
        name=args.model, pretrained=None if args.pretrained == "none" else args.pretrained, device="cpu"
    )
    args.cache.mkdir(parents=True, exist_ok=True)
    if not args.only_memory:
        speed_and_stills(args, model)
    if not args.skip_memory:
        short = args.cache / "memory-1min-360p.mp4"
        hour = args.cache / "memory-60min-360p.mp4"
        make_video(short, 60, (640, 360), 15, seed=2)
        make_video(hour, 3600, (640, 360), 15, seed=3)
        one, sixty = peak_memory(short, model), peak_memory(hour, model)
        print(
            f"memory: peak RSS {one:.0f} MB indexing 1 minute, {sixty:.0f} MB indexing 1 hour ({sixty - one:+.0f} MB)"
        )
    print(f"({resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB peak in this process)")


def speed_and_stills(args, model: ModelConfig) -> None:
    seconds = args.minutes * 60
    made = time.perf_counter()
    long = args.cache / f"long-{args.minutes:g}min-1080p.mp4"
    starts = make_video(long, seconds, (1920, 1080), 30)
    print(
        f"video: {long} ({long.stat().st_size / 1e6:.0f} MB, {len(starts)} shots; ready in {time.perf_counter() - made:.0f} s)"
    )

    for keyframes in (False, True):
        spent, count = decode_only(long, keyframes)
        label = "keyframes only" if keyframes else "every frame"
        print(
            f"decode, {label}: {count} frames in {spent:.1f} s = {count / spent:.0f} frames/s = {seconds / spent:.1f}x real time"
        )

    side, pictures = 224, []
    for cfg in (VideoConfig(), VideoConfig(keyframes_only=True)):
        spent, times, images = sampled(long, cfg, side)
        pictures = pictures or images
        print(
            f"sample ({'keyframes only' if cfg.keyframes_only else 'every frame'}): {len(times)} frames "
            f"({len(times) / args.minutes:.0f} a minute) in {spent:.1f} s = {seconds / spent:.1f}x real time; "
            f"shots without a frame: {missed(starts, times, seconds)} of {len(starts)}"
        )

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        os.symlink(long, folder / long.name)
        with imgsearch.open(Path(tmp) / "c", model=model) as collection:
            collection.embedder.load()  # the model (and a first run's export) before the clock starts
            encoder = collection._image_file_encoder(IndexingConfig()).load()
            started = time.perf_counter()
            encoder.embed_images(pictures)
            embedding = time.perf_counter() - started
            print(
                f"embedding alone ({encoder.backend}): {len(pictures)} frames in {embedding:.1f} s "
                f"({len(pictures) / embedding:.0f} frames/s)"
            )
            report = collection.index_folder(folder, IndexingConfig())
            run = report.seconds - report.model_seconds
            frames = collection._store_for().count("frames")
            print(
                f"index, whole run ({report.backend}): {frames} frames, {run:.1f} s = {seconds / run:.1f}x real time "
                f"(model load before it: {report.model_seconds:.1f} s)"
            )
            rng = np.random.default_rng(1)
            at = np.sort(rng.uniform(0, seconds - 1, args.stills))
            interval = max(VideoConfig().interval, 2 * seconds / VideoConfig().max_frames)
            same_shot = near = 0
            import av

            with av.open(str(long)) as container:
                wanted = list(at)
                for frame in container.decode(video=0):
                    if wanted and frame.time >= wanted[0]:
                        t = wanted.pop(0)
                        best = collection.search(frame.to_image(), k=1)[0]
                        shot = max(s for s in starts if s - EPS <= t)
                        following = min([s for s in starts if s - EPS > t] + [seconds])
                        same_shot += best.time is not None and shot - EPS <= best.time < following - EPS
                        near += best.time is not None and abs(best.time - t) <= interval
                    if not wanted:
                        break
            print(
                f"stills: {same_shot} of {args.stills} ({same_shot / args.stills:.0%}) found a moment in their own "
                f"shot; {near} ({near / args.stills:.0%}) within one sampling interval ({interval:.0f} s)"
            )


if __name__ == "__main__":
    main()
