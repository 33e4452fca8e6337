"""Shard directories in an object store (s3://) on a real S3-compatible server (SeaweedFS,
tests/support/s3.py): prep writes the same objects it writes on disk, never a local "s3:" folder,
survives kill -9 mid-upload, refuses a second run on the same shards; inspect, retry, the loader
(batches and exact resume, DataLoader workers each with their own client) and the retrieval sets
read them as they read a local directory."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline import shard_dir, storage
from pipeline.data.config import LoaderConfig
from pipeline.data.loader import TrainLoader
from pipeline.prep.cli import app
from pipeline.prep.inspect import find_shard_dirs
from pipeline.testsets.retrieval import read_retrieval_set
from tests.support import media, shardgen

REPO = Path(__file__).resolve().parents[2]
# fields of markers and dataset.json that record when and how fast, not what
TIMING = {"created", "updated", "wall_seconds", "stage_seconds", "retried"}


def _objects(url: str) -> dict[str, bytes]:
    loc = storage.location(url)
    return {
        name: storage.read_bytes(loc / name) for name in storage.list_tree(loc) if not name.startswith(".prep.lock")
    }


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and not p.name.startswith(".prep")}


def _same_content(local: dict[str, bytes], remote: dict[str, bytes]) -> None:
    """Tars and parquets byte for byte; markers and dataset.json up to their timing fields."""
    assert sorted(local) == sorted(remote)
    for name, data in local.items():
        if name.endswith(".json"):
            a, b = json.loads(data), json.loads(remote[name])
            assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}, (
                name
            )
        else:
            assert data == remote[name], name


def _places(tmp_path, n):
    entries = [
        {
            "wav": f"wavs/{i % 2}/u{i}.wav",
            "image": f"b/bakery/img_{i}.jpg",
            "audio": media.speech_like(1.0 + i % 3, 16_000, seed=i),
            "sr": 16_000,
            "image_size": (64, 48),
            "uttid": f"U{i}",
            "speaker": "S0",
            "asr_text": f"thing {i}",
        }
        for i in range(n)
    ]
    entries[1]["image_size"] = None  # a failed row, for `prep retry`
    return media.places_tree(tmp_path, entries), tmp_path / "places205"


def _places_args(meta, image_root, out, *extra):
    return [
        "shards",
        "places",
        "--metadata",
        str(meta),
        "--image-root",
        str(image_root),
        "--out",
        out,
        "--no-progress",
        "--shard-size",
        "2",
        *extra,
    ]


def test_prep_inspect_and_retry_with_an_s3_out(s3_env, tmp_path, monkeypatch):
    meta, image_root = _places(tmp_path, 5)
    runner = CliRunner()
    local = tmp_path / "local"
    assert runner.invoke(app, _places_args(meta, image_root, str(local))).exit_code == 0
    monkeypatch.chdir(tmp_path)  # where a Path("s3://...") would have put a folder named "s3:"
    result = runner.invoke(app, _places_args(meta, image_root, s3_env, "--workers", "2"))
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "s3:").exists()
    _same_content(_files(local), _objects(s3_env))  # the same tars, manifests, markers and dataset.json

    result = runner.invoke(app, ["inspect", s3_env, "--json", "--verify"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dir"] == s3_env and report["written"] == 4 and report["failed"] == 1
    assert report["health"]["shards_committed"] == 3 and report["verify"]["problems"] == 0
    parent = s3_env.rpartition("/")[0]
    assert storage.location(s3_env) in find_shard_dirs(parent)

    media.write_image(image_root / "b/bakery/img_1.jpg", (64, 48))  # the missing image arrives
    result = runner.invoke(app, ["retry", s3_env, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads(storage.read_bytes(storage.location(s3_env) / "dataset.json"))["written"] == 5
    assert not [k for k in storage.list_tree(storage.location(s3_env)) if k.startswith((".retry", ".prep.lock"))]
    keys = [s["__key__"] for s in shard_dir.iter_tar_samples(f"{s3_env}/000000.tar")]
    assert len(keys) == 2
    assert not (tmp_path / "s3:").exists()


def test_kill_during_an_upload_then_rerun_gives_the_same_objects(s3_server, s3_env, tmp_path):
    meta, image_root = _places(tmp_path, 12)
    reference = tmp_path / "reference"
    assert CliRunner().invoke(app, _places_args(meta, image_root, str(reference))).exit_code == 0
    out = storage.location(s3_env)
    cmd = [sys.executable, "-m", "pipeline.prep.cli", *_places_args(meta, image_root, s3_env, "--workers", "1")]
    env = {**os.environ, **s3_server.env()}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while (
            proc.poll() is None
            and time.monotonic() < deadline
            and not any(k.endswith(".tar") for k in storage.list_dir(out))
        ):
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # mid-build: its lease stays behind, a shard may be half uploaded
        proc.wait()
    listing = shard_dir.list_dir(out)
    assert len(listing.committed) < 6, "the kill should land while shards remain"
    for shard in listing.committed:  # what counts is whole
        assert storage.exists(shard_dir.parquet_path(out, shard.index))

    result = CliRunner().invoke(
        app, _places_args(meta, image_root, s3_env, "--workers", "2")
    )  # the dead run's lease is stale
    assert result.exit_code == 0, result.output
    _same_content(_files(reference), _objects(s3_env))


def test_a_second_run_on_the_same_shards_is_refused(s3_env):
    out = storage.location(s3_env)
    with shard_dir.build_lock(out, [0, 2, 4]):
        with shard_dir.build_lock(out, [1, 3]):  # another --part: no conflict
            pass
        for shards in ([4, 5], None):
            with pytest.raises(shard_dir.ShardDirError, match="being built by another prep run"):
                with shard_dir.build_lock(out, shards):
                    pass
        with shard_dir.write_lock(out, 7, wait=0):
            with pytest.raises(shard_dir.ShardDirError, match="another prep run"):
                with shard_dir.write_lock(out, 7, wait=0.3):  # If-None-Match: * on the lease object
                    pass
    assert not storage.list_tree(out)  # leases are released
    with shard_dir.build_lock(out, None):
        pass


def test_loader_and_retrieval_read_s3_as_they_read_disk(shards, s3_env):
    root, _ = shards
    shardgen.build(f"{s3_env}/speech", "speech", 46, 6)  # the same items as the session's local shards
    shardgen.build(f"{s3_env}/sound", "sound", 20, 5, seed0=1000)
    _same_content(_files(root / "speech"), _objects(f"{s3_env}/speech"))

    def cfg(speech, sound):
        return LoaderConfig(
            speech=speech,
            sound=sound,
            batch_size=4,
            num_workers=1,
            image_size=32,
            clip_seconds=3.0,
            shuffle_buffer=8,
            seed=0,
            epoch_samples=20,
        )

    local = list(TrainLoader(cfg(str(root / "speech"), str(root / "sound"))))
    loader = TrainLoader(cfg(f"{s3_env}/speech", f"{s3_env}/sound/00000*.tar"))  # a directory, and a glob of keys
    remote = list(loader)  # in a DataLoader worker: its own client, made after the fork
    assert len(remote) == len(local) == 5
    for a, b in zip(local, remote):
        assert a["speech_key"] == b["speech_key"] and a["sound_key"] == b["sound_key"]
        for name in ("mix_audio", "speech_image", "sound_image", "snr_db"):
            assert torch.equal(a[name], b[name]), name
    rest = list(loader.iterate(skip=3))  # exact resume from the saved cursors
    assert [b["speech_key"] for b in rest] == [b["speech_key"] for b in local[3:]]
    assert all(torch.equal(x["mix_audio"], y["mix_audio"]) for x, y in zip(rest, local[3:]))

    a, b = read_retrieval_set(root / "speech", n=10), read_retrieval_set(f"{s3_env}/speech", n=10)
    assert a.available == b.available == 46 and [x.key for x in a.items] == [x.key for x in b.items]
    assert all(x.audio_bytes == y.audio_bytes and x.image_bytes == y.image_bytes for x, y in zip(a.items, b.items))


def test_the_ray_engine_writes_straight_to_the_bucket(s3_env, tmp_path):
    pytest.importorskip("ray")
    from pipeline.prep.build import build_shards
    from pipeline.prep.ray_engine import RayOptions

    items = [{"type": "speech", "seed": i, "seconds": 1.0 + i % 2} for i in range(6)]
    build_shards(
        items, shardgen.load_item, tmp_path / "local", key=shardgen.item_key, shard_size=2, workers=0, progress=False
    )
    # Ray started here inherits the store's environment; each task writes in its own temporary
    # folder and uploads (no shared folder with the driver)
    build_shards(
        items,
        shardgen.load_item,
        f"{s3_env}/ray",
        key=shardgen.item_key,
        shard_size=2,
        progress=False,
        ray=RayOptions(num_cpus=2),
    )
    _same_content(_files(tmp_path / "local"), _objects(f"{s3_env}/ray"))
