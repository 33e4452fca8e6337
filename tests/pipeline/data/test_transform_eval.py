"""The evaluation transform is DenseAV's, pixel for pixel: torchvision's own ``Resize(224, BILINEAR)``
+ ``CenterCrop(224)`` (+ ``ToTensor`` + ``Normalize``) is the reference, on odd sizes, on JPEGs that
a draft decode would shrink, and for the ADE20K masks, which must land on the same pixels."""

import io

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from ground.inputs import GroundInputError, load_image
from pipeline.data.transform import IMAGENET_MEAN, IMAGENET_STD, eval_image, to_tensor
from pipeline.image import BadImage, centre_crop
from pipeline.testsets.ade20k import decode_ade_classes, load_ade_class_mask
from pipeline.testsets.common import DatasetError, load_binary_mask, open_image, resize_crop_labels

ODD_SIZES = [(420, 300), (256, 320), (225, 1000), (301, 301), (1000, 225), (97, 131)]


def _torchvision(image: Image.Image, size: int = 224, nearest: bool = False) -> Image.Image:
    mode = T.InterpolationMode.NEAREST if nearest else T.InterpolationMode.BILINEAR
    return T.Compose([T.Resize(size, mode), T.CenterCrop(size)])(image)


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("width,height", ODD_SIZES)
def test_eval_image_is_torchvisions_resize_and_centre_crop(width, height):
    picture = _noise(width, height)
    for size in (224, 112):
        got = eval_image(picture, size)
        assert got.size == (size, size)
        assert np.array_equal(np.asarray(got), np.asarray(_torchvision(picture, size))), (width, height, size)
    # ... and through ToTensor + Normalize the model input agrees to float rounding
    reference = T.Compose(
        [
            T.Resize(224, T.InterpolationMode.BILINEAR),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )(picture)
    torch.testing.assert_close(to_tensor(eval_image(picture, 224)), reference, atol=2e-6, rtol=0)


def test_the_geometry_truncates_the_long_side_and_rounds_the_offset_half_to_even():
    assert centre_crop(420, 300, 224).resized == (313, 224)  # 313.6 truncated, not rounded to 314
    assert centre_crop(420, 300, 224).box == (44, 0, 268, 224)  # excess 89: round(44.5) = 44
    assert centre_crop(256, 320, 224).resized == (224, 280)
    assert centre_crop(225, 1000, 224).resized == (224, 995)
    assert centre_crop(225, 1000, 224).box == (0, 386, 224, 610)  # excess 771: round(385.5) = 386, not floored
    assert centre_crop(301, 301, 224) == centre_crop(224, 224, 224)


@pytest.mark.parametrize("width,height", [(224, 224), (224, 300), (299, 224)])
def test_a_picture_with_a_224_px_shorter_side_is_only_cropped(width, height):
    """Shards store frames with a 224 px shorter side: the transform crops them and nothing else."""
    picture = _noise(width, height, seed=1)
    left, top = int(round((width - 224) / 2.0)), int(round((height - 224) / 2.0))
    expected = np.asarray(picture)[top : top + 224, left : left + 224]
    assert np.array_equal(np.asarray(eval_image(picture, 224)), expected)


def test_a_large_jpeg_is_decoded_at_full_scale():
    """A JPEG draft would decode this 1000x900 picture at 1/2 scale: the pixels must be torchvision's on
    the fully decoded picture, as DenseAV opens it (``Image.open(f).convert("RGB")``)."""
    buffer = io.BytesIO()
    _noise(1000, 900, seed=2).save(buffer, "JPEG", quality=90)
    expected = _torchvision(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    lazy = Image.open(io.BytesIO(buffer.getvalue()))  # not decoded yet: a draft could still apply
    assert np.array_equal(np.asarray(eval_image(lazy, 224)), np.asarray(expected))


def test_a_degenerate_picture_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (1, 500), "red").save(path)
    with pytest.raises(BadImage) as refused:
        eval_image(Image.open(path), 224)
    message = str(refused.value)
    assert str(path) in message and "1x500" in message and "224x112000" in message and "\n" not in message
    with pytest.raises(DatasetError, match="strip.png is 1x500 px, more elongated than 20:1"):
        open_image(path)  # the test-set readers refuse it from the header, before decoding
    with pytest.raises(GroundInputError, match="strip.png is 1x500"):
        load_image(path)
    with pytest.raises(DatasetError, match="mask is 1x500"):
        resize_crop_labels(np.zeros((500, 1), dtype=np.int64))
    assert eval_image(_noise(20, 400), 224).size == (224, 224)  # 20:1 is still taken


def _ade_picture(width: int, height: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class ids in 24 px blocks and the ADE20K RGB encoding of them (R = 10 * (id // 256), G = id % 256)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(1, 3000, (height // 24 + 1, width // 24 + 1))
    classes = np.kron(blocks, np.ones((24, 24), dtype=np.int64))[:height, :width]
    rgb = np.stack([10 * (classes // 256), classes % 256, np.full_like(classes, 7)], -1).astype(np.uint8)
    return classes, rgb


@pytest.mark.parametrize("width,height", ODD_SIZES[:4])
def test_ade_masks_stay_aligned_with_the_image(tmp_path, width, height):
    classes, rgb = _ade_picture(width, height, seed=width)
    path = tmp_path / "frame_seg.png"
    Image.fromarray(rgb).save(path)
    # the reader's mask is DenseAV's label transform: NEAREST Resize + CenterCrop of the annotation picture
    mask = load_ade_class_mask(path, 224)
    assert np.array_equal(mask, decode_ade_classes(np.asarray(_torchvision(Image.fromarray(rgb), nearest=True))))
    assert np.array_equal(resize_crop_labels(classes, 224), mask)
    # and it sits on the image's pixels: wherever a mask pixel's 3x3 neighbourhood is one class, the
    # bilinear image shows that class's colour; a mask one pixel off fails this
    shown = decode_ade_classes(np.asarray(eval_image(Image.fromarray(rgb), 224)))

    def misplaced(labels):
        padded = np.pad(labels, 1, constant_values=-1)  # the crop's border blends pixels beyond it: not checked
        inside = (np.lib.stride_tricks.sliding_window_view(padded, (3, 3)) == labels[..., None, None]).all((-1, -2))
        assert inside.mean() > 0.7
        return int((shown[inside] != labels[inside]).sum())

    assert misplaced(mask) == 0
    assert misplaced(np.roll(mask, 1, axis=0)) > 100 and misplaced(np.roll(mask, 1, axis=1)) > 100


def test_binary_masks_use_the_same_geometry(tmp_path):
    grey = np.zeros((300, 420), dtype=np.uint8)
    grey[100:200, 150:331] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(grey).save(path)
    expected = np.asarray(_torchvision(Image.fromarray(grey), nearest=True)) >= 128
    assert np.array_equal(load_binary_mask(path, 224), expected)
