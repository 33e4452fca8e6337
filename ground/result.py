"""``Grounding``: what one ``Grounder.ground`` call returns, and its JSON summary.

Maps are stored at the model's feature resolution and brought to the display resolution on first
access (``FrameMaps``). The display resolution is the input's, or, for a picture whose longer side
exceeds ``DISPLAY_SIDE``, the input scaled down to that: the model sees a 224 px square whatever the
input, so a map at 8000x8000 px would only interpolate the same few hundred values, at 256 MB per
frame. Pixels the model never saw (outside the centre crop, see ``docs/ground.md``) are NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from pipeline.format import SAMPLE_RATE

TOTAL = "total"
# Longest side of the maps and the picture a Grounding keeps (and draws): bounds the memory of
# `ground` by this, not by the input's size (docs/ground.md, "Limits").
DISPLAY_SIDE = 1024


def display_size(size: tuple[int, int], longest: int = DISPLAY_SIDE) -> tuple[int, int]:
    """``size`` (W, H), or scaled down so that its longer side is ``longest``."""
    width, height = size
    if max(width, height) <= longest:
        return width, height
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def display_picture(image: Image.Image, longest: int = DISPLAY_SIDE) -> Image.Image:
    """The picture a Grounding keeps: ``image`` itself, or scaled to ``display_size``."""
    size = display_size(image.size, longest)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def scale_box(
    box: tuple[int, int, int, int], source: tuple[int, int], target: tuple[int, int]
) -> tuple[int, int, int, int]:
    """A (left, top, right, bottom) box in a picture of size ``source`` -> the same box in ``target``."""
    sx, sy = target[0] / source[0], target[1] / source[1]
    left, top, right, bottom = box
    return round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)


def place(maps: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """``[N, h, w]`` maps of the crop ``box`` (left, top, right, bottom in pixels of a picture of
    ``size``) -> ``[N, H, W]`` float32 at ``size`` (W, H), bilinear inside the box, NaN outside."""
    width, height = size
    left, top, right, bottom = box
    out = np.full((maps.shape[0], height, width), np.nan, dtype=np.float32)
    if maps.shape[0]:
        t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).unsqueeze(1)
        inside = F.interpolate(t, size=(bottom - top, right - left), mode="bilinear", align_corners=False)
        out[:, top:bottom, left:right] = inside.squeeze(1).numpy()
    return out


class FrameMaps(Mapping):
    """name -> float32 ``[T, H, W]`` at the display resolution (``size``), upsampled from the
    model's ``[T, h, w]`` on first access and kept."""

    def __init__(self, low: dict[str, np.ndarray], box: tuple[int, int, int, int], size: tuple[int, int]):
        self.low = low  # name -> [T, h, w] at the model's feature resolution
        self.box, self.size = box, size
        self._full: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._full:
            self._full[name] = place(self.low[name], self.box, self.size)
        return self._full[name]

    def frame_at(self, name: str, t: int, size: tuple[int, int]) -> np.ndarray:
        """Frame ``t`` of ``name`` placed on a picture of ``size`` (the picture scaled), without
        upsampling the other frames."""
        return place(self.low[name][t : t + 1], scale_box(self.box, self.size, size), size)[0]

    def __iter__(self):
        return iter(self.low)

    def __len__(self) -> int:
        return len(self.low)


def _peak(mean_map: np.ndarray, input_size: tuple[int, int]) -> dict:
    """The mean map's maximum, at the centre of its pixel in input pixels (the map may be smaller)."""
    if not np.isfinite(mean_map).any():
        return {"x": None, "y": None, "value": None}
    y, x = np.unravel_index(int(np.nanargmax(mean_map)), mean_map.shape)
    (width, height), (h, w) = input_size, mean_map.shape
    px = x if w == width else min(width - 1, int((x + 0.5) * width / w))
    py = y if h == height else min(height - 1, int((y + 0.5) * height / h))
    return {"x": int(px), "y": int(py), "value": float(mean_map[y, x])}


def _number(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _segments(names: list[str], times: np.ndarray, hop: float) -> list[dict]:
    """Runs of frames with the same dominant head as ``{head, start, end}`` in seconds."""
    out: list[dict] = []
    for name, t in zip(names, times):
        start, end = float(t - hop / 2), float(t + hop / 2)
        if out and out[-1]["head"] == name:
            out[-1]["end"] = round(end, 3)
        else:
            out.append({"head": name, "start": round(max(start, 0.0), 3), "end": round(end, 3)})
    return out


@dataclass
class Grounding:
    heads: list[str]  # head names in head-index order, then "total" (max over heads, Eq. 3)
    maps: Mapping[str, np.ndarray]  # name -> float32 [T, H, W] at the display resolution (image.size)
    mean_maps: dict[str, np.ndarray]  # name -> [H, W] over the valid frames (or the window)
    activation: dict[str, np.ndarray]  # name -> [T]: mean over frequency of the spatial max
    times: np.ndarray  # [T] seconds, frame centres
    image: Image.Image  # the input, RGB, at the display resolution (display_picture)
    audio: np.ndarray  # the 16 kHz mono clip used
    description: dict  # model, which head is which, preprocessing
    # a video grounded at every frame: the picture of each frame, at the MP4's height (render.thumbnail)
    frames: list[Image.Image] | None = field(default=None)
    input_size: tuple[int, int] | None = field(default=None)  # (W, H) of the input; None: image.size

    @property
    def size(self) -> tuple[int, int]:
        """The input picture's (W, H), which ``summary``'s peaks and ``crop_box`` are in."""
        return tuple(self.input_size) if self.input_size is not None else self.image.size

    @property
    def duration(self) -> float:
        return float(self.audio.shape[0]) / SAMPLE_RATE

    def dominant(self) -> list[str]:
        """Per frame, the head (not "total") with the highest activation."""
        names = [h for h in self.heads if h != TOTAL]
        act = np.stack([np.nan_to_num(self.activation[h], nan=-np.inf) for h in names])
        return [names[i] for i in act.argmax(0)]

    def summary(self) -> dict:
        """JSON-able: per head the peak of its mean map (input pixels), its activation over time,
        which head dominates when, the duration and the model's description."""
        hop = float(self.times[1] - self.times[0]) if len(self.times) > 1 else self.duration
        dominant = self.dominant()
        return {
            "duration_s": round(self.duration, 6),
            "image_size": list(self.size),
            "map_size": list(self.image.size),
            "times_s": [round(float(t), 4) for t in self.times],
            "heads": {
                name: {
                    "peak": _peak(self.mean_maps[name], self.size),
                    "activation": [_number(v) for v in self.activation[name]],
                    "mean_activation": _number(np.nanmean(self.activation[name])),
                }
                for name in self.heads
            },
            "dominant": dominant,
            "dominant_segments": _segments(dominant, self.times, hop),
            "model": self.description,
        }
