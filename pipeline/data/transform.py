"""Image transforms: DenseAV's training augmentation and its evaluation resize + centre crop.

Training augmentation is split in two: ``draw_train_augment`` makes every random choice for one
image (crop box, flip, colour jitter) with an explicit ``np.random.Generator``, which keeps the
loader's per-item seeds reproducible; ``augment_batch`` applies a batch of such draws with torch
wherever the batch is, the training device included, so loader workers only decode.

Evaluation images go through ``eval_image``: DenseAV's evaluation transform exactly (torchvision
``Resize(size, BILINEAR)`` + ``CenterCrop(size)`` on the PIL image, geometry from
``pipeline.image.centre_crop``), for every model the project evaluates, so that DenseAV's released
checkpoints, the paper's baselines and the project's own models see the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.fields import checked
from pipeline.image import centre_crop

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AugmentConfig:
    """DenseAV's training recipe: RandomResizedCrop, flip, ColorJitter(0.2 x4), RandomGrayscale."""

    scale: tuple[float, float] = checked((0.08, 1.0), gt=0, le=1, ordered=True)  # crop area, share of the image
    ratio: tuple[float, float] = checked((3 / 4, 4 / 3), gt=0, ordered=True)
    flip_prob: float = checked(0.5, ge=0, le=1)
    # brightness/contrast/saturation factors in [1-j, 1+j]; hue shift in [-j, j] turns (half a turn
    # at most, as torchvision's ColorJitter)
    jitter: float = checked(0.2, ge=0, le=0.5)
    jitter_prob: float = checked(1.0, ge=0, le=1)
    grayscale_prob: float = checked(0.1, ge=0, le=1)


def eval_image(image: Image.Image, size: int, name: str | None = None) -> Image.Image:
    """DenseAV's evaluation transform of a PIL image, pixel for pixel: RGB, shorter side to ``size``
    with PIL's bilinear filter (torchvision ``Resize(size, BILINEAR)``), centre ``size`` x ``size``
    crop (``CenterCrop(size)``); a picture whose shorter side is already ``size`` is only cropped.

    No JPEG draft decoding: a draft decodes at a reduced scale and changes the pixels. Raises
    ``pipeline.image.BadImage`` naming ``name`` (default: the image's file name) for an empty or
    absurdly elongated picture (``pipeline.image.check_eval_size``).
    """
    crop = centre_crop(*image.size, size, name or getattr(image, "filename", None) or "image")
    if image.mode != "RGB":  # DenseAV converts before resizing (``Image.open(f).convert("RGB")``)
        image = image.convert("RGB")
    if image.size != crop.resized:
        image = image.resize(crop.resized, Image.BILINEAR)
    return image.crop(crop.box)


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


NO_JITTER = np.array([0, 1, 2, 3, 1, 1, 1, 0, 0], dtype=np.float32)


