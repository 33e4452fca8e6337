import numpy as np
import torch
from PIL import Image

from pipeline.transform import AugmentConfig, denormalize, eval_image, normalize, to_tensor, to_uint8_tensor, train_image


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


def test_train_image_size_determinism_and_variety():
    cfg = AugmentConfig()
    a = [np.asarray(train_image(_image(), 96, np.random.default_rng(s), cfg)) for s in range(8)]
    b = [np.asarray(train_image(_image(), 96, np.random.default_rng(s), cfg)) for s in range(8)]
    assert all(x.shape == (96, 96, 3) for x in a)
    assert all((x == y).all() for x, y in zip(a, b)), "same generator state -> same augmentation"
    assert len({x.tobytes() for x in a}) == 8


def test_flip_only():
    cfg = AugmentConfig(scale=(1.0, 1.0), ratio=(300 / 224, 300 / 224), flip_prob=1.0, jitter=0.0, grayscale_prob=0.0)
    arr = np.asarray(train_image(_image(), 64, np.random.default_rng(0), cfg))
    assert arr[32, 5, 2] > 200 and arr[32, 60, 0] > 200  # blue now left, red right


def test_to_tensor_roundtrip():
    img = _image(64, 64)
    t = to_tensor(img)
    assert t.shape == (3, 64, 64) and t.dtype == torch.float32
    back = (denormalize(t) * 255).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(back, np.asarray(img))


def test_color_matrix_matches_its_definition():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(30, 220, (32, 32, 3), dtype=np.uint8))
    x = np.asarray(img, dtype=np.float64).reshape(-1, 3)
    mean = x.mean(0)
    from pipeline.transform import apply_color_matrix, color_jitter_matrix

    A, b = color_jitter_matrix(np.random.default_rng(1), AugmentConfig(grayscale_prob=0.0), mean)
    assert not np.allclose(A, np.eye(3))
    out = np.asarray(apply_color_matrix(img, A, b), dtype=np.float64).reshape(-1, 3)
    np.testing.assert_allclose(out, np.clip(x @ A.T + b, 0, 255), atol=1.01)  # PIL rounds to uint8
    luma = np.array([0.299, 0.587, 0.114])
    A_h, b_h = color_jitter_matrix(np.random.default_rng(2), AugmentConfig(jitter=0.0, grayscale_prob=0.0), mean)
    np.testing.assert_allclose(A_h, np.eye(3))
    np.testing.assert_allclose(b_h, 0)
    A_g, b_g = color_jitter_matrix(np.random.default_rng(2), AugmentConfig(jitter=0.0, grayscale_prob=1.0), mean)
    grey = np.asarray(apply_color_matrix(img, A_g, b_g)).astype(int)
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1 and np.abs(grey[..., 1] - grey[..., 2]).max() <= 1
    np.testing.assert_allclose(grey[..., 0].ravel(), x @ luma, atol=1.01)


def test_uint8_batches_normalize_like_to_tensor():
    img = _image(48, 48)
    np.testing.assert_allclose(normalize(to_uint8_tensor(img)[None])[0].numpy(), to_tensor(img).numpy(), atol=1e-6)
