"""The IS3 / Extended IS3 reader on generated miniature trees in the published layout."""

import json
import shutil

import numpy as np
import pytest

from pipeline import format as fmt
from pipeline.testsets.common import DatasetError, load_binary_mask, load_clip
from pipeline.testsets.is3 import read_is3
from tests.support.testsets import is3_stems, make_is3_tree


def test_is3_reads_stems_groups_and_pairs(tmp_path):
    root = make_is3_tree(tmp_path / "is3")
    ds = read_is3(root)
    assert ds.extended and not ds.skipped
    assert sorted(a.stem for a in ds.annotations) == sorted(is3_stems())
    groups = ds.images()
    assert set(groups) == {"acousticguitar_dog_7514", "fireworks_subwaytrain_10415", "gibbon_drum"}
    assert sorted(a.target for a in groups["fireworks_subwaytrain_10415"]) == ["firework", "subway"]

    cross, skipped = ds.pairs("cross")
    assert not skipped and len(cross) == 6
    for p in cross:  # the speech names the other object of the same image
        assert p.sound.image_id == p.speech.image_id and p.sound.stem != p.speech.stem
    assert {p.sound.stem for p in cross} == set(is3_stems())
    same, _ = ds.pairs("same")
    assert len(same) == 6 and all(p.sound is p.speech for p in same)


def test_is3_masks_and_audio_are_standardized(tmp_path):
    root = make_is3_tree(tmp_path / "is3", size=48)
    ds = read_is3(root)
    ann = next(a for a in ds.annotations if a.stem == "acousticguitar_dog_7514_dog")
    mask = load_binary_mask(ann.mask_path, size=224)
    assert mask.shape == (224, 224) and mask.dtype == bool
    assert mask[:, 130:].all() and not mask[:, :100].any()  # right half, JPEG fringe thresholded
    clip = load_clip(ann.audio_path)
    assert clip.audio.shape == (fmt.CLIP_SAMPLES,) and clip.audio.dtype == np.float32
    assert clip.valid == 2 * fmt.SAMPLE_RATE  # 2 s at 22,050 Hz stereo -> 32,000 samples at 16 kHz
    assert np.all(clip.audio[clip.valid :] == 0) and np.abs(clip.audio[: clip.valid]).max() > 0.1


def test_is3_accepts_readme_spelling_and_counts_missing_files(tmp_path):
    root = make_is3_tree(tmp_path / "is3", extended=False, audio_dir="audio_waw")
    (root / "gt_segmentation" / "gibbon_drum_drum.jpg").unlink()
    ds = read_is3(root)
    assert not ds.extended and len(ds.annotations) == 5
    assert [(s.item, s.reason) for s in ds.skipped] == [("gibbon_drum_drum", "missing mask")]
    with pytest.raises(DatasetError, match="gibbon_drum_drum: missing mask"):
        read_is3(root, strict=True)
    with pytest.raises(DatasetError, match="extend-is3"):
        ds.pairs("cross")
    with pytest.raises(DatasetError, match="plain IS3"):
        read_is3(root, require_speech=True)


def test_is3_unusable_audio_is_a_counted_skip(tmp_path):
    import soundfile as sf

    root = make_is3_tree(tmp_path / "is3")
    sf.write(root / "audio_wav" / "acousticguitar_dog_7514_dog.wav", np.zeros(3000, np.float32), 16000)
    (root / "speech_wav" / "gibbon_drum_drum.wav").write_bytes(b"garbage")
    ds = read_is3(root)
    reasons = {s.item: s.reason for s in ds.skipped}
    assert "shorter than 0.5 s" in reasons["acousticguitar_dog_7514_dog"]
    assert reasons["gibbon_drum_drum"].startswith("unreadable audio gibbon_drum_drum.wav")
    assert len(ds.annotations) == 4


def test_is3_cross_pairs_skip_incomplete_images(tmp_path):
    root = make_is3_tree(tmp_path / "is3")
    (root / "speech_wav" / "gibbon_drum_gibbon.wav").unlink()
    ds = read_is3(root)
    assert [s.item for s in ds.skipped] == ["gibbon_drum_gibbon"]
    cross, skipped = ds.pairs("cross")
    assert len(cross) == 4 and [s.item for s in skipped] == ["gibbon_drum"]


def test_is3_missing_folder_is_named(tmp_path):
    root = make_is3_tree(tmp_path / "is3")
    shutil.rmtree(root / "gt_segmentation")
    with pytest.raises(DatasetError, match="no mask folder.*gt_segmentation/"):
        read_is3(root)


def test_is3_annotation_json_is_cross_checked(tmp_path):
    root = make_is3_tree(tmp_path / "is3")
    listed = {s: {"bbox": [0, 0, 1, 1]} for s in is3_stems()} | {"cat_dog_1_cat": {"bbox": [0, 0, 1, 1]}}
    (root / "IS3_annotation.json").write_text(json.dumps(listed))
    ds = read_is3(root)
    assert ds.annotation_json["stems_mentioned"] == 6
    assert ds.annotation_json["stems_missing_from_tree"] == ["cat_dog_1_cat"]
