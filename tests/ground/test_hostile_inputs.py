"""Hostile inputs of `ground` beyond test_cli.py's corpus: an --out that cannot be written (refused
before the model loads, and also where the writes happen), a video whose picture ends before its
sound, a video without sound, checkpoints whose weights or maps are not finite numbers, and a DenseAV
state dict that does not record its heads. Each refusal is one `error:` line (exit 2)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ground import inputs
from ground.cli import app
from model.checkpoint import WEIGHTS_FILE
from pipeline import ffmpeg
from tests.model.test_denseav import random_state, write
from tests.support import media

ROOT = Path(__file__).resolve().parents[2]


def ground(ckpt, out, *args):
    return CliRunner().invoke(app, ["--checkpoint", str(ckpt), "--out", str(out), "--no-progress", *args])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def edited_checkpoint(tiny_checkpoint, folder: Path, edit) -> Path:
    """A copy of the tiny checkpoint whose weights ``edit(state)`` changed in place."""
    shutil.copytree(tiny_checkpoint, folder)
    state = load_file(str(folder / WEIGHTS_FILE))
    edit(state)
    save_file(state, str(folder / WEIGHTS_FILE))
    return folder


# --------------------------------------------------------------------------- --out


def _sysfs_out():
    """A folder even root cannot create files in (sysfs), or None where this system has none."""
    try:
        handle, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys/ground-out/sub")
    os.close(handle)
    os.unlink(probe)
    return None


@pytest.mark.parametrize("case", ["under a file", "in sysfs"])
def test_an_out_that_cannot_be_written_is_refused_before_the_model_loads(files, tmp_path, case):
    """The checkpoint is broken on purpose: the --out line comes first, so nothing was loaded."""
    broken = tmp_path / "ckpt"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    if case == "under a file":
        (tmp_path / "FILE").write_text("a regular file")
        out, says = tmp_path / "FILE" / "sub", f"{tmp_path / 'FILE'} is a file, not a folder"
    else:
        out = _sysfs_out()
        if out is None:
            pytest.skip("/sys is writable here")
        says = "cannot be written (/sys: "
    line = one_error_line(ground(broken, out, "--image", str(files["image"]), "--audio", str(files["speech"])))
    assert f"--out {out}" in line and says in line and "give --out a folder" in line, line
    assert "not JSON" not in line


def test_an_out_on_a_read_only_file_system(files, tmp_path):
    """A read-only tmpfs mounted in a private mount namespace (`unshare -rm`): root cannot write it."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -rm (user and mount namespaces) is not available")
    cmd = [
        sys.executable,
        "-c",
        "from ground.cli import app; app()",
        "--checkpoint",
        str(tmp_path),
        "--out",
        str(mount / "out"),
        "--image",
        str(files["image"]),
        "--audio",
        str(files["speech"]),
    ]
    script = 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"'
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, str(mount), *cmd],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"error: --out {mount / 'out'} cannot be written ({mount}: Read-only file system); "
        "give --out a folder you can write"
    )


def test_a_write_that_fails_after_the_probe_is_one_line(tiny_checkpoint, files, tmp_path):
    """The probe passes (the folder is writable) but one output name is taken by a folder."""
    (tmp_path / "out" / "overlay_speech.png").mkdir(parents=True)
    line = one_error_line(
        ground(tiny_checkpoint, tmp_path / "out", "--image", str(files["image"]), "--audio", str(files["speech"]))
    )
    assert f"cannot write {tmp_path / 'out' / 'overlay_speech.png'} (Is a directory)" in line, line


# --------------------------------------------------------------------------- videos


@pytest.fixture(scope="session")
def still_video(tmp_path_factory):
    """One video frame (a picture muxed without looping) under 2 s of sound, as made from a still."""
    root = tmp_path_factory.mktemp("still")
    picture = media.write_image(root / "still.png", size=(96, 64), colour=(20, 40, 220))
    sound = media.write_audio(root / "sound.wav", media.speech_like(2.0, 16_000, seed=4), 16_000)
    path = root / "still.mp4"
    ffmpeg.run(
        ["-y", "-i", str(picture), "-i", str(sound), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)]
    )
    return path


