"""`prep inspect`: figures from the manifests, shard health, --verify, --show, --json."""

import json
import tarfile

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.prep import inspect as inspect_shards
from pipeline.prep.build import build_shards
from pipeline.prep.cli import app
from pipeline.prep.media import Media, SkipItem
from tests.support import media

COLOURS = [(230, 25, 25), (25, 200, 40), (30, 60, 230)]


def load(item: dict) -> Media:
    if item.get("missing"):
        raise SkipItem(f"missing_audio: {item['i']}.wav does not exist")
    sr = item["sr"]
    meta = {"source": "test", "source_id": str(item["i"]), "audio_type": item["type"]}
    if item["type"] == "sound":
        meta["labels"] = [{"mid": m, "name": n} for m, n in item["labels"]]
    else:
        meta["caption"] = f"caption {item['i']}"
    signal = (
        media.speech_like(item["seconds"], sr, seed=item["i"])
        if item["type"] == "speech"
        else media.noise(item["seconds"], sr)
    )
    return Media(signal, sr, Image.new("RGB", (300, 200), COLOURS[item["i"] % 3]), meta)


def key(item: dict) -> str:
    return f"k{item['i']:03d}"


ITEMS = [
    {"i": 0, "type": "speech", "sr": 16_000, "seconds": 4.0},
    {"i": 1, "type": "sound", "sr": 44_100, "seconds": 10.0, "labels": [("/m/a", "Dog"), ("/m/b", "Bark")]},
    {"i": 2, "type": "sound", "sr": 44_100, "seconds": 12.0, "labels": [("/m/a", "Dog")]},
    {"i": 3, "type": "speech", "sr": 16_000, "seconds": 2.5, "missing": True},
    {"i": 4, "type": "speech", "sr": 8_000, "seconds": 6.5},
    {"i": 5, "type": "sound", "sr": 48_000, "seconds": 0.2, "labels": [("/m/c", "Rain")]},
]


@pytest.fixture
def dataset(tmp_path):
    out = tmp_path / "ds"
    build_shards(ITEMS, load, out, key=key, shard_size=4, workers=0, progress=False)
    return out


def test_collect_figures(dataset):
    report = inspect_shards.collect(dataset)
    assert (report["items_total"], report["items_in_committed_shards"], report["written"], report["failed"]) == (
        6,
        6,
        4,
        2,
    )
    assert report["audio_hours"] == pytest.approx((4 + 10 + 10 + 6.5) / 3600, abs=1e-4)
    assert report["audio_types"]["speech"]["clips"] == 2 and report["audio_types"]["sound"]["clips"] == 2
    assert report["labels_top"] == {"Dog": 2, "Bark": 1}
    assert report["duration_s"]["histogram"]["full 10s"] == 2
    assert report["duration_s"]["histogram"]["4-5s"] == 1 and report["duration_s"]["histogram"]["6-7s"] == 1
    assert report["orig_sample_rates"] == {"44100": 2, "16000": 1, "8000": 1}
    assert report["failures"] == {"audio_too_short": 1, "missing_audio": 1}
    assert report["failure_examples"]["missing_audio"] == ["k003: missing_audio: 3.wav does not exist"]
    health = report["health"]
    assert (health["shards_total"], health["shards_committed"], health["shards_missing"]) == (2, 2, [])
    assert not (health["partial_files"] or health["uncommitted_tars"] or health["size_mismatch"])


def test_health_reports_interrupted_builds(dataset):
    (dataset / "000001_stats.json").unlink()  # as if killed before the commit marker
    (dataset / "000002.tar.partial").write_bytes(b"x")
    health = inspect_shards.collect(dataset)["health"]
    assert health["uncommitted_tars"] == ["000001.tar"] and health["partial_files"] == ["000002.tar.partial"]
    assert health["shards_missing"] == [1]


