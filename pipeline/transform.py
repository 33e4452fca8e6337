"""Image transforms: DenseAV's training augmentation and the evaluation resize + centre crop.

Written on PIL + numpy (no torchvision dependency) with an explicit ``np.random.Generator`` so the
loader's per-worker seeds make augmentation reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageStat

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's "L" and torchvision's grayscale
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def color_jitter_matrix(rng: np.random.Generator, cfg: AugmentConfig, mean_rgb: np.ndarray):
    """ColorJitter + RandomGrayscale as one affine colour map ``x -> A x + b`` (A 3x3, b 3).

    Brightness, contrast, saturation and hue are all affine in RGB, so torchvision's four jitters
    in random order compose into a single matrix, applied in one pass by PIL (about 10x cheaper
    than four separate image operations). Two documented differences from torchvision: values are
    clamped once at the end rather than after each step, and the hue shift is a rotation of the
    chroma plane in YIQ space rather than a shift in HSV.
    """
    A, b = np.eye(3), np.zeros(3)
    j = cfg.jitter
    if j > 0 and rng.random() < cfg.jitter_prob:
        for op in rng.permutation(4):
            if op == 0:  # brightness: scale
                f = rng.uniform(1 - j, 1 + j)
                A, b = f * A, f * b
            elif op == 1:  # contrast: blend with the mean grey level of the current image
                f = rng.uniform(1 - j, 1 + j)
                grey = _LUMA @ (A @ mean_rgb + b)
                A, b = f * A, f * b + (1 - f) * grey
            elif op == 2:  # saturation: blend with the per-pixel grey level
                f = rng.uniform(1 - j, 1 + j)
                S = f * np.eye(3) + (1 - f) * np.outer(np.ones(3), _LUMA)
                A, b = S @ A, S @ b
            else:  # hue: rotate the chroma (I, Q) plane
                theta = 2 * np.pi * rng.uniform(-j, j)
                c, s = np.cos(theta), np.sin(theta)
                H = _YIQ_TO_RGB @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ _RGB_TO_YIQ
                A, b = H @ A, H @ b
    if rng.random() < cfg.grayscale_prob:
        G = np.outer(np.ones(3), _LUMA)
        A, b = G @ A, G @ b
    return A, b


def apply_color_matrix(image: Image.Image, A: np.ndarray, b: np.ndarray) -> Image.Image:
    if not b.any() and (A == np.eye(3)).all():
        return image
    return image.convert("RGB", tuple(float(v) for v in np.hstack([A, b[:, None]]).ravel()))


def train_image(image: Image.Image, size: int, rng: np.random.Generator,
                cfg: AugmentConfig = AugmentConfig()) -> Image.Image:
    """RandomResizedCrop + horizontal flip + ColorJitter + RandomGrayscale (DenseAV's recipe)."""
    image = image.convert("RGB")
    x, y, cw, ch = _random_resized_box(*image.size, rng, cfg)
    image = image.resize((size, size), Image.BILINEAR, box=(x, y, x + cw, y + ch))
    if rng.random() < cfg.flip_prob:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    mean_rgb = np.array(ImageStat.Stat(image.reduce(4)).mean)  # the mean grey of a 4x smaller copy is plenty
    return apply_color_matrix(image, *color_jitter_matrix(rng, cfg, mean_rgb))


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 [3, H, W]. Batches stay uint8 until the device (4x less to copy)."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy())


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0-255 float) [..., 3, H, W] -> ImageNet-normalized float32, on the images' device."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1) * 255
    return (images.float() - mean) / std


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ImageNet-normalized float32 [3, H, W]."""
    return normalize(to_uint8_tensor(image))


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalized [..., 3, H, W] -> [0, 1] floats (for pictures)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    return (images * std + mean).clamp(0, 1)
