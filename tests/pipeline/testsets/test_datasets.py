"""Test-set readers on generated miniature trees in the published layouts."""

import json
import shutil

import numpy as np
import pytest

from tests.support.testsets import (ADE_CLASSES, encode_ade_classes, is3_stems, make_ade_tree, make_is3_tree,
                           make_retrieval_shards)
from pipeline.testsets import datasets as D
from pipeline import format as fmt

# ---------------------------------------------------------------------------------------------
# IS3


def test_is3_reads_stems_groups_and_pairs(tmp_path):
    root = make_is3_tree(tmp_path / "is3")
    ds = D.read_is3(root)
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
    ds = D.read_is3(root)
    ann = next(a for a in ds.annotations if a.stem == "acousticguitar_dog_7514_dog")
    mask = D.load_binary_mask(ann.mask_path, size=224)
    assert mask.shape == (224, 224) and mask.dtype == bool
    assert mask[:, 130:].all() and not mask[:, :100].any()  # right half, JPEG fringe thresholded
    clip = D.load_clip(ann.audio_path)
    assert clip.audio.shape == (fmt.CLIP_SAMPLES,) and clip.audio.dtype == np.float32
    assert clip.valid == 2 * fmt.SAMPLE_RATE  # 2 s at 22,050 Hz stereo -> 32,000 samples at 16 kHz
    assert np.all(clip.audio[clip.valid:] == 0) and np.abs(clip.audio[: clip.valid]).max() > 0.1


def test_is3_accepts_readme_spelling_and_counts_missing_files(tmp_path):
    root = make_is3_tree(tmp_path / "is3", extended=False, audio_dir="audio_waw")
    (root / "gt_segmentation" / "gibbon_drum_drum.jpg").unlink()
    ds = D.read_is3(root)
    assert not ds.extended and len(ds.annotations) == 5
    assert [(s.item, s.reason) for s in ds.skipped] == [("gibbon_drum_drum", "missing mask")]
    with pytest.raises(D.DatasetError, match="gibbon_drum_drum: missing mask"):
        D.read_is3(root, strict=True)
    with pytest.raises(D.DatasetError, match="extend-is3"):
        ds.pairs("cross")
    with pytest.raises(D.DatasetError, match="plain IS3"):
        D.read_is3(root, require_speech=True)


def test_is3_unusable_audio_is_a_counted_skip(tmp_path):
    import soundfile as sf

    root = make_is3_tree(tmp_path / "is3")
    sf.write(root / "audio_wav" / "acousticguitar_dog_7514_dog.wav", np.zeros(3000, np.float32), 16000)
    (root / "speech_wav" / "gibbon_drum_drum.wav").write_bytes(b"garbage")
    ds = D.read_is3(root)
    reasons = {s.item: s.reason for s in ds.skipped}
    assert "shorter than 0.5 s" in reasons["acousticguitar_dog_7514_dog"]
    assert reasons["gibbon_drum_drum"].startswith("unreadable audio gibbon_drum_drum.wav")
    assert len(ds.annotations) == 4


def test_is3_cross_pairs_skip_incomplete_images(tmp_path):
    root = make_is3_tree(tmp_path / "is3")
    (root / "speech_wav" / "gibbon_drum_gibbon.wav").unlink()
    ds = D.read_is3(root)
    assert [s.item for s in ds.skipped] == ["gibbon_drum_gibbon"]
    cross, skipped = ds.pairs("cross")
    assert len(cross) == 4 and [s.item for s in skipped] == ["gibbon_drum"]


def test_is3_missing_folder_is_named(tmp_path):
    root = make_is3_tree(tmp_path / "is3")
    shutil.rmtree(root / "gt_segmentation")
    with pytest.raises(D.DatasetError, match="no mask folder.*gt_segmentation/"):
        D.read_is3(root)


def test_is3_annotation_json_is_cross_checked(tmp_path):
    root = make_is3_tree(tmp_path / "is3")
    listed = {s: {"bbox": [0, 0, 1, 1]} for s in is3_stems()} | {"cat_dog_1_cat": {"bbox": [0, 0, 1, 1]}}
    (root / "IS3_annotation.json").write_text(json.dumps(listed))
    ds = D.read_is3(root)
    assert ds.annotation_json["stems_mentioned"] == 6
    assert ds.annotation_json["stems_missing_from_tree"] == ["cat_dog_1_cat"]


