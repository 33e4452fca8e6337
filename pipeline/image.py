"""Images: open safely (pixel limit, clear errors), convert any mode to 8-bit RGB by its value
range (``to_rgb``: prep, the loader, the test-set readers and ``ground`` all use it), standardize to
a 224 px shorter side, and the geometry of the evaluation crop.

``standardize`` is shared by the shard builder and the generated-world builder, so every stored
image is resized the same way. ``centre_crop`` is the one owner of the evaluation transform's
geometry (DenseAV's ``Resize(size)`` + ``CenterCrop(size)``): the pixels of an image
(``pipeline.data.transform.eval_image``), the masks of the test sets
(``pipeline.testsets.common.resize_crop_labels``) and the box ``ground`` places its maps in all
follow it, so they stay aligned pixel for pixel.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
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
        raise BadImage(f"image_too_large: {name} is {width}x{height} = {width * height:,} px > {max_pixels:,} px limit")
    return image


# What a transparent pixel shows once the alpha channel is gone: white, as a viewer shows the
# picture on a page (the colour stored under alpha 0 is often arbitrary, e.g. black).
BACKGROUND = (255, 255, 255)
_ROWS = 512  # rows per step when scaling a 16/32-bit picture to 8 bits: bounded temporaries
_ALPHA_MODES = ("LA", "PA", "RGBA", "RGBa")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, each by its value range (the one converter of the project).

    * 8-bit modes (1, L, P, RGB, CMYK, YCbCr, LAB, HSV): PIL's conversion, which is exact there.
    * Alpha (LA, PA, RGBA, RGBa, P or L or RGB with a transparent colour): composited over
      ``BACKGROUND``.
    * ``I;16`` (any byte order): 16-bit, 0..65535 -> 0..255 (divided by 257, rounded).
    * ``I`` (32-bit integers): the 16-bit range when every value lies in 0..65535 (how PIL opens
      16-bit PGM/PPM and some TIFFs), else its min..max stretched to 0..255.
    * ``F`` (32-bit float): 0..1 when every finite value lies there, else its finite min..max
      stretched to 0..255; NaN and infinite pixels become 0 (a constant picture stretched: all 0).

    PIL's own ``convert("RGB")`` clips the wide modes at 255 instead, so a 16-bit photo came out
    nearly white. Raises BadImage (``image_mode: ...``) for a mode PIL cannot convert.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    try:
        if mode in ("I", "F") or mode.startswith("I;16"):
            return Image.fromarray(_grey8(image), "L").convert("RGB")
        if mode == "La":  # premultiplied: PIL converts it to RGBA only through LA
            image, mode = image.convert("LA"), "LA"
        if mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            out = Image.new("RGB", image.size, BACKGROUND)
            out.paste(rgba, mask=rgba.getchannel("A"))
            return out
        return image.convert("RGB")
    except ValueError as exc:  # "conversion from X to RGB not supported"
        raise BadImage(f"image_mode: {getattr(image, 'filename', '') or 'image'} has mode {mode}: {exc}") from exc


def _grey8(image: Image.Image) -> np.ndarray:
    """A one-channel 16/32-bit or float picture -> uint8 ``[H, W]`` by the rules of ``to_rgb``."""
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        lo, scale = 0.0, 255.0 / 65535.0
    else:
        finite = [v[np.isfinite(v)] for v in np.array_split(values, max(1, values.shape[0] // _ROWS))]
        finite = [v for v in finite if v.size]
        lo = float(min((v.min() for v in finite), default=0.0))
        hi = float(max((v.max() for v in finite), default=0.0))
        if image.mode == "F" and lo >= 0.0 and hi <= 1.0:
            lo, scale = 0.0, 255.0
        elif image.mode == "I" and lo >= 0 and hi <= 65535:
            lo, scale = 0.0, 255.0 / 65535.0
        else:
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.empty(values.shape, dtype=np.uint8)
    for start in range(0, values.shape[0], _ROWS):
        rows = values[start : start + _ROWS].astype(np.float64)
        rows = np.nan_to_num((rows - lo) * scale, nan=0.0, posinf=0.0, neginf=0.0)
        out[start : start + _ROWS] = np.clip(np.rint(rows), 0, 255)
    return out


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
        image = to_rgb(ImageOps.exif_transpose(image))
        # The shorter side is unchanged by an EXIF rotation, so recompute only the orientation.
        size = target_size(*image.size, short_side)
        if image.size != size:
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        return image
    except BadImage:
        raise
    except _DECODE_ERRORS as exc:
        raise BadImage(f"image_decode: {getattr(image, 'filename', '') or 'image'}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# the evaluation crop


@dataclass(frozen=True)
class CentreCrop:
    """Where the evaluation transform takes a picture: resized to ``resized`` (width, height), then
    the ``size`` x ``size`` square ``box`` (left, top, right, bottom, in resized pixels) is kept."""

    resized: tuple[int, int]
    box: tuple[int, int, int, int]

    def input_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``box`` in the input picture's pixels (rounded to whole pixels)."""
        (nw, nh), (left, top, right, bottom) = self.resized, self.box
        return (
            round(left * width / nw),
            round(top * height / nh),
            round(right * width / nw),
            round(bottom * height / nh),
        )


def check_eval_size(width: int, height: int, name: str = "image", size: int = IMAGE_SHORT_SIDE) -> None:
    """Refuse a picture the evaluation resize cannot take sensibly: empty, or more elongated than
    ``MAX_ASPECT`` (a 1x500 strip would become 224x112000 px). Cheap: the size comes from the header."""
    if min(width, height) < 1:
        raise BadImage(f"image_empty: {name} is {width}x{height} px; give a picture with pixels")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        long = int(size * max(width, height) / min(width, height))
        resized = (size, long) if width <= height else (long, size)
        raise BadImage(
            f"image_aspect: {name} is {width}x{height} px, more elongated than {MAX_ASPECT:.0f}:1 "
            f"(its shorter side at {size} px would make it {resized[0]}x{resized[1]} px); "
            "crop it closer to a square"
        )


def centre_crop(width: int, height: int, size: int, name: str = "image") -> CentreCrop:
    """The geometry of torchvision's ``Resize(size)`` + ``CenterCrop(size)`` on a ``width`` x
    ``height`` picture, as DenseAV evaluates (``denseav/data/AVDatasets.py``).

    The shorter side becomes ``size`` and the longer ``int(size * long / short)``: truncated, not
    rounded (420x300 -> 313x224). The crop offset is ``int(round(excess / 2.0))``, Python's round,
    which sends halves to the even integer (an excess of 1 gives 0, of 3 gives 2). A picture whose
    shorter side is already ``size`` is not resized. Raises ``BadImage`` naming ``name`` for a
    picture ``check_eval_size`` refuses.
    """
    check_eval_size(width, height, name, size)
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    nw, nh = (size, new_long) if width <= height else (new_long, size)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return CentreCrop((nw, nh), (left, top, left + size, top + size))
