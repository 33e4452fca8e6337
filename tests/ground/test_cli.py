"""The `ground` command end to end on generated files with a tiny checkpoint: overlays, the heatmap
MP4 (real ffmpeg), result.json; mixtures, --separate, videos; and the hostile-input corpus, where
every case must stop with one `error:` line naming the input (exit 2)."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from ground import render
from ground.cli import app
from pipeline import audio as paudio
from pipeline import ffmpeg

HEADS = ("sound", "speech", "total")


def ground(ckpt, out, *args):
    return CliRunner().invoke(app, ["--checkpoint", str(ckpt), "--out", str(out), "--no-progress", *args])


def check_folder(folder, image_size, seconds):
    for name in HEADS:
        with Image.open(folder / f"overlay_{name}.png") as im:
            assert im.size == (image_size[0] + render.BAR_WIDTH, image_size[1] + render.CAPTION)
    with Image.open(folder / "overlays.png") as im:
        assert im.size == (3 * (image_size[0] + render.BAR_WIDTH), image_size[1] + render.CAPTION)
    clip, rate = paudio.read(folder / "heatmaps.mp4")  # the MP4's sound track is the clip grounded
    assert rate == 16_000 and abs(clip.shape[1] / rate - seconds) < 0.1
    frame = ffmpeg.extract_frame(folder / "heatmaps.mp4", seconds / 2)
    assert frame.height >= render.VIDEO_HEIGHT and frame.width > 3 * frame.height  # three panels side by side
    summary = json.loads((folder / "result.json").read_text())
    assert set(summary["heads"]) == set(HEADS)
    assert {"inputs", "times_s", "dominant", "dominant_segments", "duration_s", "model"} <= set(summary)
    assert all(len(h["activation"]) == len(summary["times_s"]) for h in summary["heads"].values())
    return summary


def test_an_image_and_a_mixture_of_two_files(tiny_checkpoint, files, tmp_path):
    result = ground(
        tiny_checkpoint,
        tmp_path,
        "--image",
        str(files["image"]),
        "--audio",
        str(files["speech"]),
        "--audio",
        str(files["sound"]),
    )
    assert result.exit_code == 0, result.output
    summary = check_folder(tmp_path, (200, 120), 2.5)  # the mixture lasts as long as its longest part
    assert summary["inputs"]["audio"] == [str(files["speech"]), str(files["sound"])]
    assert summary["model"]["audio"]["mixed"].startswith("equal active RMS")
    ranges = summary["colours"]["overlay_ranges"]  # the default: the heads on one scale, the total on its own
    assert summary["colours"]["scale"] == "shared" and ranges["sound"] == ranges["speech"] != ranges["total"]
    assert f"wrote {tmp_path}/overlays.png" in result.output


def test_separate_grounds_each_file_in_its_own_folder(tiny_checkpoint, files, tmp_path):
    result = ground(
        tiny_checkpoint,
        tmp_path,
        "--image",
        str(files["image"]),
        "--audio",
        str(files["speech"]),
        "--audio",
        str(files["sound"]),
        "--separate",
        "--window",
        "0.5:1.5",
    )
    assert result.exit_code == 0, result.output
    speech = check_folder(tmp_path / "speech", (200, 120), 2.5)
    drum = check_folder(tmp_path / "drum", (200, 120), 2.0)
    assert speech["inputs"]["audio"] == [str(files["speech"])] and drum["model"]["window_s"] == [0.5, 1.5]


@pytest.mark.parametrize("every", [False, True])
def test_a_video_with_its_own_sound(tiny_checkpoint, files, tmp_path, every):
    result = ground(tiny_checkpoint, tmp_path, "--video", str(files["video"]), *(["--every-frame"] if every else []))
    assert result.exit_code == 0, result.output
    summary = check_folder(tmp_path, (96, 64), 2.0)
    frames = len(summary["times_s"])
    assert summary["model"]["image"] == (f"{frames} video frames" if every else "one picture")
    assert summary["inputs"] == {"video": str(files["video"]), "every_frame": every}


def test_every_frame_maps_follow_the_pictures(tiny_checkpoint, files, tmp_path):
    """Frame t is grounded on the picture shown at t: the video's colour changes each second."""
    from ground.api import Grounder
    from ground.cli import _ground_video

    result = _ground_video(Grounder.from_checkpoint(tiny_checkpoint), files["video"], True, None, False)
    colours = [im.getpixel((48, 32)) for im in result.frames]
    first, last = colours[0], colours[-1]
    assert first != last and len(set(colours)) == 2  # seconds 0 and 1 of the clip
    assert result.maps["total"].shape == (len(result.times), 64, 96) and result.image.size == (96, 64)
    assert {im.height for im in result.frames} == {render.VIDEO_HEIGHT}  # kept at the MP4's size only


