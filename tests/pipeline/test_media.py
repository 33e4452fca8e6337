"""pipeline.ffmpeg, pipeline.audio, pipeline.image: decoding, exact time ranges, standardization."""

import numpy as np
import pytest
from PIL import Image

from pipeline import audio, ffmpeg, image
from pipeline.format import CLIP_SAMPLES, IMAGE_SHORT_SIDE, SAMPLE_RATE
from tests.support import media


def test_ffmpeg_binary_is_found_and_runs():
    out = ffmpeg.run(["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "0.1", "-f", "wav", "pipe:1"])
    assert out[:4] == b"RIFF"


def test_ffmpeg_error_names_the_problem(tmp_path):
    bad = media.write_garbage(tmp_path / "x.mp4")
    with pytest.raises(ffmpeg.FFmpegError, match="ffmpeg exit"):
        ffmpeg.decode_audio(bad)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_standardize_resamples_to_exactly_ten_seconds_at_16k(sr):
    clip, duration = audio.standardize(media.tone(1000, 4.0, sr)[None].repeat(2, 0), sr)
    assert clip.dtype == np.float32 and clip.shape == (CLIP_SAMPLES,)
    assert duration == pytest.approx(4.0)
    # the tone keeps its pitch through resampling, the padding is silent
    assert media.dominant_frequency(clip[: 4 * SAMPLE_RATE], SAMPLE_RATE) == pytest.approx(1000, abs=2)
    assert np.abs(clip[4 * SAMPLE_RATE + 100 :]).max() == 0.0


def test_standardize_trims_long_audio_to_its_first_ten_seconds():
    source = media.stepped_tone(14.0, 16_000)
    clip, duration = audio.standardize(source, 16_000)
    assert duration == 10.0 and clip.shape == (CLIP_SAMPLES,)
    np.testing.assert_allclose(clip, source[:CLIP_SAMPLES], atol=1e-7)


def test_standardize_mixes_channels_down():
    left, right = media.tone(500, 2, 16_000), media.tone(1500, 2, 16_000)
    clip, _ = audio.standardize(np.stack([left, right]), 16_000)
    np.testing.assert_allclose(clip[: len(left)], (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize(
    ("signal", "sr", "kind"),
    [
        (np.zeros(0, np.float32), 16_000, "audio_empty"),
        (np.full(16_000, np.nan, np.float32), 16_000, "audio_nan"),
        (media.tone(440, 0.4, 44_100), 44_100, "audio_too_short"),
        (media.tone(440, 2, 16_000), 0, "audio_rate"),
    ],
)
def test_standardize_rejects_bad_audio_with_a_reason(signal, sr, kind):
    with pytest.raises(audio.BadAudio, match=f"^{kind}:"):
        audio.standardize(signal, sr)


@pytest.mark.parametrize("container", ["wav", "flac", "mp4"])
def test_read_cuts_the_exact_range(tmp_path, container):
    sr = 44_100
    source = media.stepped_tone(8.0, sr)
    if container == "mp4":
        path = media.write_video(tmp_path / "v.mp4", source, sr)
    else:
        path = media.write_audio(tmp_path / f"a.{container}", source, sr)
    clip, got_sr = audio.read(path, start=2.5, end=6.5)
    assert got_sr == sr and clip.shape == (1, 4 * sr)
    # the pitch changes exactly 0.5 s in (source second 2 -> 3), then once a second
    assert media.first_change(clip[0], sr) == pytest.approx(0.5, abs=0.02)
    for k, second in enumerate([3, 4, 5]):
        window = clip[0, int((0.6 + k) * sr) : int((1.4 + k) * sr)]
        assert media.dominant_frequency(window, sr) == pytest.approx(media.step_frequency(second), abs=3)


@pytest.mark.parametrize("container", ["wav", "flac", "mp4"])
@pytest.mark.parametrize(("start", "end"), [(0.0, None), (1.5, None), (2.0, 14.0), (3.0, 7.0)])
def test_read_clip_gives_the_full_decodes_clip(tmp_path, container, start, end):
    # a 3-channel 22.05 kHz source 16 s long: the range read decodes ~10 s, the full read all of it
    sr = 22_050
    source = np.stack([media.stepped_tone(16.0, sr), media.noise(16.0, sr, seed=1), media.tone(700, 16.0, sr)])
    if container == "mp4":
        path = media.write_video(tmp_path / "v.mp4", source, sr)  # AAC: decoded by ffmpeg
    else:
        path = media.write_audio(tmp_path / f"a.{container}", source, sr)
    full, full_sr = audio.read(path, start=start, end=end)
    clip = audio.read_clip(path, start=start, end=end)
    assert clip.sample_rate == full_sr and clip.samples.shape[0] == 3
    assert clip.samples.shape[1] <= min(full.shape[1], int(10.06 * sr))
    expected, expected_s = audio.standardize(full, full_sr)
    got, got_s = audio.standardize(clip.samples, clip.sample_rate)
    np.testing.assert_array_equal(got, expected)
    assert got_s == expected_s
    assert clip.seconds == pytest.approx(full.shape[1] / full_sr, abs=0.03)


def test_read_past_the_end_gives_empty_audio(tmp_path):
    path = media.write_audio(tmp_path / "a.wav", media.tone(440, 2, 16_000), 16_000)
    clip, _ = audio.read(path, start=5, end=6)
    assert clip.shape[1] == 0
    with pytest.raises(audio.BadAudio, match="audio_empty"):
        audio.standardize(clip, 16_000)


def test_read_names_an_undecodable_file(tmp_path):
    bad = media.write_garbage(tmp_path / "broken.wav")
    with pytest.raises(audio.BadAudio, match=r"audio_decode: cannot decode .*broken\.wav"):
        audio.read(bad)


def test_extract_frame_takes_the_frame_at_the_requested_time(tmp_path):
    path = media.write_video(tmp_path / "v.mp4", media.tone(440, 6, 44_100), 44_100)
    for at in (0.5, 2.5, 4.5):
        frame = ffmpeg.extract_frame(path, at)
        assert media.nearest_palette_second(np.asarray(frame).reshape(-1, 3).mean(0)) == int(at)


def test_extract_frame_fails_clearly_without_video(tmp_path):
    path = media.write_audio(tmp_path / "a.wav", media.tone(440, 2, 16_000), 16_000)
    with pytest.raises(ffmpeg.FFmpegError):
        ffmpeg.extract_frame(path, 1.0)


@pytest.mark.parametrize(
    ("size", "mode", "expected"),
    [
        ((320, 240), "RGB", (299, 224)),
        ((240, 320), "RGB", (224, 299)),
        ((100, 50), "RGB", (448, 224)),  # small images are upscaled
        ((256, 256), "L", (224, 224)),
        ((400, 300), "RGBA", (299, 224)),
        ((400, 300), "P", (299, 224)),
        ((400, 300), "CMYK", (299, 224)),
    ],
)
def test_image_standardize_shorter_side_224_rgb(tmp_path, size, mode, expected):
    suffix = "jpg" if mode in ("RGB", "L", "CMYK") else "png"
    path = media.write_image(tmp_path / f"x.{suffix}", size, mode=mode)
    out = image.standardize(image.open_image(path))
    assert out.mode == "RGB" and out.size == expected and min(out.size) == IMAGE_SHORT_SIDE


def test_image_standardize_applies_exif_orientation(tmp_path):
    out = image.standardize(image.open_image(media.write_rotated_jpeg(tmp_path / "r.jpg", (320, 200))))
    assert out.size == (224, 358)  # stored landscape, shown portrait


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = media.write_image(tmp_path / "big.jpg", (4000, 3000))
    opened = image.open_image(path)
    out = image.standardize(opened)
    assert out.size == (299, 224)


def test_image_rejects_huge_header_before_decoding(tmp_path):
    path = media.write_huge_png_header(tmp_path / "bomb.png")
    with pytest.raises(image.BadImage, match=r"image_too_large: .*bomb\.png"):
        image.open_image(path)


def test_image_rejects_garbage_truncated_and_missing(tmp_path):
    with pytest.raises(image.BadImage, match="image_decode"):
        image.open_image(media.write_garbage(tmp_path / "g.jpg"))
    good = media.write_image(tmp_path / "ok.jpg", (640, 480), quality=95)
    truncated = media.write_truncated(good, tmp_path / "cut.jpg", keep=0.4)
    with pytest.raises(image.BadImage, match="image_decode"):
        image.standardize(image.open_image(truncated))
    with pytest.raises(image.BadImage, match="missing_image"):
        image.open_image(tmp_path / "nope.jpg")


def test_image_rejects_extreme_aspect():
    with pytest.raises(image.BadImage, match="image_aspect"):
        image.standardize(Image.new("RGB", (5000, 10)))


def test_image_pixel_limit_is_ours_not_pils(tmp_path):
    path = media.write_huge_png_header(tmp_path / "wide.png", 9000, 8000)  # 72 MP: below PIL's bomb limit
    with pytest.raises(image.BadImage, match=r"image_too_large: .*wide\.png is 9000x8000"):
        image.open_image(path)
    assert image.open_image(path, max_pixels=80_000_000).size == (9000, 8000)


# ---------------------------------------------------------------------------------------------
# every image mode by its value range, resampling at any rate in bounded memory


def test_every_image_mode_becomes_8_bit_rgb_by_its_value_range(tmp_path):
    for name, (path, expected) in media.write_mode_pictures(tmp_path).items():
        opened = image.open_image(path)
        np.testing.assert_array_equal(np.asarray(image.to_rgb(opened)), expected, err_msg=name)
        if name.startswith(("I", "F")):  # the dark quarter of the ramp stays dark (PIL clips it to ~239)
            assert np.asarray(image.standardize(opened))[:, :40].mean() < 12, name
    grey = media.dark_quarter_grey()
    rgb = np.repeat(grey[..., None], 3, 2)
    made = Image.fromarray(rgb)  # modes no file format stores: built in memory, as the Python API may get them
    for mode in ("YCbCr", "HSV", "RGBX"):
        assert np.abs(np.asarray(image.to_rgb(made.convert(mode))).astype(int) - rgb).max() <= 2, mode
    for mode in ("RGBa", "La"):  # premultiplied alpha, opaque here
        source = Image.fromarray(np.dstack([rgb, np.full_like(grey, 255)]), "RGBA")
        source = (
            source.convert(mode)
            if mode == "RGBa"
            else Image.merge("La", [Image.fromarray(grey), source.getchannel("A")])
        )
        np.testing.assert_array_equal(np.asarray(image.to_rgb(source)), rgb, err_msg=mode)
    nan = Image.fromarray(np.array([[np.nan, 0.25, np.inf, 1.0]], np.float32))
    assert np.asarray(image.to_rgb(nan))[0, :, 0].tolist() == [0, 64, 0, 255]  # non-finite pixels black


@pytest.mark.parametrize("sr", [8000, 11025, 22050, 44100, 48000])
def test_common_rates_resample_exactly_as_before(sr):
    """Clips in the shards stay what they were: torchaudio's resampling, bit for bit."""
    import torch
    import torchaudio.functional as AF

    x = media.speech_like(1.5, sr, seed=sr)
    np.testing.assert_array_equal(audio.resample(x, sr), AF.resample(torch.from_numpy(x), sr, SAMPLE_RATE).numpy())


@pytest.mark.parametrize("sr", [44_100, 12_345])
def test_the_direct_resampler_is_torchaudios_filter(sr):
    """The path for rates with a huge reduced ratio evaluates the same windowed sinc per output."""
    import torch
    import torchaudio.functional as AF

    x = media.speech_like(1.0, sr, seed=3)
    reference = AF.resample(torch.from_numpy(x), sr, SAMPLE_RATE).numpy()  # (12,345 Hz: a 32 MB kernel)
    direct = audio._resample_direct(x, sr, SAMPLE_RATE)
    assert direct.shape == reference.shape
    # torchaudio places its taps in float32, the direct path in float64: agreement to ~1e-4
    np.testing.assert_allclose(direct, reference, atol=3e-4)


def test_a_prime_sample_rate_resamples_in_bounded_memory(tmp_path):
    import tracemalloc

    sr = 100_003  # prime: torchaudio's kernel for it would hold 1.6 G floats (6.4 GB)
    path = media.write_audio(tmp_path / "prime.wav", media.tone(1000, 0.6, sr), sr)
    samples, rate = audio.read(path)
    tracemalloc.start()
    clip, seconds = audio.standardize(samples, rate)  # the path of `prep shards` (and ground's resample)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds == pytest.approx(0.6, abs=1e-4) and clip.shape == (CLIP_SAMPLES,)
    assert media.dominant_frequency(clip[: int(0.6 * SAMPLE_RATE)], SAMPLE_RATE) == pytest.approx(1000, abs=2)
    assert np.abs(clip[int(0.6 * SAMPLE_RATE) + 40 :]).max() == 0.0
    assert peak < 32e6, f"{peak / 1e6:.0f} MB"
