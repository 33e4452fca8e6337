"""The retrieval-set reader on shard directories as ``prep`` writes them."""

import numpy as np
import pytest

from pipeline import format as fmt
from pipeline.testsets.common import DatasetError
from pipeline.testsets.retrieval import read_retrieval_set
from tests.support.testsets import make_retrieval_shards


def test_retrieval_set_selects_seeded_permutation(tmp_path):
    keys = make_retrieval_shards(tmp_path / "val", n=14, audio_type="speech", shard_size=4)
    rs = read_retrieval_set(tmp_path / "val", n=10, seed=0)
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
    assert len(read_retrieval_set(tmp_path / "val", n=1000).items) == 14


def test_retrieval_set_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_retrieval_set(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .tar shards"):
        read_retrieval_set(tmp_path / "empty")


def test_retrieval_set_follows_the_commit_rule(tmp_path):
    """A corrupt commit marker makes its shard uncommitted: named, and its samples not drawn from;
    a file name that is not a shard's (here one webdataset would run as a shell command) is ignored."""
    keys = make_retrieval_shards(tmp_path / "val", n=8, audio_type="sound", shard_size=4, unfinished=False)
    (tmp_path / "val" / "000001_stats.json").write_text("{torn")
    (tmp_path / "val" / "pipe:touch HACKED;#.tar").write_bytes(b"")
    rs = read_retrieval_set(tmp_path / "val")
    assert rs.available == 4 and sorted(it.key for it in rs.items) == keys[:4]
    assert [(s.item, s.reason.split(" (")[0]) for s in rs.skipped_shards] == [
        ("000001.tar", "unreadable _stats.json marker")
    ]
    assert not (tmp_path / "HACKED").exists() and not list(tmp_path.glob("*HACKED*"))