def hostile_cases(files):
    image, speech = str(files["image"]), str(files["speech"])
    return {
        "silent audio": (["--image", image, "--audio", str(files["silent"])], f"{files['silent']} is silent"),
        "too short audio": (["--image", image, "--audio", str(files["short"])], f"{files['short']} is too short"),
        "garbage audio": (
            ["--image", image, "--audio", str(files["garbage"])],
            f"audio {files['garbage']} cannot be decoded",
        ),
        "garbage image": (["--image", str(files["bad_image"]), "--audio", speech], f"image {files['bad_image']}"),
        "decompression bomb": (
            ["--image", str(files["bomb"]), "--audio", speech],
            f"image {files['bomb']}: image_too_large",
        ),
        "truncated image": (["--image", str(files["cut_image"]), "--audio", speech], f"image {files['cut_image']}"),
        "video without picture": (["--video", speech], f"video {speech}: no picture"),
        "missing audio": (["--image", image, "--audio", "nope.wav"], "nope.wav does not exist"),
        "video without sound": (
            ["--video", str(files["mute_video"])],
            f"video {files['mute_video']} has no sound track",
        ),
        "window past the end": (["--image", image, "--audio", speech, "--window", "7:9"], "holds no audio frame"),
        "window not a range": (["--image", image, "--audio", speech, "--window", "abc"], "is not START:END"),
        "image without audio": (["--image", image], "--image needs at least one --audio"),
        "image and video": (["--image", image, "--audio", speech, "--video", str(files["video"])], "exactly one of"),
        "video and audio": (["--video", str(files["video"]), "--audio", speech], "drop --audio"),
        "every frame without video": (
            ["--image", image, "--audio", speech, "--every-frame"],
            "--every-frame needs --video",
        ),
        "speech head out of range": (["--image", image, "--audio", speech, "--speech-head", "5"], "outside 0..1"),
        "scale not a rule": (["--image", image, "--audio", speech, "--scale", "log"], "give one of shared, per-map"),
    }


CASES = [
    "silent audio",
    "too short audio",
    "garbage audio",
    "garbage image",
    "decompression bomb",
    "truncated image",
    "video without picture",
    "missing audio",
    "video without sound",
    "window past the end",
    "window not a range",
    "image without audio",
    "image and video",
    "video and audio",
    "every frame without video",
    "speech head out of range",
    "scale not a rule",
]


@pytest.mark.parametrize("case", CASES)
def test_hostile_input_stops_with_one_line(tiny_checkpoint, files, tmp_path, case):
    args, expected = hostile_cases(files)[case]
    result = ground(tiny_checkpoint, tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output
    assert not (tmp_path / "out" / "result.json").exists()


def test_a_missing_or_broken_checkpoint_is_one_line(files, tmp_path):
    broken = tmp_path / "ckpt"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    for ckpt, expected in [(tmp_path / "none", "does not exist"), (broken, "is not JSON")]:
        result = ground(ckpt, tmp_path / "out", "--image", str(files["image"]), "--audio", str(files["speech"]))
        assert result.exit_code == 2 and result.output.count("\n") == 1 and expected in result.output, result.output