def draw_color_jitter(rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """ColorJitter + RandomGrayscale draws for one image, 9 numbers: the order of the four jitters
    (0 brightness, 1 contrast, 2 saturation, 3 hue), the brightness, contrast and saturation
    factors, the hue shift in turns, and 1 for greyscale."""
    draws = NO_JITTER.copy()
    j = cfg.jitter
    if j > 0 and rng.random() < cfg.jitter_prob:
        draws[:4] = rng.permutation(4)
        draws[4:7] = rng.uniform(1 - j, 1 + j, 3)
        draws[7] = rng.uniform(-j, j)
    draws[8] = rng.random() < cfg.grayscale_prob
    return draws


def color_jitter_matrix(draws: np.ndarray) -> np.ndarray:
    """The draws of ``draw_color_jitter`` as one affine colour map, ``[3, 7]`` = ``A | b0 | M``.

    A pixel ``p`` of an image whose mean colour is ``m`` maps to ``A p + b0 + M m``. Brightness,
    contrast, saturation and hue are all affine in RGB, so torchvision's four jitters in random
    order compose into one matrix applied in one pass; contrast blends with the mean grey of the
    image *as it is at that point*, which is affine in ``m`` and is carried by ``M``, so the
    matrix needs no pixels. Two documented differences from torchvision: values are clamped once
    at the end rather than after each step, and the hue shift is a rotation of the chroma plane
    in YIQ space rather than a shift in HSV.
    """
    A, b0, M = np.eye(3), np.zeros(3), np.zeros((3, 3))
    brightness, contrast, saturation, hue = (float(v) for v in draws[4:8])
    for op in draws[:4].astype(int):
        if op == 0 and brightness != 1:  # brightness: scale
            A, b0, M = brightness * A, brightness * b0, brightness * M
        elif op == 1 and contrast != 1:  # contrast: blend with the mean grey level of the current image
            f = contrast
            grey_of_mean = _LUMA @ (A + M)  # current mean grey = grey_of_mean . m + LUMA . b0
            A, b0, M = f * A, f * b0 + (1 - f) * (_LUMA @ b0), f * M + (1 - f) * np.outer(np.ones(3), grey_of_mean)
        elif op == 2 and saturation != 1:  # saturation: blend with the per-pixel grey level
            S = saturation * np.eye(3) + (1 - saturation) * np.outer(np.ones(3), _LUMA)
            A, b0, M = S @ A, S @ b0, S @ M
        elif op == 3 and hue != 0:  # hue: rotate the chroma (I, Q) plane
            c, s = np.cos(2 * np.pi * hue), np.sin(2 * np.pi * hue)
            H = _YIQ_TO_RGB @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ _RGB_TO_YIQ
            A, b0, M = H @ A, H @ b0, H @ M
    if draws[8]:
        G = np.outer(np.ones(3), _LUMA)
        A, b0, M = G @ A, G @ b0, G @ M
    return np.hstack([A, b0[:, None], M]).astype(np.float32)


@dataclass
class TrainDraw:
    """The random choices of DenseAV's training augmentation for one image."""

    box: tuple[int, int, int, int]  # x, y, width, height of the crop in the stored image
    flip: bool
    jitter: np.ndarray  # [9], see draw_color_jitter


def draw_train_augment(
    width: int, height: int, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()
) -> TrainDraw:
    """RandomResizedCrop box, horizontal flip, ColorJitter + RandomGrayscale for one image."""
    box = _random_resized_box(width, height, rng, cfg)
    flip = bool(rng.random() < cfg.flip_prob)
    return TrainDraw(box, flip, draw_color_jitter(rng, cfg))


def cut_train_crop(
    image: Image.Image, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()
) -> tuple[np.ndarray, TrainDraw]:
    """Draw the training augmentation for ``image`` and cut its crop box: uint8 ``[h, w, 3]``
    (read-only) and the draw, whose flip and jitter ``augment_batch`` applies later."""
    draw = draw_train_augment(image.width, image.height, rng, cfg)
    x, y, w, h = draw.box
    # Cut in PIL first: exporting a PIL image to numpy repacks every pixel (PIL keeps RGB as
    # 4 bytes per pixel), so only the crop, about half the image, pays for that.
    crop = image.crop((x, y, x + w, y + h))
    return np.asarray(crop if crop.mode == "RGB" else crop.convert("RGB")), draw


def augment_batch(crops: list[torch.Tensor], flips, jitters, size: int) -> torch.Tensor:
    """Finish training draws: crops (uint8 ``[h, w, 3]`` each, already cut to the drawn box) ->
    ImageNet-normalized float32 ``[B, 3, size, size]`` on the crops' device.

    ``flips`` ``[B]``, ``jitters`` ``[B, 9]`` (host arrays). Each crop is resized with
    antialiased bilinear filtering, as PIL does (on the CPU in uint8: torch's fast path for
    channels-last images). The colour map, the clamp to 0-255 and the normalization
    are one batched matrix product and one clamp.
    """
    resized = []
    for crop, flip in zip(crops, np.asarray(flips).tolist()):
        x = crop.permute(2, 0, 1).unsqueeze(0)  # a channels-last view
        if x.shape[-2:] != (size, size):
            x = F.interpolate(
                x if x.device.type == "cpu" else x.float(),
                size=(size, size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        resized.append(x.flip(-1) if flip else x)
    x = torch.cat(resized).float().reshape(len(resized), 3, size * size)
    colors = torch.from_numpy(np.stack([color_jitter_matrix(j) for j in np.asarray(jitters)])).to(x.device)
    A, b0, M = colors[..., :3], colors[..., 3], colors[..., 4:]
    b = b0 + torch.einsum("bij,bj->bi", M, x.mean(-1))
    mean, std = (torch.tensor(v, device=x.device) * 255 for v in (IMAGENET_MEAN, IMAGENET_STD))
    # normalize(clamp(A x + b, 0, 255)) = clamp(A' x + b', lo, hi), channel by channel
    y = torch.baddbmm(((b - mean) / std)[..., None], A / std[:, None], x)
    torch.maximum(y, (-mean / std)[:, None], out=y)  # (tensor bounds: clamp's are slower)
    torch.minimum(y, ((255 - mean) / std)[:, None], out=y)
    return y.reshape(len(resized), 3, size, size)


def train_image(
    image: Image.Image, size: int, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()
) -> torch.Tensor:
    """One image through DenseAV's training recipe -> ImageNet-normalized float32 ``[3, size, size]``."""
    crop, draw = cut_train_crop(image, rng, cfg)
    return augment_batch([torch.from_numpy(crop.copy())], [draw.flip], draw.jitter[None], size)[0]


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
