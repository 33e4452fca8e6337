"""The DenseAV ADE20K prompted-set reader on generated miniature trees in the published layout."""

import numpy as np
import pytest

from pipeline import format as fmt
from pipeline.testsets.ade20k import decode_ade_classes, load_ade_class_mask, read_ade20k_prompted
from pipeline.testsets.common import DatasetError, load_clip
from tests.support.testsets import ADE_CLASSES, encode_ade_classes, make_ade_tree


@pytest.mark.parametrize("kind", ["speech", "sound"])
def test_ade20k_reader(tmp_path, kind):
    root = make_ade_tree(tmp_path, kind)
    ds = read_ade20k_prompted(tmp_path, kind)  # the parent folder is accepted too
    assert ds.root == root and ds.dropped_by_protocol == 2 and not ds.skipped
    assert [it.class_id for it in ds.items] == [c for c, _ in ADE_CLASSES[kind]]
    assert ds.items[0].class_name == ADE_CLASSES[kind][0][1]
    if kind == "speech":
        assert ds.items[0].timing == (1.0, 1.5)
    else:
        assert ds.items[0].timing is None
    it = ds.items[1]
    labels = load_ade_class_mask(it.annotation_path)
    assert labels.shape == (224, 224)
    assert set(np.unique(labels)) == {5, it.class_id}
    # the object is the middle third of an 80 x 48 image: after resize + centre crop it is centred
    cols = np.flatnonzero((labels == it.class_id).any(axis=0))
    assert abs((cols.min() + cols.max()) / 2 - 111.5) < 3
    clip = load_clip(it.audio_path)
    assert clip.valid == 3 * fmt.SAMPLE_RATE


def test_ade_class_encoding_round_trip():
    classes = np.array([[0, 1, 255], [256, 2978, 3661]])
    assert np.array_equal(decode_ade_classes(encode_ade_classes(classes)), classes)


def test_ade20k_missing_file_and_bad_layout(tmp_path):
    root = make_ade_tree(tmp_path, "speech")
    (root / "audio" / "prompt_1.wav").unlink()
    ds = read_ade20k_prompted(root, "speech")
    assert len(ds.items) == 2 and ds.skipped[0].reason == "missing audio/prompt_1.wav"
    with pytest.raises(DatasetError, match="missing audio/prompt_1.wav"):
        read_ade20k_prompted(root, "speech", strict=True)
    with pytest.raises(DatasetError, match="lacks column"):
        read_ade20k_prompted(root, "sound")  # the speech CSV has no vggsound_file column
    with pytest.raises(DatasetError, match="prompted_segmentation.csv not found"):
        read_ade20k_prompted(tmp_path / "nowhere", "speech")
