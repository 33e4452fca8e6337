"""The loader's hostile-input corpus: shard directories and samples built to break it.

Each case is real shards from the real shard builder, then damaged on disk. The loader must run
nothing named by the data, never hang, never crash in a worker, and count every sample it leaves out.
"""

import logging
import math
import os
import shutil
import time

import pytest

from pipeline.data.config import LoaderConfig
from pipeline.data.loader import TrainLoader
from pipeline.data.sources import LoaderError, list_shards
from pipeline.prep.build import build_shards
from pipeline.shard_dir import tar_keys
from tests.support import shardgen

PIPE_NAME = "pipe:touch X;#"


def _cfg(root, **kw):
    base = dict(
        speech=str(root / "speech"),
        sound=str(root / "sound"),
        batch_size=2,
        num_workers=0,
        image_size=32,
        clip_seconds=1.0,
        shuffle_buffer=4,
        log_interval_s=0.0,
    )
    base.update(kw)
    return LoaderConfig(**base)


def _copy(root, tmp_path, role="speech"):
    shutil.copytree(root / role, tmp_path / role)
    return tmp_path / role


def _edit_every_sample(directory, edit):
    for shard in list_shards(str(directory)):
        shardgen.rewrite_tar(shard.path, edit)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_pipe_file_name_in_a_shard_directory_never_runs(shards, tmp_path, monkeypatch, workers):
    root, speech_keys = shards
    speech = _copy(root, tmp_path)
    (speech / f"{PIPE_NAME}.tar").write_bytes(b"")
    (speech / f"{PIPE_NAME}_stats.json").write_text('{"written": 5}')
    monkeypatch.chdir(speech)  # `data.speech=.` there: the name would have run `touch X` here
    for spec in (".", "*.tar", str(speech)):
        loader = TrainLoader(_cfg(root, speech=spec, resampled=False, num_workers=workers))
        seen = [k for b in loader for k in b.get("speech_key", [])]
        assert sorted(seen) == sorted(speech_keys)
        if spec == "*.tar":  # named by the glob and "committed": read as a file, a counted skip
            assert loader.skipped == {"speech: unreadable tar data (ReadError)": 1}
    assert not (speech / "X").exists(), "a file name was run as a command"


def test_a_spec_that_is_a_webdataset_url_is_refused(shards, tmp_path, monkeypatch):
    root, _ = shards
    monkeypatch.chdir(tmp_path)
    for spec in ("pipe:touch X", f"{root / 'speech'},pipe:touch X", "http://example.com/shard.tar"):
        with pytest.raises(LoaderError, match="scheme is not accepted"):
            TrainLoader(_cfg(root, speech=spec))
    assert not (tmp_path / "X").exists()


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(
    "role, edit, reason",
    [
        (
            "speech",
            lambda name, data: shardgen.with_duration(data, 0) if name.endswith(".json") else data,
            "json duration is not a positive number",
        ),
        ("sound", lambda name, data: b"not a flac file" if name.endswith(".flac") else data, "undecodable"),
    ],
)
def test_a_stream_with_no_valid_sample_stops_within_seconds(shards, tmp_path, workers, role, edit, reason):
    root, _ = shards
    broken = _copy(root, tmp_path, role)
    _edit_every_sample(broken, edit)
    start = time.monotonic()
    with pytest.raises(LoaderError) as caught:
        list(TrainLoader(_cfg(root, **{role: str(broken)}, num_workers=workers, epoch_samples=10**6)))
    assert time.monotonic() - start < 30
    message = str(caught.value)
    assert "\n" not in message and f"the {role} stream yields no usable sample" in message
    assert str(broken) in message and reason in message and "every shard tried" in message


def test_consecutive_skips_stop_the_stream_at_the_configured_limit(shards, tmp_path):
    root, _ = shards
    broken = _copy(root, tmp_path)
    _edit_every_sample(
        broken, lambda name, data: shardgen.with_duration(data, -1.0) if name.endswith(".json") else data
    )
    with pytest.raises(LoaderError, match="3 skipped in a row .data.max_consecutive_skips=3"):
        list(TrainLoader(_cfg(root, speech=str(broken), max_consecutive_skips=3)))