# ---------------------------------------------------------------------------------------------
# ADE20K


@pytest.mark.parametrize("kind", ["speech", "sound"])
def test_ade20k_reader(tmp_path, kind):
    root = make_ade_tree(tmp_path, kind)
    ds = D.read_ade20k_prompted(tmp_path, kind)  # the parent folder is accepted too
    assert ds.root == root and ds.dropped_by_protocol == 2 and not ds.skipped
    assert [it.class_id for it in ds.items] == [c for c, _ in ADE_CLASSES[kind]]
    assert ds.items[0].class_name == ADE_CLASSES[kind][0][1]
    if kind == "speech":
        assert ds.items[0].timing == (1.0, 1.5)
    else:
        assert ds.items[0].timing is None
    it = ds.items[1]
    labels = D.load_ade_class_mask(it.annotation_path)
    assert labels.shape == (224, 224)
    assert set(np.unique(labels)) == {5, it.class_id}
    # the object is the middle third of an 80 x 48 image: after resize + centre crop it is centred
    cols = np.flatnonzero((labels == it.class_id).any(axis=0))
    assert abs((cols.min() + cols.max()) / 2 - 111.5) < 3
    clip = D.load_clip(it.audio_path)
    assert clip.valid == 3 * fmt.SAMPLE_RATE


def test_ade_class_encoding_round_trip():
    classes = np.array([[0, 1, 255], [256, 2978, 3661]])
    assert np.array_equal(D.decode_ade_classes(encode_ade_classes(classes)), classes)


def test_ade20k_missing_file_and_bad_layout(tmp_path):
    root = make_ade_tree(tmp_path, "speech")
    (root / "audio" / "prompt_1.wav").unlink()
    ds = D.read_ade20k_prompted(root, "speech")
    assert len(ds.items) == 2 and ds.skipped[0].reason == "missing audio/prompt_1.wav"
    with pytest.raises(D.DatasetError, match="missing audio/prompt_1.wav"):
        D.read_ade20k_prompted(root, "speech", strict=True)
    with pytest.raises(D.DatasetError, match="lacks column"):
        D.read_ade20k_prompted(root, "sound")  # the speech CSV has no vggsound_file column
    with pytest.raises(D.DatasetError, match="prompted_segmentation.csv not found"):
        D.read_ade20k_prompted(tmp_path / "nowhere", "speech")


# ---------------------------------------------------------------------------------------------
# retrieval shards


def test_retrieval_set_selects_seeded_permutation(tmp_path):
    keys = make_retrieval_shards(tmp_path / "val", n=14, audio_type="speech", shard_size=4)
    rs = D.read_retrieval_set(tmp_path / "val", n=10, seed=0)
    assert rs.available == 14 and len(rs.items) == 10
    np.random.seed(0)
    expected = [keys[i] for i in np.random.permutation(14)[:10]]
    assert [it.key for it in rs.items] == expected
    assert [s.item for s in rs.skipped_shards] == ["999999.tar"]
    assert rs.audio_type == "speech"
    item = rs.items[0]
    clip, image = item.clip(), item.image()
    i = int(item.key.split("_")[1])
    assert clip.valid == int((2.0 + i % 5) * fmt.SAMPLE_RATE) and clip.audio.shape == (fmt.CLIP_SAMPLES,)
    assert min(image.size) == fmt.IMAGE_SHORT_SIDE
    # all pairs when fewer than n are available
    assert len(D.read_retrieval_set(tmp_path / "val", n=1000).items) == 14


def test_retrieval_set_errors(tmp_path):
    with pytest.raises(D.DatasetError, match="does not exist"):
        D.read_retrieval_set(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DatasetError, match="no .tar shards"):
        D.read_retrieval_set(tmp_path / "empty")


def test_standardize_clip_trims_long_audio():
    long = np.ones((fmt.CLIP_SAMPLES + 500, 2), np.float32) * 0.5
    clip = D.standardize_clip(long.T, fmt.SAMPLE_RATE)
    assert clip.valid == fmt.CLIP_SAMPLES and clip.audio.shape == (fmt.CLIP_SAMPLES,)


def test_undecodable_audio_names_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(D.DatasetError, match="broken.wav"):
        D.load_clip(bad)
