"""Configuration: frozen dataclasses with commented defaults.

Change a value with ``dataclasses.replace``; collections persist the model part
as JSON in their manifest so a collection always reopens with its own model.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import BadInputError

# Where collections live unless --collection / IMGSEARCH_INDEX says otherwise: the platform's per-user data folder
# (see data_dir), so that a collection is found from any working directory.
COLLECTION_ENV = "IMGSEARCH_INDEX"
SERVER_ENV = "IMGSEARCH_SERVER"  # the URL of a running `imgsearch serve` for queries ("off": never use one)
TOKEN_ENV = "IMGSEARCH_TOKEN"  # the token a server requires (and the default of `serve --token`)
DEFAULT_NAME = "default"
# A directory of extra open_clip model configs (JSON), e.g. custom or tiny test architectures.
MODEL_CONFIGS_ENV = "IMGSEARCH_MODEL_CONFIGS"

# Cosine at or above which two images are near-duplicates by default (see docs/search.md for what it catches).
DUPLICATE_THRESHOLD = 0.95

# What can run a model on a CPU (``ModelConfig.backend``): "auto" chooses (imgsearch/encoders.py); "torch" (fp32,
# or bf16 weights), "onnx" (ONNX Runtime fp32, from the export cached once per model), "onnx-int8" (its image tower
# quantized to int8), "openvino" (the exported image tower, bf16 where the CPU has it), "openvino-int8" (its MLP
# layers quantized to int8, calibrated once: what auto runs on CPUs with VNNI when it passes its check) force one.
BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# How image files are decoded for indexing (``IndexingConfig.decode``).
DECODE_MODES = ("auto", "fast", "reference", "tensor")


def check_choice(what: str, value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else a BadInputError naming them."""
    if value not in allowed:
        raise BadInputError(f"unknown {what} {value!r}; use one of {', '.join(allowed)}")
    return value


def check_backend(name: str) -> str:
    return check_choice("backend", name, BACKENDS)


# Camera RAW files, by extension: LibRaw (rawpy) reads them all, preferring the camera's embedded preview.
RAW_EXTENSIONS = frozenset(
    {".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2", ".pef", ".srw"}
    | {".x3f", ".3fr", ".iiq", ".erf", ".mrw", ".raw", ".rwl", ".kdc", ".dcr", ".mos"}
)
# Files that are rendered photos, as a camera or a phone writes them beside its RAW files.
RENDERED_EXTENSIONS = frozenset({".jpg", ".jpeg", ".heic", ".heif"})
IMAGE_EXTENSIONS = (
    frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif"})
    | RAW_EXTENSIONS
)
# Videos: decoded through FFmpeg's libraries (PyAV), never a binary (imgsearch/video.py).
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"})
# What an index run reads.
INDEXED_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS


@dataclass(frozen=True)
class ModelConfig:
    # ViT-B-32 trained on LAION-2B: a good speed/quality balance, ~600 MB download, cached by open_clip.
    # "" when opening a collection means "its own model's name" (e.g. to point at a moved checkpoint).
    name: str = "ViT-B-32"
    # A pretrained tag known to open_clip, a path to a local checkpoint file (works offline),
    # or None for random weights (only useful for tests).
    pretrained: str | None = "laion2b_s34b_b79k"
    # "auto" picks cuda when available, else cpu; or name a torch device ("cpu", "cuda:1").
    device: str = "auto"
    # "auto" = fp16 autocast on cuda; on cpu bf16 weights where the CPU has native bf16 (AVX512-BF16/AMX) and the
    # model passes the quality check, else fp32. Or "fp32", "fp16", "bf16".
    precision: str = "auto"
    # What runs the model on a CPU: "auto", or one of BACKENDS forced (see imgsearch/encoders.py for what auto picks).
    backend: str = "auto"
    # For a checkpoint file: the open_clip tag whose weights it holds, so that it runs with that tag's preprocessing
    # and activation (clip/models.recipe_for); "none": the architecture's defaults. None: recognised where it can be
    # (its Hugging Face cache folder, its SHA-256), else the one recipe all the architecture's published weights
    # share; a file of an architecture whose weights differ (ViT-B-32: OpenAI's QuickGELU, LAION's GELU) is refused.
    pretrained_as: str | None = None

    def __post_init__(self) -> None:
        check_backend(self.backend)
        check_choice("precision", self.precision, PRECISIONS)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def label(self) -> str:
        return f"{self.name} ({self.pretrained or 'random weights'})"

    def same_model(self, other: ModelConfig) -> bool:
        """Whether both produce the same embeddings (device, precision and backend aside)."""
        return (self.name, self.pretrained, self.pretrained_as) == (other.name, other.pretrained, other.pretrained_as)