def test_bad_durations_are_skipped_and_counted_by_reason(shards, tmp_path):
    root, speech_keys = shards
    speech = _copy(root, tmp_path)
    bad = {
        speech_keys[0]: 0,
        speech_keys[5]: -2.5,
        speech_keys[9]: math.nan,
        speech_keys[11]: math.inf,
        speech_keys[20]: 1e-9,
    }
    absurd = {speech_keys[30]: 1e308, speech_keys[31]: "ten", speech_keys[32]: None}

    def edit(name, data):
        key = name.split(".", 1)[0]
        value = {**bad, **absurd}.get(key, "keep")
        return shardgen.with_duration(data, value) if value != "keep" and name.endswith(".json") else data

    _edit_every_sample(speech, edit)
    loader = TrainLoader(_cfg(root, speech=str(speech), resampled=False))
    seen = [k for b in loader for k in b.get("speech_key", [])]
    assert sorted(seen) == sorted(set(speech_keys) - set(bad) - set(absurd))
    assert loader.skipped == {
        "speech: json duration is not a positive number": 5,
        "speech: json unreadable or without a duration (OverflowError)": 1,
        "speech: json unreadable or without a duration (ValueError)": 1,
        "speech: json unreadable or without a duration (TypeError)": 1,
    }


def test_a_corrupt_commit_marker_is_an_uncommitted_shard(shards, tmp_path, caplog):
    root, speech_keys = shards
    speech = _copy(root, tmp_path)
    marker = sorted(speech.glob("*_stats.json"))[0]
    marker.write_text('{"written": 4, "trunc')
    with caplog.at_level(logging.WARNING):
        loader = TrainLoader(_cfg(root, speech=str(speech), resampled=False))
    warnings = [r.message for r in caplog.records if "unreadable commit marker" in r.message]
    assert len(warnings) == 1 and marker.name in warnings[0] and "prep shards" in warnings[0]
    seen = [k for b in loader for k in b.get("speech_key", [])]
    uncommitted = tar_keys(str(marker).replace("_stats.json", ".tar"))
    assert uncommitted and sorted(seen) == sorted(set(speech_keys) - set(uncommitted))
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(FileNotFoundError, match="no committed shards"):
        list_shards(str(marker).replace("_stats.json", ".tar"))  # a tar named directly, with its corrupt marker
    assert any("unreadable commit marker" in r.message for r in caplog.records)


def _fail(item):
    raise ValueError("unreadable input")


@pytest.mark.parametrize("role", ["speech", "sound"])
def test_committed_shards_without_samples_are_refused_at_start(shards, tmp_path, role):
    root, _ = shards
    empty = tmp_path / "empty"
    build_shards(
        [{"seed": i} for i in range(3)],
        _fail,
        empty,
        key=lambda it: f"k_{it['seed']}",
        shard_size=2,
        workers=0,
        progress=False,
    )
    assert len(list_shards(str(empty))) == 2
    with pytest.raises(LoaderError, match=f"no samples in the committed shards of {empty}.*data.{role}"):
        TrainLoader(_cfg(root, **{role: str(empty)}))


def test_fifos_named_as_shards_or_markers_are_ignored_without_blocking(shards, tmp_path, caplog):
    root, speech_keys = shards
    speech = _copy(root, tmp_path)
    os.mkfifo(speech / "000100.tar")  # reading either would block forever
    os.mkfifo(speech / "000101_stats.json")
    marker = sorted(speech.glob("*_stats.json"))[0]
    marker.unlink()
    os.mkfifo(marker)
    with caplog.at_level(logging.WARNING):
        loader = TrainLoader(_cfg(root, speech=str(speech), resampled=False))
    assert any("unreadable commit marker" in r.message and marker.name in r.message for r in caplog.records)
    seen = [k for b in loader for k in b.get("speech_key", [])]
    uncommitted = tar_keys(str(marker).replace("_stats.json", ".tar"))
    assert sorted(seen) == sorted(set(speech_keys) - set(uncommitted))
    with pytest.raises(FileNotFoundError, match="is not a regular file"):
        list_shards(str(speech / "000100.tar"))
    with pytest.raises(FileNotFoundError, match="no committed shards"):
        list_shards(f"{speech}/000100*.tar")  # a glob that matches only the fifo


def test_a_decompression_bomb_image_is_a_counted_skip(shards, tmp_path):
    import io

    from PIL import Image

    root, speech_keys = shards
    speech = _copy(root, tmp_path)
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")  # 100 MP in a few kB
    target = f"{speech_keys[3]}.jpg"
    _edit_every_sample(speech, lambda name, data: bomb.getvalue() if name == target else data)
    loader = TrainLoader(_cfg(root, speech=str(speech), resampled=False))
    seen = [k for b in loader for k in b.get("speech_key", [])]
    assert sorted(seen) == sorted(set(speech_keys) - {speech_keys[3]})
    [(reason, n)] = loader.skipped.items()
    assert n == 1 and reason.startswith("speech: undecodable (BadImage: image_too_large")
