"""pipeline.prep.build and retry: the generic builder (pool, manifests, commit markers, resume, parts, retry)."""

import functools
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipeline import format as fmt
from pipeline import shard_dir
from pipeline.prep import loaders
from pipeline.prep.build import build_shards, parse_part
from pipeline.prep.manifest import ROW_SCHEMA, read_rows
from pipeline.prep.media import Media, SkipItem, describe_key, describe_loader, resolve_under
from pipeline.prep.retry import retry_failed
from pipeline.prep.synthetic.samples import load_pair, sample_key
from pipeline.prep.synthetic.world import world_config
from pipeline.prep.worker import FAILED, STAGES
from tests.support import media


def load_synthetic(item: dict) -> Media:
    """Loader for these tests: item fields choose the audio and the way it goes wrong."""
    what = item.get("bad")
    if what == "skip":
        raise SkipItem("bad_input: the test said so")
    if what == "raise":
        raise ValueError("loader bug")
    if what == "crash":
        os._exit(7)  # a worker dying outright (segfault, OOM kill)
    if what == "flaky" and not Path(item["marker"]).exists():
        raise SkipItem("rate_limited: come back later")
    sr, seconds = item.get("sr", 22_050), item.get("seconds", 3.0)
    signal = media.tone(200 + 50 * item["i"], seconds, sr)
    if what == "nan":
        signal[10] = np.nan
    picture = Image.new("RGB", (320, 240), media.colour_for_second(item["i"]))
    return Media(
        np.stack([signal, signal]),
        sr,
        picture,
        {
            "source": "test",
            "source_id": str(item["i"]),
            "audio_type": "sound",
            "labels": [{"mid": "/m/x", "name": "X"}],
        },
    )


def key_of(item: dict) -> str:
    return item.get("key", f"t_{item['i']:04d}")


def items(n: int, **extra) -> list[dict]:
    return [{"i": i, **extra} for i in range(n)]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(out: Path) -> list[dict]:
    return [r for p in sorted(out.glob("*.parquet")) for r in read_rows(p)]


