"""Pictures of a grounding: an overlay with a colour bar and the head's name, and the MP4 of
the heatmaps over time with the clip as its sound track (the bundled ffmpeg).

Colours follow ``evaluation.report.colorize``; the scale is min..max of the map (or a given
range, so the frames of a video share one scale). Pixels the model did not see (NaN) are greyed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from evaluation.report import colorize
from pipeline import ffmpeg
from pipeline.format import SAMPLE_RATE

BAR_WIDTH = 56  # colour bar and its numbers, right of the picture
CAPTION = 18  # label strip above the picture
ALPHA = 0.5
VIDEO_HEIGHT = 288  # panels of the MP4 are scaled to this height ...
VIDEO_WIDTH = 1024  # ... or to this width where that is narrower (a 20:1 panorama), so three panels
# stay within what the H.264 encoder takes and a frame costs a few MB


def value_range(maps: np.ndarray) -> tuple[float, float]:
    finite = np.asarray(maps)[np.isfinite(maps)]
    if finite.size == 0:
        return 0.0, 1.0
    return float(finite.min()), float(finite.max())


def overlay(
    image: Image.Image, heatmap: np.ndarray, label: str, *, vmin: float | None = None, vmax: float | None = None
) -> Image.Image:
    """``image`` with ``heatmap`` (any resolution, resized to the image) blended in, the label on
    top and a colour bar with the scale's ends on the right."""
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
    sheet = Image.new("RGB", (base.width + BAR_WIDTH, base.height + CAPTION), "white")
    sheet.paste(picture, (0, CAPTION))
    draw = ImageDraw.Draw(sheet)
    draw.text((3, 3), label, fill="black")
    _colour_bar(sheet, draw, base.width, CAPTION, base.height, lo, hi)
    return sheet


def _colour_bar(
    sheet: Image.Image, draw: ImageDraw.ImageDraw, x: int, y: int, height: int, lo: float, hi: float
) -> None:
    ramp = np.linspace(1.0, 0.0, max(height, 2))[:, None].repeat(12, 1)
    sheet.paste(Image.fromarray(colorize(ramp)), (x + 4, y))
    draw.text((x + 18, y), f"{hi:.3g}", fill="black")
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


def video(path: Path, grounding, names: list[str], progress=None) -> Path:
    """An MP4 with one frame per audio frame (~0.18 s): the panels of ``names`` side by side over
    the frame's picture, one colour scale per head over the whole clip, and the clip as sound."""
    path = Path(path)
    times = grounding.times
    ranges = {n: value_range(grounding.maps.low[n]) for n in names}
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
                            f"{n}  t={times[t]:.2f} s",
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
