"""Pictures of a grounding: an overlay with a colour bar and the head's name, and the MP4 of
the heatmaps over time with the clip as its sound track (the bundled ffmpeg).

Colours are ``evaluation.report.colorize``'s viridis, whose lightness rises with the value. Which
values the colours span is ``colour_ranges``'s rule: by default (``shared``) the heads share one
scale, the min..max over all their maps, so that the same colour means the same similarity in the
sound and the speech panel, and the total (the element-wise max over heads, Eq. 3) has its own
min..max; ``per-map`` gives every map its own min..max. The video's frames share their map's scale
over the whole clip. Pixels the model did not see (NaN) are greyed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from evaluation.report import colorize
from ground.result import TOTAL
from pipeline import ffmpeg
from pipeline.format import SAMPLE_RATE

BAR_WIDTH = 56  # colour bar and its numbers, right of the picture
CAPTION = 18  # label strip above the picture
ALPHA = 0.5
VIDEO_HEIGHT = 288  # panels of the MP4 are scaled to this height ...
VIDEO_WIDTH = 1024  # ... or to this width where that is narrower (a 20:1 panorama), so three panels
# stay within what the H.264 encoder takes and a frame costs a few MB
SCALES = ("shared", "per-map")  # how the maps of one picture (or video) are put on colour scales


def value_range(*maps: np.ndarray) -> tuple[float, float]:
    """min..max of the finite values of all ``maps`` together; 0..1 where none is finite."""
    finite = [m[np.isfinite(m)] for m in (np.asarray(x) for x in maps)]
    if sum(f.size for f in finite) == 0:
        return 0.0, 1.0
    return float(min(f.min() for f in finite if f.size)), float(max(f.max() for f in finite if f.size))


def colour_ranges(maps: dict[str, np.ndarray], scale: str = "shared") -> dict[str, tuple[float, float]]:
    """name -> the (low, high) values the colour map spans for that map.

    ``shared``: every head (each name but ``total``) gets the one min..max over all the heads'
    maps, since the heads' similarities are on the same scale and a per-map stretch would make a
    flat map look as peaked as a sharp one; the total, which is at least every head's value
    everywhere, gets its own min..max. ``per-map``: each map its own min..max."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    ranges = {name: value_range(m) for name, m in maps.items()}
    heads = [name for name in maps if name != TOTAL]
    if scale == "shared" and len(heads) > 1:
        shared = value_range(*(maps[name] for name in heads))
        ranges.update({name: shared for name in heads})
    return ranges


def scale_label(name: str, names: list[str], scale: str) -> str:
    """The panel's title: the map's name and which scale its colours follow."""
    heads = [n for n in names if n != TOTAL]
    if scale == "shared" and name != TOTAL and len(heads) > 1:
        return f"{name}: scale shared by the heads"
    return f"{name}: own scale"


def overlays(grounding, scale: str = "shared") -> list[Image.Image]:
    """One overlay per map of ``grounding`` (heads, then the total) over its mean maps, coloured
    by ``colour_ranges(..., scale)``, each titled with its name and scale and its peak circled."""
    ranges = colour_ranges({name: grounding.mean_maps[name] for name in grounding.heads}, scale)
    return [
        overlay(
            grounding.image,
            grounding.mean_maps[name],
            scale_label(name, grounding.heads, scale),
            vmin=ranges[name][0],
            vmax=ranges[name][1],
            mark_peak=True,
        )
        for name in grounding.heads
    ]


def overlay(
    image: Image.Image,
    heatmap: np.ndarray,
    label: str,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    mark_peak: bool = False,
) -> Image.Image:
    """``image`` with ``heatmap`` (any resolution, resized to the image) blended in, the label on
    top and a colour bar with the scale's ends on the right; ``mark_peak`` circles the map's
    maximum (a map that is dim on a shared scale still shows where it is strongest)."""
    base = image.convert("RGB")
    heat = np.asarray(heatmap, dtype=np.float32)
    lo, hi = value_range(heat)
    lo, hi = lo if vmin is None else vmin, hi if vmax is None else vmax
    unit = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    colours = Image.fromarray(colorize(unit)).resize(base.size, Image.BILINEAR)
    seen = Image.fromarray(np.isfinite(heat).astype(np.uint8) * 255).resize(base.size, Image.NEAREST)
    blended = Image.blend(base, colours, ALPHA)
    grey = Image.blend(base.convert("L").convert("RGB"), Image.new("RGB", base.size, "black"), 0.5)
    picture = Image.composite(blended, grey, seen)
    if mark_peak and np.isfinite(heat).any() and np.nanmax(heat) > np.nanmin(heat):
        _circle_peak(picture, heat)
    sheet = Image.new("RGB", (base.width + BAR_WIDTH, base.height + CAPTION), "white")
    sheet.paste(picture, (0, CAPTION))
    draw = ImageDraw.Draw(sheet)
    draw.text((3, 3), label, fill="black")
    _colour_bar(sheet, draw, base.width, CAPTION, base.height, lo, hi)
    return sheet


