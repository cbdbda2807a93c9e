"""Videos as moments: the frames worth embedding, read from a streamed decode. The only module that imports PyAV.

PyAV carries FFmpeg's libraries in its wheels, so every video FFmpeg reads (H.264, HEVC phone videos, VP9, AV1,
MPEG-4...) is read with no ``ffmpeg`` binary on the machine. Frames are decoded one at a time and dropped unless
sampled, so memory does not grow with a video's length: a frame is kept where the picture changes (a cut, a new
scene), and at least every ``VideoConfig.interval`` seconds, at most ``max_frames`` per video.

A video that cannot be read whole is refused, never half-indexed: truncated, damaged, unsupported, audio-only and
empty files raise ``VideoSkipped`` with the reason, which the run records as the file's skip reason.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .config import VideoConfig
from .inference.preprocess import shortest_to
from .records import Frames

THUMB = (32, 18)  # the grey thumbnail scene changes are measured on (width, height)
# Frames may stop this much before the container's stated duration (a last GOP, an audio track a little longer)
# before the video counts as truncated: beyond one sampling interval's worth.
_END_SLACK = 2.0
_ROTATIONS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


class VideoSkipped(Exception):
    """A video that cannot be indexed; the message is the reason recorded for it."""


@dataclass(frozen=True)
class VideoInfo:
    duration: float | None  # seconds, from the container; None when it does not say
    codec: str
    taken_at: float | None  # the container's creation_time (phones write it), epoch seconds


@dataclass(frozen=True)
class Moment:
    time: float  # seconds from the start
    image: Image.Image  # RGB, upright, its shorter side at least the model's input side where the video allows


class Sampler:
    """Decides which decoded frames are kept (pure: tested on its own). A frame is kept when it is the first,
    when ``interval`` seconds passed since the last kept one, or when the picture changed by ``scene_change``
    and ``min_gap`` seconds passed.

    A video of known length keeps at most ``max_frames``, spread over all of it: the periodic frames' interval
    stretches so that they use at most half of them, and the scene changes share the other half in step with the
    time (a shaky first minute cannot spend what the rest of the video needs)."""

    def __init__(self, cfg: VideoConfig, duration: float | None):
        self.cfg, self.duration = cfg, duration
        self.interval = max(cfg.interval, 2 * (duration or 0.0) / cfg.max_frames)
        self.kept = 0
        self._changes = 0
        self._last_time: float | None = None
        self._last_thumb: np.ndarray | None = None

    def wants(self, time: float, thumb: np.ndarray) -> bool:
        if self.kept >= self.cfg.max_frames:
            return False
        if self._last_time is not None:
            since = time - self._last_time
            if since < self.interval:
                if since < self.cfg.min_gap or not self._change_allowed(time):
                    return False
                if change(self._last_thumb, thumb) < self.cfg.scene_change:
                    return False
                self._changes += 1
        self._last_time, self._last_thumb, self.kept = time, thumb, self.kept + 1
        return True

    def _change_allowed(self, time: float) -> bool:
        """Whether a scene change may still be kept at ``time``: within its share of the budget so far."""
        if not self.duration:
            return True
        share = self.cfg.max_frames / 2
        return self._changes < min(share, share * max(0.0, time) / self.duration + min(8, share))


_PLANAR_8BIT = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}


def thumbnail(frame) -> np.ndarray:
    """A THUMB-sized grey picture of a decoded frame. For the usual 8-bit YUV frames it is read straight from the
    luma plane (2x2 points per cell, averaged): a scaler pass cost 1.3 ms a 1080p frame, a third of decoding it."""
    width, height = THUMB
    if frame.format.name not in _PLANAR_8BIT or frame.width < 2 * width or frame.height < 2 * height:
        return frame.reformat(width=width, height=height, format="gray").to_ndarray()
    plane = frame.planes[0]
    luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: frame.height, : frame.width]
    rows = (np.arange(2 * height) + 0.5) * frame.height / (2 * height)
    cols = (np.arange(2 * width) + 0.5) * frame.width / (2 * width)
    points = luma[rows.astype(np.intp)][:, cols.astype(np.intp)].astype(np.uint16)
    return (points.reshape(height, 2, width, 2).sum(axis=(1, 3)) // 4).astype(np.uint8)


def change(before: np.ndarray | None, after: np.ndarray) -> float:
    """How much the picture changed, 0..1: the mean absolute difference of two grey thumbnails."""
    if before is None:
        return 1.0
    return float(np.abs(before.astype(np.int16) - after.astype(np.int16)).mean()) / 255.0


class VideoReader:
    """One video file opened for sampling: ``info`` at once, then ``moments()`` streamed. Use as a context manager.
    ``side``: the model's input side; sampled frames are scaled down to it (their shorter side), never up.
    ``size``: the picture's (width, height) as shown (rotation applied), known once the first frame is decoded."""

    def __init__(self, path: str, cfg: VideoConfig = VideoConfig(), side: int = 224):
        self.path, self.cfg, self.side = path, cfg, side
        self._container = _open(path)
        try:
            self._stream = _video_stream(self._container)
            self.info = self._read_info()
            self.size: tuple[int, int] | None = None
        except BaseException:
            self._container.close()
            raise

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def _read_info(self) -> VideoInfo:
        stream = self._stream
        return VideoInfo(_duration(self._container, stream), stream.codec_context.name, _creation_time(self._container))

    def moments(self) -> Iterator[Moment]:
        """The sampled frames in order, each scaled and upright. Raises VideoSkipped when the video turns out
        damaged or truncated part-way (before its last frame is reached nothing is final: the caller stores a
        video only once this has run to its end)."""
        import av

        stream = self._stream
        stream.thread_type = "AUTO"  # frame and slice threads: FFmpeg decodes on every core
        if self.cfg.keyframes_only:
            stream.codec_context.skip_frame = "NONKEY"
        sampler = Sampler(self.cfg, self.info.duration)
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        last, count = 0.0, 0
        try:
            for count, frame in enumerate(self._container.decode(stream), start=1):
                last = frame.time if frame.time is not None else (count - 1) / rate
                if self.size is None:
                    turned = _rotation_of_frame(frame) in (90, 270)
                    self.size = (frame.height, frame.width) if turned else (frame.width, frame.height)
                thumb = thumbnail(frame)
                if sampler.wants(last, thumb):
                    yield Moment(max(0.0, last), self._picture(frame))
        except av.error.FFmpegError as exc:
            raise VideoSkipped(f"damaged video: decoding stopped at {last:.1f} s ({_said(exc)})") from None
        if count == 0:
            raise VideoSkipped(f"no frame of its video stream ({self.info.codec}) could be decoded: damaged or empty")
        self._check_complete(last)

    def _check_complete(self, last: float) -> None:
        duration = self.info.duration
        start = float(self._stream.start_time * self._stream.time_base) if self._stream.start_time else 0.0
        slack = max(_END_SLACK, self.cfg.interval if self.cfg.keyframes_only else 0.0)
        if duration is not None and last - start + slack < duration:
            raise VideoSkipped(
                f"truncated: its frames stop at {last - start:.1f} s of the {duration:.1f} s it says it lasts "
                "(an unfinished copy or download?); the next index run tries it again once it changes"
            )

    def _picture(self, frame) -> Image.Image:
        width, height = frame.width, frame.height
        return _upright(
            frame, *(shortest_to(width, height, self.side) if min(width, height) > self.side else (width, height))
        )


