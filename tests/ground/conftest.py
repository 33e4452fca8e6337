"""Fixtures of the ground tests: generated media files (real ffmpeg); the tiny checkpoint is tests/conftest.py's."""

import numpy as np
import pytest

from tests.support import media


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """A landscape picture, speech at 22.05 kHz mono, a stereo 44.1 kHz sound, a video (picture +
    speech track, made by ffmpeg), and the hostile ones: silence, a too-short clip, garbage, a PNG claiming 900 MP."""
    root = tmp_path_factory.mktemp("media")
    return {
        "image": media.write_image(root / "scene.png", size=(200, 120)),
        "speech": media.write_audio(root / "speech.wav", media.speech_like(2.5, 22_050, seed=1), 22_050),
        "sound": media.write_audio(root / "drum.wav", np.stack([media.noise(2.0, 44_100, seed=2)] * 2), 44_100),
        "video": media.write_video(root / "clip.mp4", media.speech_like(2.0, 44_100, seed=3), 44_100, size=(96, 64)),
        "mute_video": media.write_video(root / "mute.mp4", None, seconds=1.0),
        "silent": media.write_audio(root / "silent.wav", np.zeros(16_000, np.float32), 16_000),
        "short": media.write_audio(root / "short.wav", media.tone(440, 0.2), 16_000),
        "garbage": media.write_garbage(root / "noise.wav"),
        "bad_image": media.write_garbage(root / "broken.png"),
        "bomb": media.write_huge_png_header(root / "bomb.png"),
        "cut_image": media.write_truncated(media.write_image(root / "whole.jpg", size=(320, 240)), root / "cut.jpg"),
    }