def _circle_peak(picture: Image.Image, heat: np.ndarray) -> None:
    """A circle around the map's maximum (its first, in row order), black under white so that it shows
    on the dark and the light end of the colour map alike; drawn on the picture, so clipped to it."""
    y, x = np.unravel_index(int(np.nanargmax(heat)), heat.shape)
    cx, cy = (x + 0.5) * picture.width / heat.shape[1], (y + 0.5) * picture.height / heat.shape[0]
    r = max(4, round(min(picture.size) / 30))
    draw = ImageDraw.Draw(picture)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline="black", width=3)
    draw.ellipse((cx - r + 1, cy - r + 1, cx + r - 1, cy + r - 1), outline="white", width=1)


def _colour_bar(
    sheet: Image.Image, draw: ImageDraw.ImageDraw, x: int, y: int, height: int, lo: float, hi: float
) -> None:
    ramp = np.linspace(1.0, 0.0, max(height, 2))[:, None].repeat(12, 1)
    sheet.paste(Image.fromarray(colorize(ramp)), (x + 4, y))
    draw.text((x + 18, y), f"{hi:.3g}", fill="black")
    if height >= 48:  # room for the middle value between the ends' numbers
        draw.text((x + 18, y + height // 2 - 6), f"{(lo + hi) / 2:.3g}", fill="black")
    draw.text((x + 18, y + height - 12), f"{lo:.3g}", fill="black")


def thumbnail(picture: Image.Image) -> Image.Image:
    """``picture`` scaled to the MP4's height (``VIDEO_HEIGHT``), or to ``VIDEO_WIDTH`` where it
    would be wider than that."""
    scale = min(VIDEO_HEIGHT / picture.height, VIDEO_WIDTH / picture.width)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    if size == picture.size:
        return picture
    return picture.resize(size, Image.BILINEAR, reducing_gap=2.0)


def sheet(panels: list[Image.Image]) -> Image.Image:
    """Pictures side by side, top-aligned, on white."""
    row = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        row.paste(p, (x, 0))
        x += p.width
    return row


def video(path: Path, grounding, names: list[str], progress=None, scale: str = "shared") -> Path:
    """An MP4 with one frame per audio frame (~0.18 s): the panels of ``names`` side by side over
    the frame's picture, coloured by ``colour_ranges(..., scale)`` over the whole clip's frames (one
    scale for the heads, one for the total by default), and the clip as sound."""
    path = Path(path)
    times = grounding.times
    ranges = colour_ranges({n: grounding.maps.low[n] for n in names}, scale)
    with tempfile.TemporaryDirectory(prefix="ground-video-") as tmp:
        tmp = Path(tmp)
        size = None
        # Raw RGB frames in one file: PNG-compressing every frame would cost more than encoding the video.
        with open(tmp / "frames.rgb", "wb") as raw:
            for t in range(len(times)):
                small = thumbnail(grounding.frames[t] if grounding.frames else grounding.image)
                row = sheet(
                    [
                        overlay(
                            small,
                            grounding.maps.frame_at(n, t, small.size),
                            f"{scale_label(n, names, scale)}  t={times[t]:.2f} s",
                            vmin=ranges[n][0],
                            vmax=ranges[n][1],
                        )
                        for n in names
                    ]
                )
                size = size or row.size
                raw.write(row.tobytes())
                if progress is not None:
                    progress(1)
        sf.write(tmp / "audio.wav", grounding.audio, SAMPLE_RATE, subtype="PCM_16")
        path.parent.mkdir(parents=True, exist_ok=True)
        ffmpeg.run(
            [
                "-y",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "-s",
                f"{size[0]}x{size[1]}",
                "-framerate",
                f"{len(times) / grounding.duration:.6f}",
                "-i",
                str(tmp / "frames.rgb"),
                "-i",
                str(tmp / "audio.wav"),
                "-vf",
                "pad=ceil(iw/2)*2:ceil(ih/2)*2:color=white",
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-shortest",
                "file:" + str(path.resolve()),
            ]
        )
    return path