def test_verify_passes_clean_shards_and_finds_corruption(dataset):
    clean = inspect_shards.verify(dataset, progress=False)
    assert clean == {"samples_checked": 4, "problems": 0, "problem_list": []}
    # overwrite the middle of the first sample's FLAC in place: same size, broken content
    tar_path = dataset / "000000.tar"
    with tarfile.open(tar_path) as tar:
        member = tar.getmember("k000.flac")
    data = bytearray(tar_path.read_bytes())
    start = member.offset_data + 100
    data[start : start + 2000] = bytes(2000)
    tar_path.write_bytes(bytes(data))
    broken = inspect_shards.verify(dataset, progress=False)
    assert broken["problems"] >= 2
    assert any("sha256 differs" in p for p in broken["problem_list"])
    assert any("k000" in p and "audio" in p for p in broken["problem_list"])
    result = CliRunner().invoke(app, ["inspect", str(dataset), "--verify"])
    assert result.exit_code == 1


def test_contact_sheet_draws_images_and_spectrograms(dataset, tmp_path):
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(app, ["inspect", str(dataset), "--show", "3", "--out", str(sheet)])
    assert result.exit_code == 0, result.output
    picture = np.asarray(Image.open(sheet).convert("RGB"))
    tile_w, tile_h = (
        inspect_shards._TILE_W + 8,
        inspect_shards._IMAGE_H + inspect_shards._SPEC_H + inspect_shards._TEXT_H + 8,
    )
    assert picture.shape == (tile_h + 8, 3 * tile_w + 8, 3)
    # the tiles show samples k000, k001, k002 (evenly picked from 4): their image colours
    for column, colour in enumerate(COLOURS):
        centre = picture[8 + inspect_shards._IMAGE_H // 2, 8 + column * tile_w + inspect_shards._TILE_W // 2]
        assert np.abs(centre.astype(int) - colour).max() < 20
    # spectrogram strip: speech/noise energy makes it far from uniform
    strip = picture[
        8 + inspect_shards._IMAGE_H : 8 + inspect_shards._IMAGE_H + inspect_shards._SPEC_H,
        8 : 8 + inspect_shards._TILE_W,
    ]
    assert strip.std() > 10


def test_json_output_and_folders_of_datasets(dataset, tmp_path):
    second = tmp_path / "other"
    build_shards(ITEMS[:2], load, second, key=key, shard_size=4, workers=0, progress=False)
    result = CliRunner().invoke(app, ["inspect", str(dataset), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads(json.dumps(inspect_shards.collect(dataset)))
    both = json.loads(CliRunner().invoke(app, ["inspect", str(tmp_path), "--json"]).stdout)
    assert [r["written"] for r in both] == [4, 2]


def test_text_report_and_empty_dir(dataset, tmp_path):
    result = CliRunner().invoke(app, ["inspect", str(dataset)], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "written / failed" in result.output and "missing_audio" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["inspect", str(empty)])
    assert result.exit_code == 2 and "no shards under" in result.output


def test_verify_in_parallel_finds_keys_repeated_across_shards(dataset):
    # a copy of shard 0 committed as shard 7: every one of its keys now appears twice
    for suffix in (".tar", ".parquet", "_stats.json"):
        (dataset / f"000007{suffix}").write_bytes((dataset / f"000000{suffix}").read_bytes())
    report = inspect_shards.verify(dataset, workers=2, progress=False)
    assert report["samples_checked"] == 4 + 3
    repeats = [p for p in report["problem_list"] if "repeats" in p]
    assert len(repeats) == 3 and all(p.startswith("000007.tar: key k00") for p in repeats)


def test_text_report_shows_data_with_brackets_as_written(tmp_path):
    # labels and failure reasons are data: rich markup in them ("[b]", "[a-z]") must not vanish
    items = [
        {"i": 0, "type": "sound", "sr": 16_000, "seconds": 1.0, "labels": [("/m/x", "Engine [b]idle[/b]")]},
        {"i": 1, "type": "speech", "sr": 16_000, "seconds": 1.0, "missing": True},
    ]
    build_shards(items, load, tmp_path / "ds", key=key, shard_size=4, workers=0, progress=False)
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "ds")], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "Engine [b]idle[/b] 1" in result.output
