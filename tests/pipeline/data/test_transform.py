import numpy as np
import torch
from PIL import Image, ImageFilter

from pipeline.data.transform import (
    AugmentConfig,
    denormalize,
    draw_train_augment,
    eval_image,
    normalize,
    to_tensor,
    to_uint8_tensor,
    train_image,
)


def _image(w=300, h=224):
    x = np.zeros((h, w, 3), dtype=np.uint8)
    x[:, : w // 2] = (255, 0, 0)  # left half red, right half blue: crops and flips are visible
    x[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(x)


def test_eval_image_is_centre_crop():
    out = eval_image(_image(300, 224), 112)
    assert out.size == (112, 112)
    arr = np.asarray(out)
    assert arr[56, 10, 0] > 200 and arr[56, 100, 2] > 200  # red left, blue right, centred


def _pixels(t):
    """A normalized [3, H, W] image back to uint8-range HWC numpy."""
    return (denormalize(t) * 255).permute(1, 2, 0).numpy()


def test_train_image_size_determinism_and_variety():
    cfg = AugmentConfig()
    a = [_pixels(train_image(_image(), 96, np.random.default_rng(s), cfg)) for s in range(8)]
    b = [_pixels(train_image(_image(), 96, np.random.default_rng(s), cfg)) for s in range(8)]
    assert all(x.shape == (96, 96, 3) for x in a)
    assert all((x == y).all() for x, y in zip(a, b)), "same generator state -> same augmentation"
    assert len({x.tobytes() for x in a}) == 8
    assert all(x.min() >= -1e-3 and x.max() <= 255 + 1e-3 for x in a), "clamped to the pixel range"


def test_flip_only():
    cfg = AugmentConfig(scale=(1.0, 1.0), ratio=(300 / 224, 300 / 224), flip_prob=1.0, jitter=0.0, grayscale_prob=0.0)
    arr = _pixels(train_image(_image(), 64, np.random.default_rng(0), cfg))
    assert arr[32, 5, 2] > 200 and arr[32, 60, 0] > 200  # blue now left, red right


def test_crop_resize_matches_pil():
    """The batched resize (torch, antialiased) agrees with PIL's bilinear resize of the same box."""
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 255, (224, 298, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2))
    cfg = AugmentConfig(jitter=0.0, grayscale_prob=0.0, flip_prob=0.0)
    for seed in range(4):
        draw = draw_train_augment(298, 224, np.random.default_rng(seed), cfg)
        x, y, w, h = draw.box
        ref = np.asarray(img.resize((64, 64), Image.BILINEAR, box=(x, y, x + w, y + h)), dtype=np.float64)
        out = _pixels(train_image(img, 64, np.random.default_rng(seed), cfg))
        assert np.abs(out - ref).mean() < 1.0 and np.abs(out - ref).max() <= 6.0


def test_to_tensor_roundtrip():
    img = _image(64, 64)
    t = to_tensor(img)
    assert t.shape == (3, 64, 64) and t.dtype == torch.float32
    back = (denormalize(t) * 255).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(back, np.asarray(img))


def _jitter_step_by_step(x, draws):
    """torchvision's order of operations on float pixels (no intermediate clamp), as defined in
    color_jitter_matrix: what the composed matrix must reproduce."""
    luma = np.array([0.299, 0.587, 0.114])
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    for op in draws[:4].astype(int):
        if op == 0:
            x = x * draws[4]
        elif op == 1:
            x = draws[5] * x + (1 - draws[5]) * (x @ luma).mean()
        elif op == 2:
            x = draws[6] * x + (1 - draws[6]) * (x @ luma)[:, None]
        else:
            c, s = np.cos(2 * np.pi * draws[7]), np.sin(2 * np.pi * draws[7])
            x = x @ (np.linalg.inv(yiq) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ yiq).T
    if draws[8]:
        x = np.repeat((x @ luma)[:, None], 3, 1)
    return x


def test_color_matrix_matches_its_definition():
    from pipeline.data.transform import NO_JITTER, color_jitter_matrix, draw_color_jitter

    x = np.random.default_rng(0).uniform(30, 220, (500, 3))
    mean = x.mean(0)
    for seed in range(6):
        draws = draw_color_jitter(np.random.default_rng(seed), AugmentConfig(grayscale_prob=0.5))
        m = color_jitter_matrix(draws).astype(np.float64)
        A, b0, M = m[:, :3], m[:, 3], m[:, 4:]
        np.testing.assert_allclose(x @ A.T + b0 + M @ mean, _jitter_step_by_step(x, draws), atol=1e-3)
    assert not np.allclose(color_jitter_matrix(draws)[:, :3], np.eye(3))
    np.testing.assert_allclose(color_jitter_matrix(NO_JITTER), np.hstack([np.eye(3), np.zeros((3, 4))]))
    none = draw_color_jitter(np.random.default_rng(2), AugmentConfig(jitter=0.0, grayscale_prob=0.0))
    np.testing.assert_array_equal(none, NO_JITTER)


def test_uint8_batches_normalize_like_to_tensor():
    img = _image(48, 48)
    np.testing.assert_allclose(normalize(to_uint8_tensor(img)[None])[0].numpy(), to_tensor(img).numpy(), atol=1e-6)
