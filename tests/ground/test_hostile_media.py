"""Hostile media of `ground` that once cost gigabytes or gave a silent wrong picture: a 64 MP JPEG
(maps at the input's size: 8.8 GB), a WAV at a prime sample rate (a resampling kernel of 6.4 GB),
a 20000x20 strip, a 20:1 panorama (an MP4 wider than H.264 takes), and every image mode PIL opens
(a 16-bit PNG was clipped to near white). Memory is measured in a `ground` process of its own."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ground import inputs, render
from ground.api import Grounder
from ground.cli import app
from ground.result import DISPLAY_SIDE
from pipeline import ffmpeg
from tests.support import media

ROOT = Path(__file__).resolve().parents[2]
PRIME_RATE = 100_003  # no common factor with 16 kHz: torchaudio's polyphase kernel would be 6.4 GB
# what a `ground` run may cost above its imports: the 64 MP picture decoded (256 MB, the model
# needs its exact pixels) plus everything else; before the maps were bounded it was ~8 GB
MAX_EXTRA_RSS_MB = 800

CHILD = """
import sys
import ground.api, ground.cli  # torch, transformers and the model code: the process's baseline


def peak_kb():  # this process's own peak RSS (getrusage's survives exec: it may be the parent's)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])


base = peak_kb()
try:
    ground.cli.app(sys.argv[1:])
finally:
    print(f"base_rss_kb {base} extra_rss_kb {peak_kb() - base}", file=sys.stderr)
"""


def ground(ckpt, out, *args):
    return CliRunner().invoke(app, ["--checkpoint", str(ckpt), "--out", str(out), "--no-progress", *args])


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    return media.write_mode_pictures(tmp_path_factory.mktemp("modes"))


def test_a_64_mp_jpeg_and_a_prime_rate_wav_cost_what_the_model_needs(tiny_checkpoint, tmp_path):
    big = Image.linear_gradient("L").resize((8000, 8000), Image.BILINEAR)  # at the 64 MP limit, ~1 MB
    Image.merge("RGB", [big, big.transpose(Image.Transpose.ROTATE_90), big]).save(tmp_path / "big.jpg", quality=40)
    wav = media.write_audio(tmp_path / "prime.wav", media.tone(440, 0.6, PRIME_RATE), PRIME_RATE)
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            "--checkpoint",
            str(tiny_checkpoint),
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            "--image",
            str(tmp_path / "big.jpg"),
            "--audio",
            str(wav),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    base_mb, extra_mb = (int(run.stderr.split(f"{k}_rss_kb")[-1].split()[0]) / 1024 for k in ("base", "extra"))
    print(
        f"\n`ground` on a 8000x8000 JPEG and a {PRIME_RATE} Hz WAV: "
        f"peak {extra_mb:.0f} MB above its imports' {base_mb:.0f} MB"
    )
    assert extra_mb < MAX_EXTRA_RSS_MB
    summary = json.loads((tmp_path / "out" / "result.json").read_text())
    assert summary["image_size"] == [8000, 8000] and summary["map_size"] == [DISPLAY_SIDE, DISPLAY_SIDE]
    assert summary["model"]["audio"][str(wav)]["source_rate"] == PRIME_RATE and summary["duration_s"] == pytest.approx(
        0.6, abs=1e-3
    )
    left, top, right, bottom = summary["model"]["crop_box"]  # peaks in input pixels, inside the crop
    assert all(left <= h["peak"]["x"] < right and top <= h["peak"]["y"] < bottom for h in summary["heads"].values())
    with Image.open(tmp_path / "out" / "overlay_total.png") as im:
        assert im.size == (DISPLAY_SIDE + render.BAR_WIDTH, DISPLAY_SIDE + render.CAPTION)


def test_a_strip_is_refused_and_a_panorama_is_drawn_at_a_bounded_size(tiny_checkpoint, files, tmp_path):
    strip = Image.new("RGB", (20_000, 20), (90, 140, 30))
    strip.save(tmp_path / "strip.png")
    refused = ground(
        tiny_checkpoint, tmp_path / "a", "--image", str(tmp_path / "strip.png"), "--audio", str(files["speech"])
    )
    assert refused.exit_code == 2 and refused.output.startswith("error: image_aspect: ")
    assert len(refused.output.strip().splitlines()) == 1 and "strip.png" in refused.output
    media.write_image(tmp_path / "wide.jpg", (2400, 120))  # 20:1, the most elongated picture taken
    result = ground(
        tiny_checkpoint, tmp_path / "b", "--image", str(tmp_path / "wide.jpg"), "--audio", str(files["speech"])
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "b" / "result.json").read_text())
    assert summary["image_size"] == [2400, 120] and summary["map_size"] == [DISPLAY_SIDE, 51]
    frame = ffmpeg.extract_frame(tmp_path / "b" / "heatmaps.mp4", 0.5)  # panels at most VIDEO_WIDTH wide
    assert frame.width <= 3 * (render.VIDEO_WIDTH + render.BAR_WIDTH) + 1


def test_every_image_mode_reaches_the_model_by_its_value_range(tiny_checkpoint, files, pictures):
    for name, (path, expected) in pictures.items():
        np.testing.assert_array_equal(np.asarray(inputs.load_image(path)), expected, err_msg=name)
    grounder = Grounder.from_checkpoint(tiny_checkpoint)
    eight = grounder.ground(pictures["L.png"][0], files["speech"])
    for name in ("I16.png", "I16B.tif", "I.tif", "F.tif", "I16.pgm"):
        wide = grounder.ground(pictures[name][0], files["speech"])
        np.testing.assert_array_equal(np.asarray(wide.image), np.asarray(eight.image), err_msg=name)
        np.testing.assert_array_equal(wide.mean_maps["total"], eight.mean_maps["total"], err_msg=name)


def test_a_16_bit_png_through_the_command_is_its_8_bit_copy(tiny_checkpoint, files, pictures, tmp_path):
    for name in ("I16.png", "L.png"):
        result = ground(
            tiny_checkpoint, tmp_path / name, "--image", str(pictures[name][0]), "--audio", str(files["speech"])
        )
        assert result.exit_code == 0, result.output
    with (
        Image.open(tmp_path / "I16.png" / "overlays.png") as wide,
        Image.open(tmp_path / "L.png" / "overlays.png") as eight,
    ):
        np.testing.assert_array_equal(np.asarray(wide), np.asarray(eight))
    with Image.open(pictures["I16.png"][0]) as im:
        assert np.asarray(im.convert("RGB"))[:, :16].mean() > 200  # PIL alone clips: the dark quarter white
