"""Image transforms: DenseAV's training augmentation and the evaluation resize + centre crop.

Written on PIL + numpy (no torchvision dependency) with an explicit ``np.random.Generator`` so the
loader's per-worker seeds make augmentation reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32) * 255
_INV_STD = 1.0 / (np.array(IMAGENET_STD, dtype=np.float32) * 255)


@dataclass
class AugmentConfig:
    """DenseAV's training recipe: RandomResizedCrop, flip, ColorJitter(0.2 x4), RandomGrayscale."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter: float = 0.2  # brightness/contrast/saturation factors in [1-j, 1+j]; hue shift in [-j, j] turns
    jitter_prob: float = 1.0
    grayscale_prob: float = 0.1


def _draft(image: Image.Image, size: int) -> Image.Image:
    # JPEG can decode at 1/2, 1/4, 1/8 scale for almost nothing; only used when that stays >= size
    if image.format == "JPEG" and min(image.size) >= 2 * size:
        image.draft("RGB", (size, size))
    return image.convert("RGB")


def eval_image(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and take the centre ``size`` x ``size`` crop."""
    image = _draft(image, size)
    w, h = image.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def _random_resized_box(w: int, h: int, rng: np.random.Generator, cfg: AugmentConfig):
    area = w * h
    log_ratio = (math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*cfg.scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x = int(rng.integers(0, w - cw + 1))
            y = int(rng.integers(0, h - ch + 1))
            return x, y, cw, ch
    # fall back to the largest centred crop inside the ratio bounds (as torchvision does)
    in_ratio = w / h
    if in_ratio < cfg.ratio[0]:
        cw, ch = w, int(round(w / cfg.ratio[0]))
    elif in_ratio > cfg.ratio[1]:
        ch, cw = h, int(round(h * cfg.ratio[1]))
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def _shift_hue(image: Image.Image, turns: float) -> Image.Image:
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(turns * 255))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def train_image(image: Image.Image, size: int, rng: np.random.Generator,
                cfg: AugmentConfig = AugmentConfig()) -> Image.Image:
    image = _draft(image, size)
    x, y, cw, ch = _random_resized_box(*image.size, rng, cfg)
    image = image.resize((size, size), Image.BILINEAR, box=(x, y, x + cw, y + ch))
    if rng.random() < cfg.flip_prob:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if cfg.jitter > 0 and rng.random() < cfg.jitter_prob:
        j = cfg.jitter
        for op in rng.permutation(4):  # torchvision applies the four jitters in random order
            if op == 0:
                image = ImageEnhance.Brightness(image).enhance(rng.uniform(1 - j, 1 + j))
            elif op == 1:
                image = ImageEnhance.Contrast(image).enhance(rng.uniform(1 - j, 1 + j))
            elif op == 2:
                image = ImageEnhance.Color(image).enhance(rng.uniform(1 - j, 1 + j))
            else:
                image = _shift_hue(image, rng.uniform(-j, j))
    if rng.random() < cfg.grayscale_prob:
        image = image.convert("L").convert("RGB")
    return image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ImageNet-normalized float32 [3, H, W]."""
    arr = (np.asarray(image, dtype=np.float32) - _MEAN) * _INV_STD
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalized [..., 3, H, W] -> [0, 1] floats (for pictures)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    return (images * std + mean).clamp(0, 1)
