"""Images: open safely (pixel limit, clear errors), standardize to a 224 px shorter side.

``standardize`` is shared by the shard builder, the generated-world builder and the evaluation
readers, so every image in the project is resized the same way.
"""

from __future__ import annotations

import io
import os
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.format import IMAGE_SHORT_SIDE

# 64 MP: larger than any photo corpus we read; a file claiming more is a decompression bomb or
# a panorama we would only shrink anyway.
MAX_PIXELS = 64_000_000
# Beyond this a 224 px shorter side makes the longer side absurd (a 1x5000 strip -> 224x1.1M).
MAX_ASPECT = 20.0
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, UnidentifiedImageError)


class BadImage(ValueError):
    """Unusable image; the message starts with a reason kind (``image_too_large: ...``)."""


def open_image(source: str | os.PathLike | bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image lazily after checking its header: pixels are decoded by ``standardize``.

    Raises BadImage naming the file when it is not an image or claims more than ``max_pixels``.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit; ours is checked right below with a clearer message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError as exc:
        raise BadImage(f"missing_image: {name} does not exist") from exc
    except Image.DecompressionBombError as exc:  # PIL's own hard limit, far above ours
        raise BadImage(f"image_too_large: {name}: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise BadImage(f"image_decode: cannot open {name}: {exc}") from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise BadImage(
            f"image_too_large: {name} is {width}x{height} = {width * height:,} px > {max_pixels:,} px limit"
        )
    return image


def target_size(width: int, height: int, short_side: int = IMAGE_SHORT_SIDE) -> tuple[int, int]:
    """Size with the shorter side exactly ``short_side`` and the aspect ratio kept."""
    scale = short_side / min(width, height)
    return (
        short_side if width <= height else max(short_side, round(width * scale)),
        short_side if height <= width else max(short_side, round(height * scale)),
    )


def standardize(image: Image.Image, short_side: int = IMAGE_SHORT_SIDE) -> Image.Image:
    """Any PIL image -> RGB, EXIF orientation applied, shorter side ``short_side`` px."""
    try:
        width, height = image.size
        if min(width, height) < 1:
            raise BadImage(f"image_empty: size {width}x{height}")
        if max(width, height) / min(width, height) > MAX_ASPECT:
            raise BadImage(f"image_aspect: {width}x{height} is more extreme than {MAX_ASPECT:.0f}:1")
        size = target_size(width, height, short_side)
        if image.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below `size`): a big photo then
            # costs a fraction of a full decode.
            image.draft("RGB", size)
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        # The shorter side is unchanged by an EXIF rotation, so recompute only the orientation.
        size = target_size(*image.size, short_side)
        if image.size != size:
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        return image
    except BadImage:
        raise
    except _DECODE_ERRORS as exc:
        raise BadImage(f"image_decode: {getattr(image, 'filename', '') or 'image'}: {exc}") from exc
