"""The tensor decode path (JPEGs decoded by torchvision on the model's device; nvJPEG on a GPU) run on the CPU, as
CI can: the same files, details and vectors as the Pillow path, within the decoders' differences, and the same
per-file fallbacks and failure reasons."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsearch.clip.embedder import Embedder
from imgsearch.clip.models import preprocess_cfg
from imgsearch.config import IndexingConfig

from conftest import COCO_MINI, write_image

PHOTOS = sorted(COCO_MINI.glob("*/*.jpg"))


def _rotated(path: Path) -> Path:
    """A JPEG stored sideways with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = (255, 0, 0)
    pixels[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8769)[0x9003] = "2021:06:01 12:30:00"
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    return path


@pytest.fixture
def files(tmp_path) -> list[str]:
    folder = tmp_path / "files"
    folder.mkdir()
    for src in PHOTOS[:12]:
        shutil.copy(src, folder / src.name)
    _rotated(folder / "rotated.jpg")
    Image.open(PHOTOS[0]).convert("CMYK").save(folder / "cmyk.jpg")  # torchvision declines CMYK: Pillow decodes it
    Image.open(PHOTOS[1]).convert("L").save(folder / "grey.jpg")
    write_image(folder / "a.png", 3, (50, 30))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    data = PHOTOS[2].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])  # a valid header, then nothing
    return sorted(str(p) for p in folder.iterdir())


def _embedded(embedder, paths, decode):
    batches = list(embedder.embed_files(paths, IndexingConfig(workers=0, batch_size=5, decode=decode)))
    vectors = {paths[p]: v for b in batches for p, v in zip(b.positions, b.vectors)}
    details = {paths[p]: d for b in batches for p, d in zip(b.positions, b.details)}
    failures = {paths[p]: reason for b in batches for p, reason in b.failures}
    return vectors, details, failures


def test_the_tensor_path_embeds_what_the_pillow_path_embeds(tiny_model, files):
    embedder = Embedder(replace(tiny_model, backend="torch", precision="fp32"))
    assert embedder.decode_mode("tensor") == "tensor" and embedder.decode_mode("auto") == "fast"  # auto: GPU only
    tensor, tensor_details, tensor_failures = _embedded(embedder, files, "tensor")
    pillow, pillow_details, pillow_failures = _embedded(embedder, files, "fast")
    assert set(tensor) == set(pillow) and len(tensor) == len(files) - 2
    assert {Path(p).name for p in tensor_failures} == {"broken.jpg", "truncated.jpg"}
    assert tensor_failures.keys() == pillow_failures.keys()
    assert tensor_details == pillow_details  # size (upright), hash, format, EXIF date: from the same header
    rotated = next(p for p in files if p.endswith("rotated.jpg"))
    assert (tensor_details[rotated].width, tensor_details[rotated].height) == (40, 80)
    cos = np.array([float(tensor[p] @ pillow[p]) for p in tensor])
    assert cos.min() >= 0.995 and cos.mean() >= 0.999, sorted(zip(cos, tensor))[:3]


def test_the_tensor_transform_matches_the_models_own_on_real_photos(tiny_model):
    import open_clip
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from imgsearch.clip.tensor_decode import Transform

    embedder = Embedder(replace(tiny_model, backend="torch"))
    for size in (32, 224):  # the tiny model's input, and ViT-B-32's
        cfg = {**preprocess_cfg(embedder.model), "size": size}
        theirs_fn = open_clip.image_transform(size, is_train=False)
        transform = Transform.for_model(cfg)
        for path in PHOTOS[:8]:
            data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
            ours = transform(decode_jpeg(data, mode=ImageReadMode.RGB))
            with Image.open(path) as im:
                theirs = theirs_fn(im.convert("RGB"))
            assert ours.shape == theirs.shape
            diff = (ours - theirs).abs()  # two JPEG decoders, two antialiased bicubic resamplers
            assert float(diff.mean()) < 0.02 and float(diff.max()) < 0.6, (path, float(diff.mean()), float(diff.max()))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_turns_upright_as_pillow_turns_it(tmp_path, orientation):
    """torchvision ignores EXIF orientation on CUDA, so the tensor path applies it itself, on every device."""
    import torch
    from PIL import ImageOps
    from torchvision.io import ImageReadMode, decode_jpeg

    from imgsearch.clip.tensor_decode import upright
    from imgsearch.images import jpeg_header

    rng = np.random.default_rng(orientation)
    pixels = np.kron(rng.integers(0, 256, (3, 5, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))  # 48 x 80
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=98)
    data = path.read_bytes()
    details, found = jpeg_header(data, 10**8)
    assert found == orientation
    ours = (
        upright(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB), found)
        .permute(1, 2, 0)
        .numpy()
    )
    with Image.open(path) as im:
        theirs = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert ours.shape == theirs.shape and ours.shape[:2] == (details.height, details.width)
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 3


def test_other_transforms_stay_on_the_pillow_path():
    from imgsearch.clip.tensor_decode import Transform

    plain = {"size": 224, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic", "resize_mode": "shortest"}
    assert Transform.for_model(plain).size == (224, 224)
    assert Transform.for_model({**plain, "resize_mode": "squash"}) is None
    assert Transform.for_model({**plain, "interpolation": "bilinear"}) is None


def test_a_decompression_bomb_is_refused_before_decoding(tiny_model, tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (400, 300), (10, 20, 30)).save(big)
    embedder = Embedder(replace(tiny_model, backend="torch"))
    batches = list(embedder.embed_files([str(big)], IndexingConfig(workers=0, decode="tensor", max_pixels=100_000)))
    assert batches[0].positions == [] and "decompression bomb" in batches[0].failures[0][1]


@pytest.mark.gpu
def test_on_a_gpu_jpegs_decode_there_and_agree_with_the_cpu(tiny_model, files):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpu = Embedder(replace(tiny_model, device="cuda", backend="torch", precision="fp32"))
    assert gpu.decode_mode("auto") == "tensor" and 128 <= gpu.gpu_batch <= 1024
    on_gpu, details, failures = _embedded(gpu, files, "auto")
    cpu = Embedder(replace(tiny_model, backend="torch", precision="fp32"))
    on_cpu, cpu_details, cpu_failures = _embedded(cpu, files, "tensor")
    assert details == cpu_details and failures.keys() == cpu_failures.keys()
    cos = np.array([float(on_gpu[p] @ on_cpu[p]) for p in on_cpu])
    assert cos.min() >= 0.995 and cos.mean() >= 0.999
