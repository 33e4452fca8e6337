"""`prep shards places` end to end on a generated PlacesAudio tree, bad input included."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline import format as fmt
from pipeline import shard_dir
from pipeline.prep import places
from pipeline.prep.cli import app
from pipeline.prep.manifest import read_rows
from pipeline.prep.worker import FAILED, WRITTEN
from tests.support import media

REPO = Path(__file__).resolve().parents[3]


def good(i: int, sr: int = 16_000, seconds: float = 4.0, **fields) -> dict:
    return {
        "wav": f"wavs/{i % 3}/utterance_{i}.wav",
        "image": f"b/bakery/img_{i}.jpg",
        "audio": media.speech_like(seconds, sr, seed=i),
        "sr": sr,
        "image_size": (256, 256),
        "uttid": f"U{i}",
        "speaker": f"S{i % 4}",
        "asr_text": f"a picture of thing number {i}",
        **fields,
    }


@pytest.fixture
def tree(tmp_path):
    stereo = media.stepped_tone(12.0, 44_100)
    entries = [
        good(0),
        {
            **good(1, sr=44_100),
            "audio": np.stack([stereo, stereo]),
            "subtype": "FLOAT",
            "image": "a/attic/x.png",
            "image_size": (640, 480),
            "image_mode": "RGBA",
        },
        {**good(2, sr=8_000, seconds=2.0), "wav": "wavs/2/utterance_2.flac", "image_mode": "L"},
        {**good(3, sr=48_000, seconds=6.0), "image_mode": "CMYK"},
        {**good(4), "audio": None},  # missing wav
        {**good(5), "image_size": None},  # missing image
        good(6),  # wav replaced by garbage below
        {**good(7), "audio": np.zeros(0, np.float32)},
        {**good(8), "audio": np.full(16_000, np.nan, np.float32), "subtype": "FLOAT"},
        {**good(9, seconds=0.3)},
        {**good(10), "image": "b/bakery/bomb.png", "image_size": None},
        good(11),  # image truncated below
        {**good(12), "wav": "../../../etc/passwd"},
        {**good(13), "image": "/etc/hostname"},
        {"raw": "not an object"},
        {"raw": {"wav": "wavs/0/orphan.wav"}},
        good(16, sr=22_050, seconds=9.0),
    ]
    meta = media.places_tree(tmp_path, entries)
    audio_root, image_root = meta.parent.parent, tmp_path / "places205"
    media.write_garbage(audio_root / "wavs/0/utterance_6.wav")
    media.write_huge_png_header(image_root / "b/bakery/bomb.png")
    big = media.write_image(tmp_path / "big.jpg", (800, 600))
    media.write_truncated(big, image_root / "b/bakery/img_11.jpg", keep=0.3)
    return meta, image_root


def run_places(meta, image_root, out, *extra):
    args = [
        "shards",
        "places",
        "--metadata",
        str(meta),
        "--image-root",
        str(image_root),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def all_rows(out):
    return {r["index"]: r for p in sorted(Path(out).glob("*.parquet")) for r in read_rows(p)}


def all_samples(out):
    return {s["__key__"]: s for p in sorted(Path(out).glob("*.tar")) for s in shard_dir.iter_tar_samples(p)}


def test_places_shards_real_outputs_and_counted_failures(tree, tmp_path):
    meta, image_root = tree
    out = tmp_path / "shards"
    run_places(meta, image_root, out, "--workers", "2", "--shard-size", "5")
    rows = all_rows(out)
    assert sorted(rows) == list(range(17))  # every entry is one row, malformed ones included
    kinds = {i: r["reason_kind"] for i, r in rows.items() if r["status"] == FAILED}
    assert kinds == {
        4: "missing_audio",
        5: "missing_image",
        6: "audio_decode",
        7: "audio_empty",
        8: "audio_nan",
        9: "audio_too_short",
        10: "image_too_large",
        11: "image_decode",
        12: "path_escapes_root",
        13: "path_escapes_root",
        14: "bad_row",
        15: "bad_row",
    }
    assert "utterance_6.wav" in rows[6]["reason"] and "bomb.png" in rows[10]["reason"]
    samples = all_samples(out)
    assert sorted(samples) == sorted(rows[i]["key"] for i in (0, 1, 2, 3, 16))
    for s in samples.values():
        assert fmt.verify_sample(s) == []
    by_id = {fmt.decode_meta(s["json"])["source_id"]: s for s in samples.values()}

    first = fmt.decode_meta(by_id["wavs/0/utterance_0.wav"]["json"])
    assert first["audio_type"] == "speech" and first["source"] == "places"
    assert (first["uttid"], first["speaker"], first["caption"]) == ("U0", "S0", "a picture of thing number 0")
    assert first["image_source"] == "b/bakery/img_0.jpg" and first["duration"] == pytest.approx(4.0)
    assert rows[0]["key"] == "places_wavs_0_utterance_0"

    stereo = by_id["wavs/1/utterance_1.wav"]
    m = fmt.decode_meta(stereo["json"])
    assert (m["orig_sample_rate"], m["orig_channels"], m["duration"], m["orig_duration"]) == (44_100, 2, 10.0, 12.0)
    clip = fmt.decode_audio(stereo["flac"])
    assert clip.shape == (fmt.CLIP_SAMPLES,)
    # the first 10 s of the source, resampled: second k still has pitch step_frequency(k)
    for k in (0, 4, 9):
        window = clip[int((k + 0.2) * 16_000) : int((k + 0.8) * 16_000)]
        assert media.dominant_frequency(window, 16_000) == pytest.approx(media.step_frequency(k), abs=3)
    assert fmt.decode_image(stereo["jpg"]).size == (299, 224)

    short = fmt.decode_meta(by_id["wavs/2/utterance_2.flac"]["json"])
    assert short["orig_sample_rate"] == 8_000 and short["duration"] == pytest.approx(2.0)
    assert fmt.decode_image(by_id["wavs/2/utterance_2.flac"]["jpg"]).size == (224, 224)

    dataset = json.loads((out / "dataset.json").read_text())
    assert (dataset["written"], dataset["failed"], dataset["shards_committed"]) == (5, 12, 4)
    assert dataset["failures"]["path_escapes_root"] == 2
    assert dataset["loader"]["kwargs"]["image_root"] == str(image_root.resolve())


def test_bad_metadata_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "train.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(
        app, ["shards", "places", "--metadata", str(bad), "--image-root", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code != 0 and "is not valid JSON" in result.output
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(places.MetadataError, match="no top-level 'data' list"):
        places.read_metadata(bad)


def test_missing_image_root_is_explained(tree, tmp_path):
    meta, _ = tree
    result = CliRunner().invoke(app, ["shards", "places", "--metadata", str(meta), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "--image-root" in result.output


def _shas(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(out).glob("*.tar"))}


def test_resume_after_a_killed_run_gives_the_same_samples_without_duplicates(tmp_path):
    entries = [good(i, seconds=3.0 + i % 5) for i in range(30)]
    meta = media.places_tree(tmp_path, entries)
    image_root = tmp_path / "places205"
    reference = tmp_path / "reference"
    run_places(meta, image_root, reference, "--shard-size", "3", "--workers", "2")

    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.prep.cli",
        "shards",
        "places",
        "--metadata",
        str(meta),
        "--image-root",
        str(image_root),
        "--out",
        str(out),
        "--shard-size",
        "3",
        "--workers",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*_stats.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its pool worker, mid-shard
        proc.wait()
    committed = len(list(out.glob("*_stats.json")))
    assert 1 <= committed < 10, "the kill should land while shards remain"

    run_places(meta, image_root, out, "--shard-size", "3", "--workers", "2")
    assert not list(out.glob("*.partial"))
    assert _shas(out) == _shas(reference)
    keys = [s["__key__"] for p in sorted(out.glob("*.tar")) for s in shard_dir.iter_tar_samples(p)]
    assert len(keys) == len(set(keys)) == 30
    rows = all_rows(out)
    assert sorted(rows) == list(range(30)) and all(r["status"] == WRITTEN for r in rows.values())
    assert json.loads((out / "dataset.json").read_text())["written"] == 30


def test_prep_retry_picks_up_files_that_arrived_later(tree, tmp_path):
    meta, image_root = tree
    out = tmp_path / "shards"
    run_places(meta, image_root, out, "--workers", "0", "--shard-size", "6")
    before = all_rows(out)
    assert before[5]["reason_kind"] == "missing_image" and before[4]["reason_kind"] == "missing_audio"
    media.write_image(image_root / "b/bakery/img_5.jpg", (256, 256))
    result = CliRunner().invoke(
        app, ["retry", str(out), "--reason", "missing_image", "--workers", "2", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    after = all_rows(out)
    assert after[5]["status"] == WRITTEN and after[4]["reason_kind"] == "missing_audio"
    assert {i: r for i, r in after.items() if i != 5} == {i: r for i, r in before.items() if i != 5}
    keys = [s["__key__"] for p in sorted(out.glob("*.tar")) for s in shard_dir.iter_tar_samples(p)]
    assert keys == [after[i]["key"] for i in sorted(after) if after[i]["status"] == WRITTEN]
    assert json.loads((out / "dataset.json").read_text())["written"] == 6
