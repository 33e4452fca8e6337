"""``Grounding``: what one ``Grounder.ground`` call returns, and its JSON summary.

Maps are stored at the model's feature resolution and brought to the input image's resolution
on first access (``FrameMaps``): a 12 MP photo times ~55 frames would otherwise cost gigabytes per
head. Pixels the model never saw (outside the centre crop, see ``docs/ground.md``) are NaN.
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


def place(maps: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """``[N, h, w]`` maps of the crop ``box`` (left, top, right, bottom in input pixels) ->
    ``[N, H, W]`` float32 at the input ``size`` (W, H), bilinear inside the box, NaN outside."""
    width, height = size
    left, top, right, bottom = box
    out = np.full((maps.shape[0], height, width), np.nan, dtype=np.float32)
    if maps.shape[0]:
        t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).unsqueeze(1)
        inside = F.interpolate(t, size=(bottom - top, right - left), mode="bilinear", align_corners=False)
        out[:, top:bottom, left:right] = inside.squeeze(1).numpy()
    return out


class FrameMaps(Mapping):
    """name -> float32 ``[T, H, W]`` at the input resolution, upsampled from the model's
    ``[T, h, w]`` on first access and kept."""

    def __init__(self, low: dict[str, np.ndarray], box: tuple[int, int, int, int], size: tuple[int, int]):
        self.low = low  # name -> [T, h, w] at the model's feature resolution
        self.box, self.size = box, size
        self._full: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._full:
            self._full[name] = place(self.low[name], self.box, self.size)
        return self._full[name]

    def frame_at(self, name: str, t: int, size: tuple[int, int]) -> np.ndarray:
        """Frame ``t`` of ``name`` placed on a picture of ``size`` (the input scaled), without
        upsampling the other frames to the input resolution."""
        sx, sy = size[0] / self.size[0], size[1] / self.size[1]
        left, top, right, bottom = self.box
        box = (round(left * sx), round(top * sy), round(right * sx), round(bottom * sy))
        return place(self.low[name][t : t + 1], box, size)[0]

    def __iter__(self):
        return iter(self.low)

    def __len__(self) -> int:
        return len(self.low)


def _peak(mean_map: np.ndarray) -> dict:
    if not np.isfinite(mean_map).any():
        return {"x": None, "y": None, "value": None}
    y, x = np.unravel_index(int(np.nanargmax(mean_map)), mean_map.shape)
    return {"x": int(x), "y": int(y), "value": float(mean_map[y, x])}


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
    maps: Mapping[str, np.ndarray]  # name -> float32 [T, H, W] at the input image's resolution
    mean_maps: dict[str, np.ndarray]  # name -> [H, W] over the valid frames (or the window)
    activation: dict[str, np.ndarray]  # name -> [T]: mean over frequency of the spatial max
    times: np.ndarray  # [T] seconds, frame centres
    image: Image.Image  # the input, RGB
    audio: np.ndarray  # the 16 kHz mono clip used
    description: dict  # model, which head is which, preprocessing
    # a video grounded at every frame: the picture of each frame, at the MP4's height (render.thumbnail)
    frames: list[Image.Image] | None = field(default=None)

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
            "image_size": list(self.image.size),
            "times_s": [round(float(t), 4) for t in self.times],
            "heads": {
                name: {
                    "peak": _peak(self.mean_maps[name]),
                    "activation": [_number(v) for v in self.activation[name]],
                    "mean_activation": _number(np.nanmean(self.activation[name])),
                }
                for name in self.heads
            },
            "dominant": dominant,
            "dominant_segments": _segments(dominant, self.times, hop),
            "model": self.description,
        }
