"""The camera's own files: RAW files through LibRaw (real DNGs written by pidng from real COCO photos), a RAW beside
its camera JPEG, and HEIC; and what a user without the packages that read them is told."""

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

import imgsearch
from imgsearch import images as imgs
from imgsearch.search import Filters

from conftest import COCO_MINI, TINY_MODEL, run_cli, write_image

PHOTOS = sorted(COCO_MINI.glob("*/*.jpg"))


def write_dng(path: Path, photo: Path, size: tuple[int, int] = (256, 192)) -> Path:
    """A real DNG (12-bit RGGB sensor data, no embedded preview) sampled from a photo, as pidng writes one."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, Orientation, PhotometricInterpretation

    rgb = np.asarray(Image.open(photo).convert("RGB").resize(size), np.uint16) * 16
    bayer = np.empty(rgb.shape[:2], np.uint16)
    bayer[0::2, 0::2], bayer[0::2, 1::2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    bayer[1::2, 0::2], bayer[1::2, 1::2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    tags = DNGTags()
    for tag, value in [
        (Tag.ImageWidth, size[0]),
        (Tag.ImageLength, size[1]),
        (Tag.TileWidth, size[0]),
        (Tag.TileLength, size[1]),
        (Tag.Orientation, Orientation.Horizontal),
        (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
        (Tag.SamplesPerPixel, 1),
        (Tag.BitsPerSample, 12),
        (Tag.CFARepeatPatternDim, [2, 2]),
        (Tag.CFAPattern, CFAPattern.RGGB),
        (Tag.BlackLevel, 0),
        (Tag.WhiteLevel, 4095),
        (Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]),
        (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
        (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]),
        (Tag.DNGVersion, DNGVersion.V1_4),
        (Tag.DNGBackwardVersion, DNGVersion.V1_2),
        (Tag.Make, "imgsearch"),
        (Tag.Model, "test camera"),
    ]:
        tags.set(tag, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = RAW2DNG()
    writer.options(tags, path=str(path.parent) + os.sep, compress=False)
    writer.convert(bayer, filename=path.stem)
    written = path.with_suffix(".dng")
    if written != path:
        written.rename(path)
    return path


def test_raw_files_are_indexed_through_libraw_and_found_by_their_own_picture(tmp_path, tiny_model):
    """0.1 ignored .dng/.CR2/.NEF...: not indexed, not counted, not in `skipped`."""
    photos = tmp_path / "photos"
    raw = write_dng(photos / "IMG_0001.DNG", PHOTOS[0])
    for i, photo in enumerate(PHOTOS[1:7]):
        shutil.copy(photo, photos / f"other{i}.jpg")
    with pytest.raises(UnidentifiedImageError):  # Pillow alone cannot read it at all
        Image.open(raw)
    with imgsearch.open(tmp_path / "c", model=tiny_model) as engine:
        report = engine.index_folder(photos)
        assert (report.added, report.skipped) == (7, [])
        best = engine.search_image(raw, k=1)[0]
        assert best.path == str(raw) and best.score > 0.999 and best.format == "raw"
        assert (best.width, best.height) == (256, 192)
        assert [h.path for h in engine.search("a photo", filters=Filters(formats="dng"))] == [str(raw)]
    thumbnail = Image.open(io.BytesIO(_thumbnail(raw)))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) == 128


def _thumbnail(path: Path) -> bytes:
    from imgsearch.server import thumbnails

    return thumbnails.make(path.read_bytes(), 128, raw=imgs.is_raw_name(path.name))


def test_a_raw_file_beside_its_camera_jpeg_is_left_out_saying_which_is_indexed(tmp_path, tiny_model):
    photos = tmp_path / "photos"
    write_dng(photos / "IMG_0002.dng", PHOTOS[1])
    shutil.copy(PHOTOS[1], photos / "IMG_0002.JPG")
    write_dng(photos / "IMG_0003.nef", PHOTOS[2])  # alone: indexed
    with imgsearch.open(tmp_path / "c", model=tiny_model) as engine:
        report = engine.index_folder(photos)
        assert report.added == 2
        assert [(s.path, s.reason) for s in report.skipped] == [
            (
                str(photos / "IMG_0002.dng"),
                "left out: IMG_0002.JPG beside it is the same photo as the camera rendered it, and is indexed instead",
            )
        ]
        assert engine.index_folder(photos).unchanged == 2  # and the same next time, without a word more
        (photos / "IMG_0002.JPG").unlink()
        again = engine.index_folder(photos)
        assert (again.added, again.removed, again.skipped) == (1, 1, [])
        assert {Path(h.path).name for h in engine.search("a photo", k=5)} == {"IMG_0002.dng", "IMG_0003.nef"}


@pytest.mark.e2e
def test_without_the_packages_a_skip_says_what_to_install_and_the_next_run_retries(tmp_path):
    """0.1 said "not an image Pillow can read" for an iPhone's HEIC without pillow-heif."""
    import pillow_heif

    photos = tmp_path / "photos"
    photos.mkdir()
    pillow_heif.register_heif_opener()
    Image.open(PHOTOS[3]).save(photos / "IMG_4001.HEIC")
    write_dng(photos / "IMG_4002.dng", PHOTOS[4])
    write_image(photos / "plain.png", 1)
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ("pillow_heif", "rawpy"):
        (blocked / f"{name}.py").write_text(f"raise ImportError('No module named {name}')\n")
    args = ("index", photos, "--collection", tmp_path / "c", "--model", TINY_MODEL, "--pretrained", "none", "-q")
    without = run_cli(*args, env={"PYTHONPATH": f"{blocked}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert without.returncode == 0 and "1 added" in without.stdout, without.stderr
    assert "IMG_4001.HEIC: a HEIC/HEIF photo, which needs pillow-heif to be read: install it with" in without.stderr
    assert "IMG_4002.dng: needs rawpy to read camera RAW files" in without.stderr
    installed = run_cli(*args)  # the files have not changed: retried because what reads them is here now
    assert installed.returncode == 0 and "2 added" in installed.stdout and "skipped" not in installed.stderr
