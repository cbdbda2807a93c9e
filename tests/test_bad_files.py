"""Every kind of bad file: refused with a reason by load_image, skipped (never fatal) by indexing,
remembered so unchanged bad files are not retried, picked up once fixed, refused as a query."""

import functools
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import imgsearch
from imgsearch import images
from imgsearch.config import IndexingConfig
from imgsearch.errors import BadInputError

from conftest import COCO_MINI, write_image

IS_ROOT = os.geteuid() == 0
SETTINGS = IndexingConfig(batch_size=4, workers=0)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def bomb_png_bytes(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit all-black PNG of width x height: ~50 KB on disk, 400M pixels decoded."""
    rows = bytes(1 + (width + 7) // 8) * 100  # filter byte + packed bits, 100 rows at a time
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(rows) for _ in range(height // 100)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def write_bomb_png(path: Path) -> Path:
    path.write_bytes(bomb_png_bytes())
    return path


def coco_photo() -> Path:
    photos = sorted((COCO_MINI / "val2017").glob("*.jpg")) if COCO_MINI.exists() else []
    if not photos:
        pytest.skip(f"shared COCO photos not found under {COCO_MINI}")
    return photos[0]


# name -> (how to make it in a folder, what its skip reason must mention)
def _random_bytes(path):
    path.write_bytes(np.random.default_rng(7).bytes(4096))


def _corrupt_jpeg(path):
    real = coco_photo().read_bytes()
    path.write_bytes(real[:700] + np.random.default_rng(8).bytes(20_000))  # real header, garbage data


def _truncated_jpeg(path):
    real = coco_photo().read_bytes()
    path.write_bytes(real[: len(real) // 2])


def _text_as_png(path):
    path.write_text("these are my notes, not a picture\n")


def _dangling(path):
    os.symlink(path.with_name("deleted-long-ago.jpg"), path)


BAD_FILES = {
    "random.jpg": (_random_bytes, "not an image"),
    "corrupt.jpg": (_corrupt_jpeg, "corrupt"),
    "truncated.jpg": (_truncated_jpeg, "truncated"),
    "empty.jpg": (lambda p: p.write_bytes(b""), "empty"),
    "notes.png": (_text_as_png, "not an image"),
    "dangling.jpg": (_dangling, "unreadable"),
    "bomb.png": (write_bomb_png, "decompression bomb"),
}
# Files the scan can stat (everything but the dangling link) are decoded, fail, and are remembered.
DECODED_BAD = [n for n in BAD_FILES if n != "dangling.jpg"]


def make_bad(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    BAD_FILES[name][0](folder / name)
    return folder / name


# -- load_image -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_load_image_refuses_each_bad_file_with_a_reason(tmp_path, name):
    path = make_bad(tmp_path, name)
    with pytest.raises(images.ImageSkipped) as refused:
        images.load_image(str(path), min_side=32)
    assert BAD_FILES[name][1] in str(refused.value)


def test_the_truncated_photo_is_a_real_jpeg_cut_in_half(tmp_path):
    whole = coco_photo()
    assert images.load_image(str(whole), min_side=32).details.width > 100  # the source itself is fine
    path = make_bad(tmp_path, "truncated.jpg")
    assert path.stat().st_size == whole.stat().st_size // 2
    with pytest.raises(images.ImageSkipped, match=r"corrupt or truncated image: image file is truncated"):
        images.load_image(str(path))


def test_bomb_is_cheap_on_disk_but_refused_before_decoding(tmp_path):
    path = write_bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 200_000
    with pytest.raises(images.ImageSkipped, match="decompression bomb.*400000000 pixels"):
        images.load_image(str(path))


def test_a_lowered_pixel_limit_refuses_big_images_and_says_the_limit(tmp_path):
    path = write_image(tmp_path / "poster.png", seed=1, size=(400, 300))
    assert images.load_image(str(path), max_pixels=120_000).image.size == (400, 300)
    with pytest.raises(images.ImageSkipped, match=r"decompression bomb: 400x300 = 120,000 pixels .* 119,999"):
        images.load_image(str(path), max_pixels=119_999)


def test_a_file_that_vanished_since_the_scan_is_unreadable_not_corrupt(tmp_path):
    with pytest.raises(images.ImageSkipped, match="unreadable: No such file"):
        images.load_image(str(tmp_path / "gone.jpg"))


@pytest.mark.skipif(IS_ROOT, reason="root can read a chmod 000 file")
def test_a_file_without_read_permission_is_unreadable(tmp_path):
    path = write_image(tmp_path / "private.jpg", seed=2)
    path.chmod(0)
    try:
        with pytest.raises(images.ImageSkipped, match="unreadable: Permission denied"):
            images.load_image(str(path))
    finally:
        path.chmod(0o644)


# -- indexing through the API -----------------------------------------------------------------------


@pytest.fixture
def mixed_folder(tmp_path):
    """Six good images next to one of every bad kind (and a chmod 000 one where that means anything)."""
    folder = tmp_path / "photos"
    good = [
        write_image(folder / ("sub" if i % 2 else "") / f"good{i}.{'png' if i % 3 else 'jpg'}", seed=i)
        for i in range(6)
    ]
    bad = {str(make_bad(folder / "bad", name)): reason for name, (_, reason) in BAD_FILES.items()}
    if not IS_ROOT:
        locked = write_image(folder / "bad" / "locked.jpg", seed=99)
        locked.chmod(0)
        bad[str(locked)] = "unreadable"
    yield folder, [str(p) for p in good], bad
    if not IS_ROOT:
        (folder / "bad" / "locked.jpg").chmod(0o644)


def _reasons(skipped) -> dict[str, str]:
    return {s.path: s.reason for s in skipped}


def test_indexing_skips_every_bad_file_and_remembers_it(tmp_path, tiny_model, mixed_folder):
    folder, good, bad = mixed_folder
    engine = imgsearch.open(tmp_path / "coll", model=tiny_model)

    first = engine.index_folder(folder, SETTINGS)

    assert first.added == len(good)
    assert first.scanned == len(good) + len(bad)
    reported = _reasons(first.skipped)
    assert sorted(reported) == sorted(bad)
    for path, reason in reported.items():
        assert bad[path] in reason, f"{path}: {reason!r} should mention {bad[path]!r}"
    assert _reasons(engine.skipped()) == reported
    info = engine.info()
    assert (info.images, info.skipped) == (len(good), len(bad))
    for path in good:
        assert engine.search(path, k=1)[0].path == path

    second = engine.index_folder(folder, SETTINGS)

    assert (second.added, second.updated, second.removed, second.unchanged) == (0, 0, 0, len(good))
    # Decodable-but-bad files are not retried; a dangling link cannot be told unchanged (no size).
    links = {p for p in bad if os.path.islink(p)}
    assert {s.path for s in second.skipped} <= links
    assert second.still_skipped + len(second.skipped) == len(bad)
    assert _reasons(engine.skipped()) == reported
    assert engine.info().images == len(good)


def test_an_unchanged_dangling_link_is_still_skipped_not_newly_skipped(tmp_path, tiny_model):
    folder = tmp_path / "photos"
    write_image(folder / "ok.png", seed=1)
    make_bad(folder, "dangling.jpg")
    engine = imgsearch.open(tmp_path / "coll", model=tiny_model)
    engine.index_folder(folder, SETTINGS)
    again = engine.index_folder(folder, SETTINGS)
    assert (again.skipped, again.still_skipped) == ([], 1)


def test_fixing_a_bad_file_indexes_it_and_clears_its_skip(tmp_path, tiny_model, mixed_folder):
    folder, good, bad = mixed_folder
    engine = imgsearch.open(tmp_path / "coll", model=tiny_model)
    engine.index_folder(folder, SETTINGS)
    fixed = [str(folder / "bad" / name) for name in ("corrupt.jpg", "empty.jpg", "bomb.png", "notes.png")]
    for i, path in enumerate(fixed):
        write_image(Path(path), seed=100 + i)  # overwritten in place with a real image

    report = engine.index_folder(folder, SETTINGS)

    assert report.added == len(fixed)
    assert {s.path for s in report.skipped} <= {p for p in bad if os.path.islink(p)}
    still_bad = set(bad) - set(fixed)
    assert set(_reasons(engine.skipped())) == still_bad
    assert engine.info().images == len(good) + len(fixed)
    for path in fixed:
        assert engine.search(path, k=1)[0].path == path

    later = engine.index_folder(folder, SETTINGS)
    assert (later.added, later.unchanged) == (0, len(good) + len(fixed))


def test_a_good_image_that_goes_bad_is_removed_and_listed_as_skipped(tmp_path, tiny_model):
    folder = tmp_path / "photos"
    paths = [str(write_image(folder / f"p{i}.jpg", seed=i)) for i in range(3)]
    engine = imgsearch.open(tmp_path / "coll", model=tiny_model)
    engine.index_folder(folder, SETTINGS)
    Path(paths[0]).write_bytes(Path(paths[0]).read_bytes()[:300])  # truncated by a failed copy

    report = engine.index_folder(folder, SETTINGS)

    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 0, 1, 2)
    assert [s.path for s in report.skipped] == [paths[0]]
    assert "corrupt or truncated" in report.skipped[0].reason
    assert [s.path for s in engine.skipped()] == [paths[0]]
    hits = engine.search(paths[1], k=10)
    assert sorted(h.path for h in hits) == sorted(paths[1:])


def test_lowered_max_pixels_skips_big_images_while_indexing(tmp_path, tiny_model):
    folder = tmp_path / "photos"
    small = write_image(folder / "small.png", seed=1)  # 64x48
    big = write_image(folder / "big.png", seed=2, size=(400, 300))
    engine = imgsearch.open(tmp_path / "coll", model=tiny_model)

    report = engine.index_folder(folder, IndexingConfig(batch_size=4, workers=0, max_pixels=100_000))

    assert report.added == 1
    assert [s.path for s in report.skipped] == [str(big)]
    assert "decompression bomb" in report.skipped[0].reason and "100,000" in report.skipped[0].reason
    assert [h.path for h in engine.search(str(small), k=5)] == [str(small)]


def test_deleting_a_bad_file_drops_it_from_skipped(tmp_path, tiny_model):
    folder = tmp_path / "photos"
    write_image(folder / "ok.png", seed=1)
    bad = make_bad(folder, "empty.jpg")
    engine = imgsearch.open(tmp_path / "coll", model=tiny_model)
    engine.index_folder(folder, SETTINGS)
    assert [s.path for s in engine.skipped()] == [str(bad)]
    bad.unlink()
    engine.index_folder(folder, SETTINGS)
    assert engine.skipped() == []


def test_indexing_with_worker_processes_also_survives_bad_files(tmp_path, tiny_model, mixed_folder):
    folder, good, bad = mixed_folder
    engine = imgsearch.open(tmp_path / "coll", model=tiny_model)
    report = engine.index_folder(folder, IndexingConfig(batch_size=2, workers=2))
    assert report.added == len(good)
    assert sorted(_reasons(report.skipped)) == sorted(bad)


# -- the query side ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_collection(tmp_path_factory, tiny_model, model_configs_dir):
    """Three indexed images, shared by the read-only query tests below."""
    root = tmp_path_factory.mktemp("small")
    for i in range(3):
        write_image(root / "photos" / f"p{i}.png", seed=i)
    with pytest.MonkeyPatch.context() as env:  # module scope: set up before the autouse env fixture
        env.setenv("IMGSEARCH_MODEL_CONFIGS", str(model_configs_dir))
        engine = imgsearch.open(root / "coll", model=tiny_model)
        engine.index_folder(root / "photos", SETTINGS)
    yield engine
    engine.close()


@pytest.mark.parametrize("name", sorted(DECODED_BAD))
@pytest.mark.parametrize("as_type", [str, Path])
def test_searching_with_a_bad_image_names_the_file(tmp_path, small_collection, name, as_type):
    path = make_bad(tmp_path / "queries", name)
    with pytest.raises(BadInputError) as refused:
        small_collection.search(as_type(path))
    message = str(refused.value)
    assert str(path) in message and BAD_FILES[name][1] in message


def test_searching_with_a_dangling_link_path_names_the_file(tmp_path, small_collection):
    path = make_bad(tmp_path / "queries", "dangling.jpg")
    with pytest.raises(BadInputError, match=f"not found: {path}"):
        small_collection.search(path)


def test_searching_with_a_dangling_link_string_names_the_file(tmp_path, small_collection):
    path = make_bad(tmp_path / "queries", "dangling.jpg")
    with pytest.raises(BadInputError, match="dangling.jpg"):
        small_collection.search(str(path))


def test_describing_a_bad_image_names_the_file(tmp_path, tiny_model):
    engine = imgsearch.open(tmp_path / "coll", model=tiny_model)
    engine.add_texts(["a photo", "a drawing"])
    path = make_bad(tmp_path / "queries", "truncated.jpg")
    with pytest.raises(BadInputError, match=f"{path}.*truncated"):
        engine.describe(path)


def test_a_file_name_that_is_not_utf8_is_skipped_with_a_reason_and_never_stops_a_run(tmp_path, tiny_model):
    folder = tmp_path / "photos"
    for i in range(3):
        write_image(folder / f"good{i}.png", seed=i)
    bad = os.path.join(os.fsencode(folder), b"\xff\xfe_restored.jpg")
    with open(bad, "wb") as f, open(folder / "good0.png", "rb") as src:
        f.write(src.read())
    for _ in range(2):  # the second run must not crash on it either
        with imgsearch.open(tmp_path / "c", model=tiny_model) as engine:
            report = engine.index_folder(folder)
            assert engine.info().images == 3
    with imgsearch.open(tmp_path / "c") as engine:
        skipped = {s.path: s.reason for s in engine.skipped()}
    shown = str(folder / "\\xff\\xfe_restored.jpg")
    assert shown in skipped and "not valid UTF-8" in skipped[shown], skipped
    assert report.unchanged == 3


def test_a_first_run_whose_first_batch_is_all_unreadable_files_goes_on(tmp_path, tiny_model):
    """0.1 crashed (a TypeError deep in the FAISS side) when a first run's first batch held no readable image."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    write_image(photos / "b_fine.png", 1)
    with imgsearch.open(tmp_path / "c", model=tiny_model) as engine:
        report = engine.index_folder(photos, IndexingConfig(batch_size=1, workers=0))
        assert report.added == 1 and [Path(s.path).name for s in report.skipped] == ["a_broken.jpg"]
        assert [Path(h.path).name for h in engine.search("a photo", k=5)] == ["b_fine.png"]


def test_a_fifo_named_like_a_photo_is_skipped_not_waited_on(tmp_path, tiny_model):
    """0.2 opened a FIFO named x.jpg to read it and waited for a writer forever: the whole run hung."""
    import threading

    photos = tmp_path / "photos"
    write_image(photos / "real.jpg", seed=1)
    os.mkfifo(photos / "pipe.jpg")
    result: dict = {}

    def run() -> None:
        with imgsearch.open(tmp_path / "coll", model=tiny_model) as engine:
            result["report"] = engine.index_folder(photos, IndexingConfig(workers=0))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the run hung on the FIFO"
    report = result["report"]
    assert report.added == 1
    assert [(Path(s.path).name, "not a regular file" in s.reason) for s in report.skipped] == [("pipe.jpg", True)]