@dataclass(frozen=True)
class VectorIndexConfig:
    # Below this many vectors an exact (Flat) index is both exact and fast (~5 ms at 50k x 512).
    # Past it the index is rebuilt as IVF; 50k also leaves >= 39 training points per list.
    ivf_threshold: int = 50_000
    # Inverted lists searched per query: higher is more exact and slower.
    nprobe: int = 32
    # Lists = ivf_lists_factor * sqrt(N). Measured at 1M (docs/performance.md): 2*sqrt(N) = 2000 lists build in
    # 25 s with recall@10 0.994 at nprobe 32 (1.7 ms/query); 4*sqrt(N) took 64 s for 0.968 (1.0 ms/query).
    ivf_lists_factor: float = 2.0
    # Training sample: at most this many vectors per list (faiss warns below 39 and past 256). Measured at 1M
    # (scripts/bench_reindex.py, docs/performance.md): 39 keeps recall@10 at nprobe 32 above 0.95 and trains
    # 3.3x fewer points than 128.
    train_per_list: int = 39
    # k-means iterations when training IVF (faiss's default is 25). Measured at 1M: 10 keeps the same recall@10
    # (0.994 vs 0.994 at 2000 lists) and trains 2.4x faster.
    kmeans_iterations: int = 10
    # Rebuild IVF (re-train, new nlist) when the collection grows or shrinks this much since training.
    retrain_ratio: float = 2.0
    # Past this many vectors the index is compact: IVF with product-quantised codes of ``compact_bytes``, which
    # keeps ~72 bytes per vector in RAM (code + id) instead of 2 KB; every query's top ``rerank`` candidates are
    # then re-scored with their full vectors (a float16 file beside the index, halfvectors.py; the store where the
    # file is not trusted). Chosen by scripts/bench_scale.py (docs/scale.md).
    compact_threshold: int = 2_000_000
    # Bytes of product-quantisation code per vector: 2 * compact_bytes slices of the vector, a 4-bit code each
    # (faiss's fast-scan layout; see index._trained_compact).
    compact_bytes: int = 64
    # A compact index has at most this many lists (2*sqrt(N) below it): assigning a vector to its list then costs
    # the same at any N, so building grows linearly; longer lists are cheap to scan as codes.
    compact_max_lists: int = 4096
    # Candidates per query a compact index re-scores exactly (at least k).
    rerank: int = 200


# Folders no one wants in a photo search: NAS thumbnails, package trees, trash. Hidden ones (.git,
# .Trash-1000, .thumbnails) are skipped anyway. Globs, matched against names and relative paths.
DEFAULT_EXCLUDES = (
    "@eaDir",
    "#recycle",
    "#snapshot",
    "$RECYCLE.BIN",
    "node_modules",
    "lost+found",
    "System Volume Information",
    "Trash",
)


@dataclass(frozen=True)
class WatchConfig:
    """How `imgsearch watch` and `serve --watch` follow folders (watching.py)."""

    # Seconds a file must go without events (and keep its size and modification time) before it is indexed:
    # long enough for a copy's next write, short enough for "searchable within seconds".
    settle: float = 1.0
    # Seconds between reconciliation scans, which find what lost events missed (0: only the one at start).
    rescan: float = 3600.0
    # Seconds between scans of a folder the system cannot watch (too few inotify watches, no events on a share).
    poll: float = 60.0
    # False: no file events at all, every folder scanned every ``poll`` seconds (a network share whose server
    # reports no changes: NFS, SMB and FUSE mounts send no inotify events for changes made elsewhere).
    events: bool = True


