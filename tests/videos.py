"""Real video files for the tests, written with PyAV itself (FFmpeg's encoders inside its wheel): shared COCO
photos held for known intervals, so each still has a known right answer and moment."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import COCO_MINI

CONTAINER_CODECS = {".mp4": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9", ".mov": "libx265", ".avi": "mpeg4"}


def coco_photos(n: int, start: int = 0) -> list[Path]:
    found = sorted((COCO_MINI / "train2017").glob("*.jpg"))[start : start + n]
    assert len(found) == n, f"{COCO_MINI / 'train2017'} holds {len(found) + start} photos, not {start + n}"
    return found


def write_video(
    path: Path,
    shots: Sequence[tuple[Path | Image.Image, float]],
    fps: int = 10,
    size: tuple[int, int] = (160, 120),
    codec: str | None = None,
    rotation: int = 0,
    creation_time: str | None = None,
    movflags: str | None = None,
) -> Path:
    """A video of ``shots`` (a photo and how many seconds it is held), each frame the photo scaled to ``size``
    (width, height) with a little noise so the encoder sees real motion. ``rotation``: the display matrix's
    counter-clockwise turn; the stored frames are then turned the other way, so a player shows them upright."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or CONTAINER_CODECS[path.suffix]
    stored = (size[1], size[0]) if rotation in (90, 270) else size
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": movflags} if movflags else None) as out:
        if creation_time:
            out.metadata["creation_time"] = creation_time
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = stored
        stream.pix_fmt = "yuv420p"
        if codec == "libx265":
            stream.options = {"x265-params": "log-level=none"}
        if rotation:
            stream.set_display_rotation(rotation)
        for photo, seconds in shots:
            image = photo if isinstance(photo, Image.Image) else Image.open(photo).convert("RGB")
            upright = np.asarray(image.convert("RGB").resize(size), np.int16)
            for _ in range(round(seconds * fps)):
                noisy = np.clip(upright + rng.integers(-3, 4, upright.shape), 0, 255).astype(np.uint8)
                frame = Image.fromarray(noisy)
                if rotation:  # stored turned clockwise, shown turned back
                    frame = frame.rotate(-rotation, expand=True)
                for packet in stream.encode(av.VideoFrame.from_image(frame)):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def stills(path: Path, every: float, offset: float) -> list[tuple[float, Image.Image]]:
    """Frames of a video as a user's screenshots would be: (time, picture) at ``offset`` s into every ``every`` s."""
    import av

    found = []
    with av.open(str(path)) as video:
        for frame in video.decode(video=0):
            t = float(frame.time)
            if len(found) * every + offset <= t:
                found.append((t, frame.to_image()))
    return found