def _open(path: str):
    import av

    try:
        if os.path.getsize(path) == 0:
            raise VideoSkipped("empty file (0 bytes)")
        return av.open(path, metadata_errors="ignore")
    except VideoSkipped:
        raise
    except av.error.FFmpegError as exc:
        raise VideoSkipped(f"not a video FFmpeg can read: damaged, truncated or not a video ({_said(exc)})") from None
    except OSError as exc:
        raise VideoSkipped(f"unreadable: {exc.strerror or exc}") from None


def _video_stream(container):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise VideoSkipped(f"no video stream (it holds {', '.join(kinds)}: an audio-only file?)")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise VideoSkipped(f"unsupported video codec ({stream.codec.name if stream.codec else 'unknown'})")
    return stream


def _said(exc: Exception) -> str:
    """FFmpeg's own words for an error, without the file name PyAV appends."""
    return getattr(exc, "strerror", None) or str(exc)


def _duration(container, stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None


def _rotation_of_frame(frame) -> int:
    """The counter-clockwise turn (0, 90, 180, 270) a player applies, from the frame's display matrix (phones
    record upright video sideways and say so there; FFmpeg's decoders pass it on to each frame)."""
    return _quarter(float(frame.rotation or 0))


def _quarter(degrees: float) -> int:
    return int(round(degrees / 90.0)) % 4 * 90


def _creation_time(container) -> float | None:
    text = container.metadata.get("creation_time")
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    stamp = when.timestamp()
    return stamp if stamp > 0 else None  # 1904-01-01 (QuickTime's zero) means "not set"


@dataclass(frozen=True)
class EmbeddedVideo:
    info: VideoInfo
    size: tuple[int, int]  # (width, height) as shown
    frames: Frames
    duration: float  # the container's, else the last frame's time

    @property
    def mean(self) -> np.ndarray:
        """The video's one vector (what duplicates and ``id:`` terms compare): its frames' mean, normalised."""
        total = self.frames.vectors.mean(axis=0)
        norm = float(np.linalg.norm(total))
        return (total / norm if norm > 0 else total).astype(np.float32)


def embed(encoder, path: str, cfg: VideoConfig, batch_size: int) -> EmbeddedVideo:
    """Sample and embed one video with ``encoder`` (``embed_images`` of PIL images, ``image_size``), frames
    ``batch_size`` per pass while the decode goes on: memory holds one batch of frames, never the video."""
    times: list[float] = []
    vectors: list[np.ndarray] = []
    with VideoReader(path, cfg, encoder.image_size) as reader:
        batch: list[Moment] = []
        for moment in reader.moments():
            batch.append(moment)
            if len(batch) == batch_size:
                vectors.append(encoder.embed_images([m.image for m in batch]))
                times += [m.time for m in batch]
                batch = []
        if batch:
            vectors.append(encoder.embed_images([m.image for m in batch]))
            times += [m.time for m in batch]
        size = reader.size
        assert size is not None, "moments() raises before a video with no decoded frame gets here"
        frames = Frames(np.array(times, np.float64), np.concatenate(vectors).astype(np.float32))
        return EmbeddedVideo(reader.info, size, frames, reader.info.duration or times[-1])


def poster(path: str, at: float, side: int) -> Image.Image:
    """The frame shown ``at`` seconds into a video (the first at or after it; the last one when ``at`` is past the
    end), upright, its longer side at most ``side``: a search result's picture of the moment it found."""
    import av

    container = _open(path)
    try:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        if at > 0 and stream.time_base:
            try:
                container.seek(int(at / stream.time_base), stream=stream, backward=True)  # the keyframe before it
            except av.error.FFmpegError:
                container.seek(0)
        chosen = None
        try:
            for frame in container.decode(stream):
                chosen = frame
                if frame.time is None or frame.time >= at - 1e-3:
                    break
        except av.error.FFmpegError as exc:
            if chosen is None:
                raise VideoSkipped(f"damaged video: no frame at {at:.1f} s ({_said(exc)})") from None
        if chosen is None:
            raise VideoSkipped(f"no frame of its video stream could be decoded at {at:.1f} s")
        width, height = chosen.width, chosen.height
        scale = min(1.0, side / max(width, height))
        return _upright(chosen, max(1, round(width * scale)), max(1, round(height * scale)))
    finally:
        container.close()


def _upright(frame, width: int, height: int) -> Image.Image:
    """The frame as an RGB picture of (width, height) before its turn, then turned as a player shows it."""
    image = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_image()
    turn = _ROTATIONS.get(_rotation_of_frame(frame))
    return image.transpose(turn) if turn is not None else image
