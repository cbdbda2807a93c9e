"""Finding and decoding image files: every format and mode to upright RGB, original sizes, scans."""

import os

import numpy as np
import pytest
from PIL import Image
from trees import RICH_EXCLUDES, rich_tree

from imgsearch import images
from imgsearch.records import FileEntry, ScanProblem

RED, GREEN, BLUE, YELLOW, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 255, 255)
# The stored layout of the test pattern: one colour per quadrant.
LAYOUT = np.array([[0, 1], [2, 3]])
COLOURS = [RED, GREEN, BLUE, YELLOW]


def quadrants(width: int, height: int) -> Image.Image:
    """RED top-left, GREEN top-right, BLUE bottom-left, YELLOW bottom-right."""
    pixels = np.zeros((height, width, 3), np.uint8)
    for row in range(2):
        for col in range(2):
            ys, xs = slice(row * height // 2, (row + 1) * height // 2), slice(col * width // 2, (col + 1) * width // 2)
            pixels[ys, xs] = COLOURS[LAYOUT[row, col]]
    return Image.fromarray(pixels)


def quadrant_colours(img: Image.Image) -> np.ndarray:
    """The pixel at the centre of each quadrant, as a 2x2 grid of RGB tuples."""
    w, h = img.size
    return np.array([[img.getpixel((w * (2 * c + 1) // 4, h * (2 * r + 1) // 4)) for c in range(2)] for r in range(2)])


def assert_layout(img: Image.Image, layout: np.ndarray, tolerance: int = 40) -> None:
    want = np.array([[COLOURS[i] for i in row] for row in layout])
    got = quadrant_colours(img)
    assert np.abs(got.astype(int) - want).max() <= tolerance, f"quadrants {got.tolist()} != {want.tolist()}"


def assert_colour(img: Image.Image, xy: tuple[int, int], want: tuple[int, int, int], tolerance: int = 2) -> None:
    got = img.getpixel(xy)
    assert max(abs(g - w) for g, w in zip(got, want)) <= tolerance, f"pixel {xy} is {got}, expected {want}"


# -- formats ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "avif", "JPG", "PNG"])
def test_every_format_decodes_to_rgb_with_its_original_size(tmp_path, ext):
    path = tmp_path / f"pattern.{ext}"
    quadrants(60, 40).save(path)

    loaded = images.load_image(str(path))

    assert loaded.image.mode == "RGB"
    assert loaded.image.size == (60, 40)
    assert (loaded.details.width, loaded.details.height) == (60, 40)
    assert_layout(loaded.image, LAYOUT)
    assert loaded.details.content_hash == images.file_hash(str(path))


def test_content_hash_tells_files_apart_and_matches_file_hash(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    quadrants(60, 40).save(a)
    quadrants(60, 42).save(b)
    hash_a = images.load_image(str(a)).details.content_hash
    assert hash_a == images.file_hash(str(a)) != images.file_hash(str(b))
    assert len(hash_a) == 32 and int(hash_a, 16) >= 0  # BLAKE2b-128, hex


# -- EXIF orientation -------------------------------------------------------------------------------

# Where the stored quadrants end up on screen, computed with numpy (independently of Pillow).
ORIENTATIONS = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),  # rotate 90 degrees clockwise to display
    7: lambda a: np.rot90(a, 2).T,
    8: lambda a: np.rot90(a, 1),  # rotate 90 degrees counter-clockwise to display
}


def save_with_orientation(path, img: Image.Image, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif, quality=95)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_gives_upright_pixels_and_upright_size(tmp_path, orientation):
    path = tmp_path / "phone.jpg"
    save_with_orientation(path, quadrants(60, 40), orientation)

    loaded = images.load_image(str(path))

    turned = orientation >= 5
    want_size = (40, 60) if turned else (60, 40)
    assert loaded.image.size == want_size
    assert (loaded.details.width, loaded.details.height) == want_size
    assert_layout(loaded.image, ORIENTATIONS[orientation](LAYOUT))


def test_orientation_6_puts_the_top_left_quadrant_top_right(tmp_path):
    path = tmp_path / "portrait.jpg"
    save_with_orientation(path, quadrants(60, 40), 6)
    loaded = images.load_image(str(path))
    assert (loaded.details.width, loaded.details.height) == (40, 60)
    assert_colour(loaded.image, (30, 15), RED, tolerance=40)  # stored top-left, now top-right
    assert_colour(loaded.image, (10, 45), YELLOW, tolerance=40)  # stored bottom-right, now bottom-left


def test_orientation_survives_jpeg_draft_downscaling(tmp_path):
    path = tmp_path / "big_portrait.jpg"
    save_with_orientation(path, quadrants(2000, 1500), 6)
    loaded = images.load_image(str(path), min_side=224)
    assert (loaded.details.width, loaded.details.height) == (1500, 2000)
    w, h = loaded.image.size
    assert h > w and 224 <= w < 1500
    assert_layout(loaded.image, ORIENTATIONS[6](LAYOUT))


# -- modes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["png", "webp"])
def test_rgba_transparency_is_composited_on_white(tmp_path, ext):
    path = tmp_path / f"logo.{ext}"
    rgba = np.zeros((20, 40, 4), np.uint8)
    rgba[:, 20:30] = (0, 0, 255, 255)  # opaque blue
    rgba[:, 30:] = (255, 0, 0, 128)  # half-transparent red over white -> pink
    Image.fromarray(rgba, "RGBA").save(path, lossless=True)

    img = images.load_image(str(path)).image

    assert img.mode == "RGB"
    assert_colour(img, (5, 10), WHITE)
    assert_colour(img, (25, 10), BLUE)
    assert_colour(img, (35, 10), (255, 127, 127), tolerance=3)


def test_la_transparency_is_composited_on_white(tmp_path):
    path = tmp_path / "grey_alpha.png"
    la = np.zeros((20, 40, 2), np.uint8)
    la[:, 20:] = (60, 255)
    Image.fromarray(la, "LA").save(path)
    img = images.load_image(str(path)).image
    assert_colour(img, (5, 10), WHITE)
    assert_colour(img, (30, 10), (60, 60, 60))


@pytest.mark.parametrize("ext", ["png", "gif"])
def test_palette_with_transparent_index_is_composited_on_white(tmp_path, ext):
    path = tmp_path / f"sticker.{ext}"
    pal = Image.new("P", (40, 20), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    pal.paste(1, (20, 0, 40, 20))
    pal.save(path, transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info

    img = images.load_image(str(path)).image

    assert_colour(img, (5, 10), WHITE)
    assert_colour(img, (30, 10), RED)


def test_palette_without_transparency_keeps_its_colours(tmp_path):
    path = tmp_path / "indexed.png"
    quadrants(60, 40).quantize(4).save(path)
    assert Image.open(path).mode == "P"
    assert_layout(images.load_image(str(path)).image, LAYOUT, tolerance=2)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_transparent_colour_key_is_composited_on_white(tmp_path, mode):
    path = tmp_path / f"keyed_{mode}.png"
    img = Image.new(mode, (40, 20), 0)
    img.paste(200 if mode == "L" else (0, 200, 0), (20, 0, 40, 20))
    img.save(path, transparency=0 if mode == "L" else (0, 0, 0))
    decoded = images.load_image(str(path)).image
    assert_colour(decoded, (5, 10), WHITE)
    assert_colour(decoded, (30, 10), (200, 200, 200) if mode == "L" else (0, 200, 0))


def test_greyscale_l_becomes_grey_rgb(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (30, 20), 128).save(path)
    img = images.load_image(str(path)).image
    assert img.mode == "RGB"
    assert_colour(img, (3, 3), (128, 128, 128), tolerance=0)


def test_bilevel_image_becomes_black_and_white(tmp_path):
    path = tmp_path / "fax.png"
    bw = Image.new("1", (40, 20), 0)
    bw.paste(1, (20, 0, 40, 20))
    bw.save(path)
    img = images.load_image(str(path)).image
    assert_colour(img, (5, 10), (0, 0, 0), tolerance=0)
    assert_colour(img, (30, 10), WHITE, tolerance=0)


@pytest.mark.parametrize("ext", ["jpg", "tiff"])
def test_cmyk_is_converted_to_rgb(tmp_path, ext):
    path = tmp_path / f"print.{ext}"
    cmyk = Image.new("CMYK", (40, 20), (0, 255, 255, 0))  # no cyan/black, full magenta+yellow = red
    cmyk.paste((255, 0, 255, 0), (20, 0, 40, 20))  # cyan + yellow = green
    cmyk.save(path)
    assert Image.open(path).mode == "CMYK"
    img = images.load_image(str(path), min_side=8).image  # a JPEG is also shrunk in the decoder
    w, h = img.size
    assert img.mode == "RGB" and min(w, h) >= 8
    assert_colour(img, (w // 8, h // 2), RED, tolerance=10)
    assert_colour(img, (w - w // 8, h // 2), GREEN, tolerance=10)


@pytest.mark.parametrize("ext", ["png", "tiff"])
def test_mid_grey_16_bit_image_decodes_to_mid_grey_not_white(tmp_path, ext):
    path = tmp_path / f"scan16.{ext}"
    Image.fromarray(np.full((20, 30), 32768, np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I;16")
    img = images.load_image(str(path)).image
    assert img.mode == "RGB"
    assert_colour(img, (15, 10), (128, 128, 128), tolerance=1)


def test_16_bit_ramp_keeps_its_shape(tmp_path):
    path = tmp_path / "ramp16.png"
    values = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    Image.fromarray(values).save(path)
    ramp = np.asarray(images.load_image(str(path)).image)[4, :, 0].astype(int)
    assert ramp[0] == 0 and ramp[-1] == 255 and np.all(np.diff(ramp) >= 0)
    assert abs(ramp[32] - 130) <= 1  # 32/63 of full scale


@pytest.mark.parametrize("level, want", [(1000, 4), (60000, 233)])
def test_uniform_16_bit_images_are_not_stretched(tmp_path, level, want):
    path = tmp_path / "flat16.png"
    Image.fromarray(np.full((8, 8), level, np.uint16)).save(path)  # level/65535 of full brightness
    assert_colour(images.load_image(str(path)).image, (4, 4), (want, want, want), tolerance=1)


def test_float_greyscale_in_unit_range_keeps_its_brightness(tmp_path):
    path = tmp_path / "float.tiff"
    Image.fromarray(np.full((8, 8), 0.5, np.float32), "F").save(path)
    assert Image.open(path).mode == "F"
    assert_colour(images.load_image(str(path)).image, (4, 4), (128, 128, 128), tolerance=1)


# -- JPEG draft downscaling -------------------------------------------------------------------------


@pytest.mark.parametrize("min_side", [32, 224, 375, 376, 749])
@pytest.mark.parametrize("size", [(2000, 1500), (1500, 2000)])
def test_jpeg_draft_shrinks_but_never_below_min_side(tmp_path, size, min_side):
    path = tmp_path / "camera.jpg"
    quadrants(*size).save(path, quality=90)

    loaded = images.load_image(str(path), min_side=min_side)

    w, h = loaded.image.size
    assert min(w, h) >= min_side
    assert w < size[0] and h < size[1]  # the decoder did shrink it (all these leave room to)
    assert w / h == pytest.approx(size[0] / size[1], rel=0.01)
    assert (loaded.details.width, loaded.details.height) == size  # the original size is reported
    assert_layout(loaded.image, LAYOUT)


def test_2000x1500_jpeg_at_224_decodes_smaller_keeping_224_on_the_short_side(tmp_path):
    path = tmp_path / "camera.jpg"
    Image.new("RGB", (2000, 1500), (20, 120, 220)).save(path)
    loaded = images.load_image(str(path), min_side=224)
    assert loaded.image.size != (2000, 1500)
    assert min(loaded.image.size) >= 224
    assert (loaded.details.width, loaded.details.height) == (2000, 1500)


def test_without_min_side_and_for_other_formats_the_full_size_is_decoded(tmp_path):
    jpg, png = tmp_path / "a.jpg", tmp_path / "a.png"
    quadrants(800, 600).save(jpg)
    quadrants(800, 600).save(png)
    assert images.load_image(str(jpg)).image.size == (800, 600)
    assert images.load_image(str(png), min_side=32).image.size == (800, 600)


# -- pixel limit ------------------------------------------------------------------------------------


def test_max_pixels_is_the_limit_even_above_pillows_warning_threshold(tmp_path, monkeypatch):
    """Pillow's own warning limit must not refuse what max_pixels allows (e.g. a 96M-pixel panorama).

    Lowering Pillow's limit stands in for a huge file, so the test stays small.
    """
    path = tmp_path / "panorama.png"
    quadrants(60, 40).save(path)  # 2,400 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000)  # 2,400 is between 1x and 2x: a warning
    assert images.load_image(str(path), max_pixels=10_000).image.size == (60, 40)
    with pytest.raises(images.ImageSkipped, match="decompression bomb.*2,400 pixels.*2,000"):
        images.load_image(str(path), max_pixels=2_000)


# -- scanning ---------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """A folder mixing images (nested, uppercase extensions) with things scan must leave out."""
    root = tmp_path / "photos"
    wanted = [
        "a.jpg",
        "b.PNG",
        "sub/c.JPG",
        "sub/d.jpeg",
        "sub/deeper/e.webp",
        "sub/deeper/f.TIFF",
        "g.gif",
        "h.bmp",
        "i.tif",
    ]
    for name in wanted:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        quadrants(8, 8).save(root / name, format=Image.registered_extensions()[os.path.splitext(name)[1].lower()])
    for name in [
        "notes.txt",
        "meta.json",
        "a.jpg.bak",
        "jpg",
        "sub/readme.md",
        ".hidden.jpg",
        ".thumbnails/t.jpg",
        "sub/.cache/x.png",
    ]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not scanned")
    os.symlink(root / "no-such-target.jpg", root / "x.jpg")  # dangling
    return root, sorted(str(root / name) for name in wanted)


def test_scan_finds_images_recursively_and_reports_unreadable_entries(tree):
    root, wanted = tree
    found = list(images.scan(root))

    entries = [f for f in found if isinstance(f, FileEntry)]
    problems = [f for f in found if isinstance(f, ScanProblem)]
    assert sorted(e.path for e in entries) == wanted
    for e in entries:
        st = os.stat(e.path)
        assert os.path.isabs(e.path) and (e.size, e.mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert [p.path for p in problems] == [str(root / "x.jpg")]
    assert "unreadable" in problems[0].reason and "No such file" in problems[0].reason


def test_scan_accepts_a_relative_root_and_returns_absolute_paths(tree, monkeypatch):
    root, wanted = tree
    monkeypatch.chdir(root.parent)
    found = [f.path for f in images.scan("photos") if isinstance(f, FileEntry)]
    assert sorted(found) == wanted


def test_scan_of_a_folder_without_images_is_empty(tmp_path):
    (tmp_path / "doc.txt").write_text("hello")
    assert list(images.scan(tmp_path)) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can list any folder")
def test_scan_reports_a_folder_it_cannot_list(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    quadrants(8, 8).save(tmp_path / "ok.png")
    quadrants(8, 8).save(locked / "inside.png")
    locked.chmod(0)
    try:
        found = list(images.scan(tmp_path))
    finally:
        locked.chmod(0o755)
    assert [f.path for f in found if isinstance(f, FileEntry)] == [str(tmp_path / "ok.png")]
    problems = [f for f in found if isinstance(f, ScanProblem)]
    assert [p.path for p in problems] == [str(locked)] and "unreadable folder" in problems[0].reason


@pytest.mark.parametrize("name", ["a.jpg", "A.JPG", "b.Jpeg", "c.PNG", "d.webp", "e.TIFF", "f.tif", "g.GIF", "h.bmp"])
def test_image_names_are_recognised_case_insensitively(name):
    assert images.is_image_name(name)


@pytest.mark.parametrize("name", ["a.txt", "jpg", "a.jpg.bak", "a.pdf", "a.svg", "a"])
def test_other_names_are_not_images(name):
    assert not images.is_image_name(name)


def test_compiled_excludes_match_exactly_what_fnmatch_matches():
    """The scan's one compiled expression against the simple reference, fnmatch per glob, on names and paths with
    regex metacharacters, character classes and negations."""
    import fnmatch

    from imgsearch.config import DEFAULT_EXCLUDES

    patterns = (*DEFAULT_EXCLUDES, "*.tmp", "raw/*", "[!a-c]x?", "a+b(c)", "2024-0[1-3]*", "x|y", "*[*]")
    names = [
        "@eaDir",
        "Trash",
        "trash",
        "photo.tmp",
        "photo.jpg",
        "dx1",
        "ax1",
        "a+b(c)",
        "aab(c)",
        "2024-02 trip",
        "2024-05",
        "x|y",
        "x",
        "star*",
        "#recycle",
        "$RECYCLE.BIN",
        "lost+found",
        "node_modules",
        "a.jpg\n",
    ]
    folders = [".", "raw", "raw/deeper", "sub", "2024-01"]
    checked = 0
    for patterns_used in (patterns, DEFAULT_EXCLUDES, ()):
        for name in names:
            for folder in folders:
                rel = name if folder == "." else f"{folder}/{name}"
                expected = any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p) for p in patterns_used)
                assert images.is_excluded(name, folder, patterns_used) is expected, (name, folder, patterns_used)
                checked += expected
    assert checked > 20  # the cases do exclude, not only pass


def _reference_scan(root, excludes=()):
    """The scan as it was written before it was made fast: ``os.walk``, one ``os.lstat`` and the public name
    helpers per file. ``images.scan`` must yield exactly this, in this order."""
    import stat

    root = os.path.realpath(root)
    inside = os.path.join(root, "")
    unlistable, seen_folders, seen_files = [], set(), set()

    def problems():
        yield from (ScanProblem(str(e.filename), f"unreadable folder: {e.strerror or e}", True) for e in unlistable)
        unlistable.clear()

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable.append, followlinks=True):
        yield from problems()
        real = os.path.realpath(dirpath)
        if (real != dirpath and (real + os.sep).startswith(inside)) or not images._first_visit(dirpath, seen_folders):
            dirnames[:] = []
            continue
        rel = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not images.is_excluded(d, rel, excludes))
        wanted = sorted(
            n
            for n in filenames
            if images.is_indexed_name(n) and not n.startswith(".") and not images.is_excluded(n, rel, excludes)
        )
        rendered = images._rendered_by_stem(wanted)
        for name in wanted:
            path = os.path.join(dirpath, name)
            twin = rendered.get(os.path.splitext(name)[0].lower()) if images.is_raw_name(name) else None
            if twin is not None:
                yield ScanProblem(path, images.RAW_TWIN.format(twin=twin))
                continue
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                yield ScanProblem(images._printable(path), "not UTF-8")
                continue
            try:
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    st = os.stat(path)
                    if (os.path.realpath(path) + os.sep).startswith(inside):
                        continue
            except OSError as exc:
                yield ScanProblem(path, f"unreadable: {exc.strerror or exc}")
                continue
            if not stat.S_ISREG(st.st_mode):
                yield ScanProblem(path, "not a regular file")
            elif (st.st_dev, st.st_ino) not in seen_files:
                seen_files.add((st.st_dev, st.st_ino))
                yield FileEntry(path, st.st_size, st.st_mtime_ns)
    yield from problems()


def _coarse(found):
    """Scan results with the wording of two reasons cut to their kind (the reference words them shortly)."""
    for item in found:
        if isinstance(item, ScanProblem) and item.reason.startswith(("its name is not valid UTF-8", "not a regular")):
            yield ScanProblem(item.path, "not UTF-8" if "UTF-8" in item.reason else "not a regular file")
        else:
            yield item


def test_scan_yields_what_the_plain_walk_yields_in_its_order(tmp_path):
    """The fast scan (one scandir per folder, each extension read once) against the plain os.walk reference, on a
    tree with every case the scan decides: nesting, hidden and excluded folders and files, links to folders inside
    and outside and a link cycle, links to files inside and outside, a dangling link, a hard link, a FIFO, RAW files
    with and without their camera JPEG, a name that is not UTF-8, dotted and upper-case names, videos."""
    root = rich_tree(tmp_path)
    for excludes in ((), RICH_EXCLUDES):
        expected = list(_reference_scan(root, excludes))
        assert list(_coarse(images.scan(root, excludes))) == expected
        kinds = {type(item).__name__ for item in expected}
        assert kinds == {"FileEntry", "ScanProblem"} and len(expected) > 15  # the tree does exercise both


def test_file_extensions_are_read_as_splitext_reads_them():
    names = ["a.jpg", ".jpg", "..jpg", ".a.jpg", "a..JPG", "a.", "a", "...", "a.b.c", ".a.", "x.TiFF", "..a.png", ""]
    assert [images._extension(n) for n in names] == [os.path.splitext(n)[1].lower() for n in names]
