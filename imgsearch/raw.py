"""Camera RAW files (DNG, CR2, NEF, ARW...) through LibRaw (rawpy): the only module that imports rawpy.

The camera's embedded preview is used where it is at least the model's input size: it is the camera's own
rendering, and reading it costs a JPEG decode instead of demosaicing the sensor data (rclip reads previews for the
same reason). Without one large enough, the sensor data is developed, at half size where that still covers the
model's input. Either way the image comes out upright, as the camera held it.
"""

from __future__ import annotations

import functools
import io

from PIL import Image, ImageOps

from .images import ImageSkipped, bytes_hash, exif_taken_at, guard_size
from .records import ImageDetails

PACKAGE = "rawpy"
MISSING = "needs rawpy to read camera RAW files: install it with `pip install rawpy`; the next index run retries it"
# LibRaw's flip (the camera's orientation) as the transpose that makes the image upright.
_FLIPS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


@functools.cache  # asked once per skipped RAW file by a run: a failed import is not cached by Python
def available() -> bool:
    try:
        import rawpy  # noqa: F401
    except ImportError:
        return False
    return True


def decode(data: bytes, min_side: int, max_pixels: int) -> tuple[Image.Image, ImageDetails]:
    """(upright RGB image, details) of a RAW file's bytes; ImageSkipped says why it cannot be read."""
    try:
        import rawpy
    except ImportError:
        raise ImageSkipped(MISSING) from None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            sizes = raw.sizes
            width, height = (sizes.height, sizes.width) if sizes.flip in (5, 6) else (sizes.width, sizes.height)
            guard_size(width, height, max_pixels)
            image, taken = _preview(raw, rawpy, min_side, sizes.flip)
            if image is None:  # LibRaw's development applies the flip itself
                half = min(sizes.width, sizes.height) >= 2 * max(min_side, 1)
                image = Image.fromarray(raw.postprocess(use_camera_wb=True, half_size=half, output_bps=8))
    except rawpy.LibRawError as exc:
        raise ImageSkipped(f"corrupt or unsupported RAW file: {exc}") from None
    except (MemoryError, ValueError) as exc:
        raise ImageSkipped(f"corrupt RAW file: {exc}") from None
    return image, ImageDetails(width, height, bytes_hash(data), "raw", taken)


def _preview(raw, rawpy, min_side: int, flip: int) -> tuple[Image.Image | None, float | None]:
    """(the embedded preview, upright, and its EXIF date) when it covers ``min_side``, else (None, None)."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None, None
    if thumb.format == rawpy.ThumbFormat.BITMAP:
        image = Image.fromarray(thumb.data)
        return (_upright(image, flip), None) if min(image.size) >= min_side else (None, None)
    try:
        with Image.open(io.BytesIO(thumb.data)) as opened:
            if min(opened.size) < min_side:
                return None, None
            taken = exif_taken_at(opened)
            if opened.getexif().get(0x0112, 1) != 1:  # the preview says how it was held: trusted over the flip
                return ImageOps.exif_transpose(opened).convert("RGB"), taken
            return _upright(opened.convert("RGB"), flip), taken
    except (OSError, SyntaxError, ValueError):
        return None, None  # a damaged preview: the sensor data may still be fine


def _upright(image: Image.Image, flip: int) -> Image.Image:
    return image.transpose(_FLIPS[flip]) if flip in _FLIPS else image