@dataclass(frozen=True)
class VideoConfig:
    """Which frames of a video are embedded (imgsearch/video.py); each becomes a moment search can return."""

    # A frame at least this often (seconds), whatever the picture does: a still scene is still found.
    interval: float = 4.0
    # A frame where the picture changes: the mean absolute difference of a 32x18 grey thumbnail against the last
    # sampled frame's, on 0..1. Cuts between two of the shared COCO photos scored 0.11-0.5 (scripts/bench_video.py:
    # 0.12 missed one of 79); compression noise and a slow pan stay under 0.03.
    scene_change: float = 0.08
    # Never two frames closer than this (seconds): a flash or a fast pan does not flood the video with frames.
    min_gap: float = 0.5
    # At most this many frames per video, spread over all of it: a long video's interval stretches so that periodic
    # frames use at most half (1 hour: one every 24 s at least) and scene changes share the rest in step with time.
    max_frames: int = 300
    # Decode only keyframes (the codec's own scene-cut and periodic frames): a fraction of the decoding cost, but a
    # change between two keyframes is seen only at the next one (docs/performance.md measures both).
    keyframes_only: bool = False
    # Frames per forward pass (at most IndexingConfig.batch_size): memory is then the same for a video of any length
    # (measured with ViT-B-32: 64 frames a pass peaked 181 MB above a 1-minute video's 23 frames, 16 within 15 MB,
    # and no slower; docs/performance.md).
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not (
            self.interval > 0
            and self.min_gap >= 0
            and self.max_frames >= 1
            and 0 < self.scene_change <= 1
            and self.batch_size >= 1
        ):
            raise BadInputError(
                "video sampling needs interval > 0, min_gap >= 0, max_frames >= 1, scene_change in (0, 1] and "
                f"batch_size >= 1; got {self.interval}, {self.min_gap}, {self.max_frames}, {self.scene_change} and "
                f"{self.batch_size}"
            )


@dataclass(frozen=True)
class IndexingConfig:
    # Images per forward pass on a CPU; 64 keeps memory low.
    batch_size: int = 64
    # Images per forward pass on a CUDA GPU; None: the largest of 128, 256, 512, 1024 whose forward pass fits in
    # the GPU using at most 60% of its memory, probed once per loaded model (Embedder.gpu_batch).
    gpu_batch_size: int | None = None
    # Decoding worker processes; None = none on 1-2 cores (measured: 2 workers ran at 0.90-0.96x of none on
    # 2 cores, decoding is ~10% of the work and workers take cores from the model), else min(8, cores - 1); with
    # the model on a GPU, which leaves the cores to decoding, every core but one (at most 32).
    # 0 decodes in the main process.
    workers: int | None = None
    # Files larger than this many pixels are refused as decompression bombs (Pillow's own limit is 89M).
    max_pixels: int = 128_000_000
    # Save the FAISS index at least this often during a long run, so a crash loses little work.
    checkpoint_seconds: float = 120.0
    # "fast": JPEGs decoded at reduced size in the decoder where the model input allows (DCT scaling), upright by
    # EXIF, transparency on white; the vectors differ little from a full decode (docs/performance.md).
    # "tensor": JPEGs decoded by torchvision on the model's device (nvJPEG on a GPU), resized, cropped and
    # normalised there; other files as "fast" (imgsearch/clip/tensor_decode.py). Runs on a CPU too (for tests).
    # "auto": "tensor" when torch runs the model on a CUDA GPU, else "fast".
    # "reference": exactly as CLIP_benchmark decodes (full size, Image.convert("RGB"), no EXIF rotation), which
    # `imgsearch eval` uses so that published numbers can be reproduced.
    decode: str = "auto"
    # Embed on a Ray cluster instead of in this process: "local" (start one here), "auto" (a running one) or its
    # address. Needs `pip install 'imgsearch[ray]'`; see imgsearch/distributed/ray_embed.py.
    ray: str | None = None
    # Which frames of each video are embedded.
    video: VideoConfig = VideoConfig()

    def __post_init__(self) -> None:
        check_choice("decode mode", self.decode, DECODE_MODES)

    def resolved_workers(self, gpu: bool = False) -> int:
        if self.workers is not None:
            return self.workers
        cores = os.cpu_count() or 1
        if gpu:
            return min(32, max(1, cores - 1))
        return 0 if cores <= 2 else min(8, cores - 1)


def data_dir() -> Path:
    """imgsearch's per-user data folder: $XDG_DATA_HOME/imgsearch (default ~/.local/share/imgsearch) on Linux and
    other Unixes, ~/Library/Application Support/imgsearch on macOS, %LOCALAPPDATA%\\imgsearch on Windows."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "imgsearch"


def collection_path(explicit: str | os.PathLike | None = None) -> Path:
    """The collection folder: explicit path, else $IMGSEARCH_INDEX, else <data_dir()>/default."""
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get(COLLECTION_ENV) or data_dir() / DEFAULT_NAME).expanduser()
