"""Reading shard tars (pipeline.shard_dir): where samples sit, reading them later, unreadable tars."""

import os
import shutil
import tarfile
import threading

import pytest

from pipeline import format as fmt
from pipeline import shard_dir
from pipeline.data.sources import Shard, list_shards
from pipeline.data.stages import SkipCounter, StreamGuard, read_samples


def _tars(root, role="speech"):
    return [s.path for s in list_shards(str(root / role))]


def test_located_samples_read_back_as_stored_even_once_the_tar_is_replaced(shards, tmp_path):
    root, speech_keys = shards
    first, second = _tars(root)[:2]
    tar = tmp_path / "000000.tar"
    shutil.copy(first, tar)
    refs = list(shard_dir.sample_refs(tar))
    assert [r.key for r in refs] == speech_keys[:6] == shard_dir.tar_keys(tar)
    stored = list(shard_dir.iter_tar_samples(tar))
    assert all(set(s) == {"__key__", *fmt.MEMBER_EXTS} for s in stored)
    shutil.copy(second, tmp_path / "other.tar")
    os.replace(tmp_path / "other.tar", tar)  # as `prep retry` swaps a rewritten shard in
    assert shard_dir.tar_keys(tar) == speech_keys[6:12]
    for ref, sample in zip(refs, stored, strict=True):  # still the file the offsets came from
        assert shard_dir.read_sample(ref) == {**sample, "__url__": str(tar)}


def test_a_tar_truncated_after_its_samples_were_located_is_a_counted_skip(shards, tmp_path):
    root, speech_keys = shards
    tar = tmp_path / "000000.tar"
    shutil.copy(_tars(root)[0], tar)
    refs = list(shard_dir.sample_refs(tar))
    with open(tar, "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    counter = SkipCounter("test", 0.0)
    guard = StreamGuard("speech", str(tar), [Shard(str(tar), len(refs))], counter, limit=100)
    read = [s["__key__"] for s in read_samples(iter(refs), guard)]
    assert 0 < len(read) < len(refs) and read == speech_keys[: len(read)]
    assert counter.by_reason == {"speech: unreadable tar data (ReadError)": len(refs) - len(read)}


def test_unreadable_tars_go_to_the_callback_and_reading_goes_on_without_hanging(shards, tmp_path):
    root, speech_keys = shards
    empty, fifo = tmp_path / "empty.tar", tmp_path / "fifo.tar"
    empty.write_bytes(b"")
    os.mkfifo(fifo)  # no writer: a blocking open would wait forever
    good = _tars(root)[0]
    failed, samples = [], []

    def read():
        failed_here = lambda path, exn, yielded: failed.append((path, type(exn), yielded))  # noqa: E731
        samples.extend(shard_dir.shard_samples([empty, fifo, good], failed_here))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "reading a fifo named as a tar blocked"
    assert [(path, yielded) for path, _, yielded in failed] == [(str(empty), False), (str(fifo), False)]
    assert failed[0][1] is tarfile.ReadError and issubclass(failed[1][1], shard_dir.TAR_ERRORS)
    assert [s["__key__"] for s in samples] == speech_keys[:6] and {s["__url__"] for s in samples} == {good}
    with pytest.raises(tarfile.ReadError):  # no callback: the error is the caller's
        list(shard_dir.shard_samples([good, empty]))
