"""The clip helpers every test-set reader shares."""

import numpy as np
import pytest

from pipeline import format as fmt
from pipeline.testsets.common import DatasetError, load_clip, standardize_clip


def test_standardize_clip_trims_long_audio():
    long = np.ones((fmt.CLIP_SAMPLES + 500, 2), np.float32) * 0.5
    clip = standardize_clip(long.T, fmt.SAMPLE_RATE)
    assert clip.valid == fmt.CLIP_SAMPLES and clip.audio.shape == (fmt.CLIP_SAMPLES,)


def test_undecodable_audio_names_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(DatasetError, match="broken.wav"):
        load_clip(bad)
