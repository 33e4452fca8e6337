"""ground.api.Grounder on a real tiny checkpoint: shapes at the input resolution, the documented
definitions (activation means are the paper's scores, mean maps are frame averages), inputs of
every kind, and refusals of unusable input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ground.api import Grounder, crop_box
from ground.inputs import MAX_SECONDS, GroundInputError, load_audio
from model import similarity
from pipeline import audio as paudio
from pipeline.data.transform import eval_image

HEADS = ["sound", "speech", "total"]


@pytest.fixture(scope="module")
def grounder(tiny_checkpoint):
    return Grounder.from_pretrained(tiny_checkpoint)  # trained weights, as everywhere (not from_backbones)


@pytest.fixture(scope="module")
def result(grounder, files):
    return grounder.ground(files["image"], files["speech"])


def test_maps_are_at_the_input_resolution_and_nan_outside_the_crop(result):
    assert result.heads == HEADS and result.image.size == (200, 120)
    frames = len(result.times)
    left, top, right, bottom = result.description["crop_box"]
    assert (left, top, right, bottom) == crop_box((200, 120), 112) == (40, 0, 160, 120)  # 186x112 resize, crop 37..149
    for name in HEADS:
        maps = result.maps[name]
        assert maps.shape == (frames, 120, 200) and maps.dtype == np.float32
        assert np.isfinite(maps[:, :, left:right]).all() and np.isnan(maps[:, :, :left]).all()
        assert np.isnan(maps[:, :, right:]).all()
        assert result.mean_maps[name].shape == (120, 200)
        assert result.activation[name].shape == (frames,)
    assert np.all(np.diff(result.times) > 0) and 0 < result.times[0] and result.times[-1] < result.duration
    assert result.audio.dtype == np.float32 and abs(result.duration - 2.5) < 1e-3


def test_activation_means_are_the_head_and_total_scores(grounder, files, result):
    pil, v = grounder.encode_image(files["image"])
    _, _, a, mask = grounder.encode_audio(files["speech"])
    for k, name in enumerate(["sound", "speech"]):
        s_n = float(similarity.head_scores(a, mask, v, k)[0, 0])  # Eq. 6
        assert np.nanmean(result.activation[name]) == pytest.approx(s_n, rel=1e-5)
    s_m = float(similarity.total_scores(a, mask, v)[0, 0])  # Eq. 5
    assert np.nanmean(result.activation["total"]) == pytest.approx(s_m, rel=1e-5)
    assert np.all(
        result.activation["total"] >= np.maximum(result.activation["sound"], result.activation["speech"]) - 1e-5
    )


def test_mean_maps_average_the_frames_and_the_window_picks_frames(grounder, files, result):
    for name in HEADS:
        np.testing.assert_allclose(result.mean_maps[name], result.maps[name].mean(0), rtol=1e-4, atol=1e-4)
    windowed = grounder.ground(files["image"], files["speech"], window=(0.5, 1.2))
    keep = (result.times >= 0.5) & (result.times <= 1.2)
    assert 0 < keep.sum() < len(keep)
    np.testing.assert_allclose(windowed.mean_maps["speech"], result.maps["speech"][keep].mean(0), rtol=1e-4, atol=1e-4)
    assert windowed.description["window_s"] == [0.5, 1.2]


def test_summary_is_json_with_peaks_activations_and_dominance(result):
    summary = json.loads(json.dumps(result.summary(), allow_nan=False))
    assert set(summary["heads"]) == set(HEADS)
    for name, head in summary["heads"].items():
        peak = head["peak"]
        assert 40 <= peak["x"] < 159 and 0 <= peak["y"] < 120
        assert peak["value"] == pytest.approx(float(np.nanmax(result.mean_maps[name])))
        assert len(head["activation"]) == len(result.times)
    assert len(summary["dominant"]) == len(result.times) and set(summary["dominant"]) <= {"sound", "speech"}
    segments = summary["dominant_segments"]
    assert segments[0]["start"] == 0.0 and all(a["end"] == b["start"] for a, b in zip(segments, segments[1:]))
    assert summary["model"]["heads"] == {"sound": 0, "speech": 1}
    assert summary["duration_s"] == pytest.approx(2.5) and summary["image_size"] == [200, 120]


def test_any_image_and_audio_form_gives_the_same_maps(grounder, files, result):
    pil = Image.open(files["image"])
    array = np.asarray(pil.convert("RGB"))
    samples, rate = paudio.read(files["speech"])
    stereo = np.stack([samples[0], samples[0]])
    for image, audio, sr in [
        (pil, samples[0], rate),
        (array, torch.from_numpy(stereo), rate),
        (torch.from_numpy(array.copy()).permute(2, 0, 1), files["speech"], None),
    ]:
        other = grounder.ground(image, audio, sr)
        np.testing.assert_allclose(other.maps["total"], result.maps["total"], rtol=1e-4, atol=1e-4, equal_nan=True)


def test_audio_of_any_rate_becomes_16k_mono(files):
    clip, notes = load_audio(files["sound"])
    assert notes == {"source_rate": 44_100, "source_channels": 2, "decoded_s": 2.0}
    assert clip.shape == (32_000,) and clip.dtype == np.float32


def test_speech_head_override_swaps_the_names(tiny_checkpoint, files, result):
    swapped = Grounder.from_checkpoint(tiny_checkpoint, speech_head=0)
    assert swapped.head_names == ["speech", "sound"]
    other = swapped.ground(files["image"], files["speech"])
    np.testing.assert_allclose(other.activation["speech"], result.activation["sound"], rtol=1e-5)


@pytest.mark.parametrize(
    "audio, sr, message",
    [
        (np.zeros(16_000, np.float32), 16_000, "is silent"),
        (np.full(16_000, 1e-6, np.float32), 16_000, "is silent"),
        (np.ones(4_000, np.float32) * 0.1, 16_000, r"is too short \(0\.250 s\)"),
        (np.array([0.1, np.nan] * 8000, np.float32), 16_000, "NaN"),
        (np.ones(16_000, np.float32) * 0.1, None, "give its sample_rate"),
        (np.ones((2, 2, 16_000), np.float32), 16_000, "audio_shape"),
    ],
)
def test_unusable_audio_is_refused_with_one_line(grounder, files, audio, sr, message):
    with pytest.raises(GroundInputError, match=message) as info:
        grounder.ground(files["image"], audio, sr)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("key, kind", [("garbage", "audio"), ("bad_image", "image")])
def test_unreadable_files_are_refused_naming_them(grounder, files, key, kind):
    image, audio = (files["image"], files[key]) if kind == "audio" else (files[key], files["speech"])
    with pytest.raises(GroundInputError, match=f"{kind} {files[key]}"):
        grounder.ground(image, audio)


def test_a_window_without_frames_is_refused(grounder, files):
    with pytest.raises(GroundInputError, match="holds no audio frame"):
        grounder.ground(files["image"], files["speech"], window=(5.0, 6.0))


@pytest.mark.parametrize("size", [(200, 120), (120, 200), (640, 480), (113, 500), (112, 112)])
def test_the_crop_box_is_what_the_model_sees(size):
    """Red encodes x and green y of the input: the model's crop shows the box's edges."""
    width, height = size
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    picture = Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).round().astype(np.uint8))
    seen = np.asarray(eval_image(picture, 112), dtype=np.float64)
    left, top, right, bottom = crop_box(size, 112)
    for got, edge, extent in [
        (seen[:, 0, 0].mean(), left, width),
        (seen[:, -1, 0].mean(), right - 1, width),
        (seen[0, :, 1].mean(), top, height),
        (seen[-1, :, 1].mean(), bottom - 1, height),
    ]:
        assert abs(got - 255 * edge / (extent - 1)) < 255 * 1.5 / extent + 2


def test_long_audio_is_cut_and_says_so(grounder, files):
    long = np.tile(paudio.read(files["speech"])[0][0], 14)  # 35 s at 22.05 kHz
    result = grounder.ground(files["image"], long, 22_050)
    assert result.duration == pytest.approx(MAX_SECONDS) and result.description["audio"]["cut_to_s"] == MAX_SECONDS


def test_exif_orientation_is_applied(grounder, files, tmp_path):
    from tests.support import media

    rotated = media.write_rotated_jpeg(tmp_path / "rotated.jpg", size=(160, 100))  # stored landscape, shown portrait
    result = grounder.ground(rotated, files["speech"])
    assert result.image.size == (100, 160) and result.maps["sound"].shape[1:] == (160, 100)