def test_build_writes_shards_manifests_markers_and_summary(tmp_path):
    out = tmp_path / "ds"
    summary = build_shards(items(11), load_synthetic, out, key=key_of, shard_size=4, workers=2, progress=False)
    assert summary.written == 11 and summary.failed == 0 and summary.shards_built == 3
    assert sorted(p.name for p in out.iterdir()) == [
        shard_dir.LOCK_FILE,  # the build lock, kept: removing it would race another run taking it
        "000000.parquet",
        "000000.tar",
        "000000_stats.json",
        "000001.parquet",
        "000001.tar",
        "000001_stats.json",
        "000002.parquet",
        "000002.tar",
        "000002_stats.json",
        "dataset.json",
    ]
    # shard i holds items [4i, 4i+4), in order; a webdataset reader sees every sample whole
    samples = list(wds.WebDataset([str(p) for p in sorted(out.glob("*.tar"))], shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"t_{i:04d}" for i in range(11)]
    for s in samples:
        assert fmt.verify_sample(s) == []
    meta = fmt.decode_meta(samples[3]["json"])
    assert meta["duration"] == pytest.approx(3.0) and meta["orig_sample_rate"] == 22_050 and meta["orig_channels"] == 2
    assert meta["clip_start"] == 0.0 and meta["clip_end"] == pytest.approx(3.0)
    clip = fmt.decode_audio(samples[3]["flac"])
    assert media.dominant_frequency(clip[: 3 * fmt.SAMPLE_RATE], fmt.SAMPLE_RATE) == pytest.approx(350, abs=2)
    assert np.abs(clip[3 * fmt.SAMPLE_RATE + 50 :]).max() == 0
    stats = json.loads((out / "000002_stats.json").read_text())
    assert (stats["first_index"], stats["end_index"], stats["written"]) == (8, 11, 3)
    assert stats["tar_sha256"] == sha(out / "000002.tar") and stats["tar_bytes"] == (out / "000002.tar").stat().st_size
    assert set(stats["stage_seconds"]) == set(STAGES)
    dataset = json.loads((out / "dataset.json").read_text())
    assert (dataset["items_total"], dataset["written"], dataset["shards_committed"]) == (11, 11, 3)
    assert dataset["audio_hours"] == pytest.approx(11 * 3 / 3600, abs=1e-4)
    # a test's own loader is not in the fixed registry: nothing re-creatable is recorded
    assert "loader" not in dataset and "key" not in dataset


def test_every_input_item_becomes_exactly_one_row_whatever_goes_wrong(tmp_path):
    bad = {1: "skip", 2: "raise", 3: "crash", 4: "nan", 6: "crash"}
    inputs = [{"i": i, "bad": bad.get(i)} for i in range(10)]
    inputs[5]["seconds"] = 0.3
    inputs[8]["key"] = "t_0007"  # duplicate key
    inputs[9]["key"] = "t.0009"  # webdataset would split this name at the dot
    out = tmp_path / "ds"
    summary = build_shards(inputs, load_synthetic, out, key=key_of, shard_size=4, workers=2, progress=False)
    got = {r["index"]: r for r in rows(out)}
    assert sorted(got) == list(range(10))
    kinds = {i: r["reason_kind"] for i, r in got.items() if r["status"] == FAILED}
    assert kinds == {
        1: "bad_input",
        2: "error",
        3: "worker_crashed",
        4: "audio_nan",
        5: "audio_too_short",
        6: "worker_crashed",
        8: "duplicate_key",
        9: "bad_key",
    }
    assert "loader bug" in got[2]["reason"] and json.loads(got[1]["item"]) == inputs[1]
    assert summary.written == 2 and summary.failed == 8
    keys = [s["__key__"] for p in sorted(out.glob("*.tar")) for s in shard_dir.iter_tar_samples(p)]
    assert keys == ["t_0000", "t_0007"]
    assert json.loads((out / "dataset.json").read_text())["failures"]["worker_crashed"] == 2


def test_inline_and_pool_give_byte_identical_shards(tmp_path):
    a = build_shards(items(6), load_synthetic, tmp_path / "a", key=key_of, shard_size=3, workers=0, progress=False)
    b = build_shards(items(6), load_synthetic, tmp_path / "b", key=key_of, shard_size=3, workers=2, progress=False)
    assert a.written == b.written == 6
    for name in ("000000.tar", "000001.tar"):
        assert sha(tmp_path / "a" / name) == sha(tmp_path / "b" / name)


def test_parts_then_resume_equal_a_single_run_and_partial_shards_are_rebuilt(tmp_path):
    single = tmp_path / "single"
    build_shards(items(10), load_synthetic, single, key=key_of, shard_size=3, workers=1, progress=False)
    split = tmp_path / "split"
    first = build_shards(
        items(10), load_synthetic, split, key=key_of, shard_size=3, workers=1, part=(1, 2), progress=False
    )
    assert first.shards_built == 2 and sorted(p.name for p in split.glob("*.tar")) == ["000001.tar", "000003.tar"]
    # leftovers of a killed build of shard 2: a partial tar and an orphan parquet
    (split / "000002.tar.partial").write_bytes(b"half a tar")
    (split / "000002.parquet").write_bytes(b"stale")
    before = (split / "000001_stats.json").stat().st_mtime_ns
    second = build_shards(items(10), load_synthetic, split, key=key_of, shard_size=3, workers=2, progress=False)
    assert (second.shards_skipped, second.shards_built) == (2, 2)
    assert (split / "000001_stats.json").stat().st_mtime_ns == before  # committed shards untouched
    assert not list(split.glob("*.partial"))
    for shard in range(4):
        name = f"{shard:06d}.tar"
        assert sha(split / name) == sha(single / name)
    assert json.loads((split / "dataset.json").read_text())["written"] == 10


def test_a_rerun_removes_the_temporary_files_of_dead_writers_only(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    dead, dead_elsewhere = (subprocess.Popen(["true"]) for _ in range(2))
    dead.wait(), dead_elsewhere.wait()
    old = time.time() - 3600
    stale = shard_dir.temp_path(out / "dataset.json", dead.pid)  # its writer was killed mid-write
    fresh = shard_dir.temp_path(out / "dataset.json", dead_elsewhere.pid)  # written since this run began (another host)
    live = shard_dir.temp_path(out / "dataset.json", os.getppid())  # a writer still running here
    other_part = shard_dir.temp_path(shard_dir.stats_path(out, 1), dead.pid)  # part 1's shard: not this run's
    for path in (stale, fresh, live, other_part):
        path.write_text("{")
    for path in (stale, live, other_part):
        os.utime(path, (old, old))
    future = time.time() + 3600
    os.utime(fresh, (future, future))
    build_shards(items(4), load_synthetic, out, key=key_of, shard_size=2, workers=0, part=(0, 2), progress=False)
    assert sorted(p.name for p in out.glob("*.partial")) == sorted(p.name for p in (fresh, live, other_part))
    assert json.loads((out / "dataset.json").read_text())["written"] == 2


def test_resume_refuses_shards_built_from_other_input(tmp_path):
    out = tmp_path / "ds"
    build_shards(items(4), load_synthetic, out, key=key_of, shard_size=4, workers=0, progress=False)
    other = [{"i": i + 100} for i in range(4)]
    with pytest.raises(ValueError, match="different input items"):
        build_shards(other, load_synthetic, out, key=key_of, shard_size=4, workers=0, progress=False)


def test_retry_reruns_only_failed_rows_and_keeps_the_rest(tmp_path):
    marker = tmp_path / "now-it-works"
    inputs = [{"i": i} for i in range(7)]
    for i in (1, 5):
        inputs[i].update(bad="flaky", marker=str(marker))
    inputs[3]["bad"] = "skip"
    out = tmp_path / "ds"
    build_shards(inputs, load_synthetic, out, key=key_of, shard_size=4, workers=2, progress=False)
    kept = {s["__key__"]: s for p in sorted(out.glob("*.tar")) for s in shard_dir.iter_tar_samples(p)}
    assert len(kept) == 4
    marker.touch()
    summary = retry_failed(out, kinds=["rate_limited"], workers=2, progress=False, load=load_synthetic)
    assert summary.shards_built == 2 and summary.written == 6 and summary.failed == 1
    got = {r["index"]: r for r in rows(out)}
    assert [got[i]["status"] for i in range(7)] == ["written"] * 3 + ["failed"] + ["written"] * 3
    assert got[3]["reason_kind"] == "bad_input"  # not a rate_limited failure: left alone
    samples = [s for p in sorted(out.glob("*.tar")) for s in shard_dir.iter_tar_samples(p)]
    assert [s["__key__"] for s in samples] == [f"t_{i:04d}" for i in (0, 1, 2, 4, 5, 6)]
    for s in samples:
        if s["__key__"] in kept:
            assert s == kept[s["__key__"]]  # copied, not rebuilt
        assert fmt.verify_sample(s) == []
    for shard in (0, 1):
        stats = json.loads((out / f"{shard:06d}_stats.json").read_text())
        assert stats["tar_sha256"] == sha(out / f"{shard:06d}.tar")
    assert json.loads((out / "dataset.json").read_text())["written"] == 6
    assert not (out / ".retry").exists()
    # nothing left to retry: no shard is rewritten
    assert retry_failed(out, kinds=["rate_limited"], workers=0, progress=False, load=load_synthetic).shards_built == 0


def test_unpicklable_loader_is_refused_up_front(tmp_path):
    with pytest.raises(TypeError, match="cannot be sent to worker processes"):
        build_shards(items(2), lambda item: None, tmp_path, key=key_of, workers=2, progress=False)


def test_resolve_under_rejects_paths_leaving_the_root(tmp_path):
    assert resolve_under(tmp_path, "a/b.wav", "wav") == tmp_path / "a" / "b.wav"
    for bad in ("../x.wav", "a/../../x.wav", "/etc/passwd", "", None):
        with pytest.raises(SkipItem):
            resolve_under(tmp_path, bad, "wav")


def test_parse_part():
    assert parse_part("2/5") == (2, 5)
    for bad in ("5/5", "x", "1/0", "-1/3"):
        with pytest.raises(ValueError):
            parse_part(bad)


def test_parquet_schema_is_stable(tmp_path):
    build_shards(items(2), load_synthetic, tmp_path, key=key_of, shard_size=4, workers=0, progress=False)
    assert pq.read_schema(tmp_path / "000000.parquet").names == ROW_SCHEMA.names


def test_registered_loaders_round_trip_by_name_and_others_record_nothing():
    cfg = world_config("ci").to_dict()
    spec = describe_loader(functools.partial(load_pair, cfg))
    assert spec == {"name": "synthetic", "args": [cfg], "kwargs": {}}
    again = loaders.resolve_loader(json.loads(json.dumps(spec)), Path("dataset.json"))
    assert again.func is load_pair and again.args == (cfg,)
    assert describe_key(sample_key) == "synthetic"
    assert describe_loader(load_synthetic) is None and describe_key(key_of) is None
    assert describe_loader(functools.partial(load_pair, object())) is None  # arguments must be JSON