def test_a_single_frame_stays_shown_while_the_sound_goes_on(tiny_checkpoint, still_video, tmp_path):
    found = ffmpeg.probe(still_video)
    assert found.video and found.audio and found.duration == pytest.approx(2.0, abs=0.1)
    for at in (0.5, 1.95):  # red and blue are flat in the picture (green is a gradient)
        red_blue = np.asarray(inputs.video_frame(still_video, at), np.float32)[..., [0, 2]].mean((0, 1))
        assert np.abs(red_blue - (20, 220)).max() < 12, (at, red_blue)
    for every in ([], ["--every-frame"]):
        result = ground(tiny_checkpoint, tmp_path / str(len(every)), "--video", str(still_video), *every)
        assert result.exit_code == 0, result.output
        summary = json.loads((tmp_path / str(len(every)) / "result.json").read_text())
        frames = len(summary["times_s"])
        assert summary["model"]["image"] == (f"{frames} video frames" if every else "one picture") and frames > 5


# --------------------------------------------------------------------------- unusable models


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_first_bad_key(tiny_checkpoint, files, tmp_path):
    def nan_all(state):
        for key in state:
            state[key] = torch.full_like(state[key], float("nan"))

    ckpt = edited_checkpoint(tiny_checkpoint, tmp_path / "nan", nan_all)
    line = one_error_line(
        ground(ckpt, tmp_path / "out", "--image", str(files["image"]), "--audio", str(files["speech"]))
    )
    first = sorted(load_file(str(ckpt / WEIGHTS_FILE)))[0]
    assert f"weights file {ckpt / WEIGHTS_FILE}: {first} holds" in line and "NaN or infinite" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy on the inf maps
def test_maps_that_overflow_are_refused_and_nothing_is_written(tiny_checkpoint, files, tmp_path):
    """Finite weights, finite features of ~1e20 on both sides: their dot products overflow to inf."""

    def overflow(state):
        for key in (
            "image_aligner.proj.weight",
            "image_aligner.proj.bias",
            "audio_aligner.attention.mlp.2.weight",
            "audio_aligner.attention.mlp.2.bias",
        ):
            state[key] = state[key] * 1e20

    ckpt = edited_checkpoint(tiny_checkpoint, tmp_path / "overflow", overflow)
    line = one_error_line(
        ground(ckpt, tmp_path / "out", "--image", str(files["image"]), "--audio", str(files["speech"]))
    )
    assert "maps are NaN or infinite" in line and "nothing was written" in line, line
    assert not (tmp_path / "out").exists()
    # the web page gets the same line from the same check (Grounder.assemble), never the maps
    import gradio as gr

    from ground.api import Grounder
    from ground.serve import run_page

    with pytest.raises(gr.Error) as err:
        run_page(Grounder.from_checkpoint(ckpt), str(files["image"]), None, str(files["speech"]), None)
    assert "maps are NaN or infinite" in err.value.message and "\n" not in err.value.message, err.value.message


def test_a_denseav_state_dict_without_heads_takes_num_heads(files, tmp_path):
    weights = write(random_state("peft05"), tmp_path / "bare" / "weights.safetensors", "safetensors")
    args = ["--image", str(files["image"]), "--audio", str(files["speech"])]
    line = one_error_line(ground(weights, tmp_path / "out", *args))
    assert f"{weights}: the file does not say how many heads" in line and "pass --num-heads" in line, line
    line = one_error_line(ground(weights, tmp_path / "out", *args, "--num-heads", "3"))
    assert "3 heads (num_heads) do not split the aligners' 20 output channels" in line, line
    result = ground(weights, tmp_path / "out", *args, "--num-heads", "2", "--speech-head", "1")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "result.json").read_text())
    assert set(summary["heads"]) == {"sound", "speech", "total"} and summary["model"]["config"]["num_heads"] == 2


def test_ground_serve_takes_num_heads_too(tmp_path):
    """`ground serve` loads the same bare state dict only with --num-heads; a count that does not split the
    channels is refused by the same check (the server does not start in either refusal)."""
    weights = write(random_state("peft05"), tmp_path / "bare" / "weights.safetensors", "safetensors")
    for extra, expected in (([], "pass --num-heads"), (["--num-heads", "3"], "do not split the aligners' 20 output")):
        result = CliRunner().invoke(app, ["serve", "--checkpoint", str(weights), "--port", "1", *extra])
        line = one_error_line(result)
        assert expected in line and str(weights) in line, line
