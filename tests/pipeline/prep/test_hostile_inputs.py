"""The hostile-input corpus of the corpus readers and `prep inspect`: each case is a generated
input that once crashed, lost data or misnamed samples, run through the real CLI. Outcomes must be
a clear one-line error naming the file, or a counted failure row with the good rows kept.
"""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline import format as fmt
from pipeline import shard_dir
from pipeline.prep import audioset
from pipeline.prep.cli import app
from tests.support import media

LABELS = {"/m/09x0r": "Speech", "/m/04rlf": "Music"}


def entry(i: int, wav: str | None = None) -> dict:
    return {
        "wav": wav or f"wavs/{i % 3}/utterance_{i}.wav",
        "image": f"b/bakery/img_{i}.jpg",
        "audio": media.speech_like(2.0, 16_000, seed=i),
        "image_size": (256, 256),
        "uttid": f"U{i}",
    }


def invoke(*args: str):
    return CliRunner().invoke(app, [*args])


def build_places(meta: Path, out: Path, *extra: str):
    result = invoke(
        "shards",
        "places",
        "--metadata",
        str(meta),
        "--image-root",
        str(meta.parents[2] / "places205"),
        "--out",
        str(out),
        "--workers",
        "0",
        "--no-progress",
        *extra,
    )
    assert result.exit_code == 0, result.output
    return result


def rows(out: Path) -> dict[int, dict]:
    return {r["index"]: r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()}


def samples(out: Path) -> dict[str, dict]:
    return {s["__key__"]: s for p in sorted(out.glob("*.tar")) for s in shard_dir.iter_tar_samples(p)}


def test_places_non_utf8_file_name_is_one_failed_row(tmp_path):
    # JSON spells a file name that is not UTF-8 as a lone surrogate; the file itself exists
    bad_name = "wavs/1/utt\udcff.wav"
    meta = media.places_tree(tmp_path, [entry(0), {"raw": {**entry(1), "wav": bad_name, "audio": None}}, entry(2)])
    audio_root = meta.parents[1]
    media.write_image(tmp_path / "places205" / "b/bakery/img_1.jpg", (256, 256))
    good_wav = (audio_root / "wavs/0/utterance_0.wav").read_bytes()
    (audio_root / "wavs/1").mkdir(parents=True, exist_ok=True)
    with open(os.fsencode(audio_root) + b"/wavs/1/utt\xff.wav", "wb") as f:
        f.write(good_wav)
    out = tmp_path / "out"
    build_places(meta, out)
    got = rows(out)
    assert sorted(got) == [0, 1, 2]
    assert [got[i]["status"] for i in range(3)] == ["written", "failed", "written"]
    assert (
        got[1]["reason_kind"] == "bad_row" and "not valid UTF-8" in got[1]["reason"] and "\\udcff" in got[1]["reason"]
    )
    assert len(samples(out)) == 2
    dataset = json.loads((out / "dataset.json").read_text())
    assert (dataset["written"], dataset["failed"]) == (2, 1)


def test_places_keys_stay_distinct_when_sanitized_paths_collide(tmp_path):
    wavs = ["wavs/coll_a_b.wav", "wavs/coll_a/b.wav", "wavs/0/utterance_0.wav", "wavs/coll_a_b.wav"]
    meta = media.places_tree(tmp_path, [entry(i, wav) for i, wav in enumerate(wavs)])
    out = tmp_path / "out"
    build_places(meta, out)
    got = rows(out)
    assert [got[i]["status"] for i in range(4)] == ["written", "written", "written", "failed"]
    assert got[3]["reason_kind"] == "duplicate_key"  # the same file twice is still one sample
    first, second = got[0]["key"], got[1]["key"]
    assert first != second and first.startswith("places_wavs_coll_a_b-") and second.startswith("places_wavs_coll_a_b-")
    assert got[2]["key"] == "places_wavs_0_utterance_0"  # names nothing collides with keep their keys
    by_key = samples(out)
    assert sorted(by_key) == sorted([first, second, got[2]["key"]])
    assert fmt.decode_meta(by_key[second]["json"])["source_id"] == "wavs/coll_a/b.wav"


@pytest.mark.parametrize("which", ["labels", "segments"])
def test_audioset_csv_that_is_not_utf8_is_a_one_line_error(tmp_path, which):
    seg, lab = media.audioset_csvs(tmp_path, [("abcdefghijk", 0, 10, ["/m/09x0r"])], LABELS)
    bad = lab if which == "labels" else seg
    bad.write_bytes(bad.read_bytes().replace(b"Speech", b"Caf\xe9").replace(b"# YTID", b"# Caf\xe9"))
    result = invoke(
        "shards",
        "audioset",
        "--segments",
        str(seg),
        "--labels",
        str(lab),
        "--out",
        str(tmp_path / "out"),
        "--media-dir",
        str(tmp_path),
        "--no-progress",
    )
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad} is not UTF-8 text") and "re-save" in lines[0]
    assert "Traceback" not in result.output


def test_audioset_bom_before_the_header_and_before_a_data_row(tmp_path):
    seg, lab = media.audioset_csvs(
        tmp_path, [("abcdefghijk", 0, 10, ["/m/09x0r"]), ("bcdefghijkl", 5, 15, ["/m/04rlf"])], LABELS
    )
    lines = seg.read_text().splitlines()
    lines[0], lines[4] = "\ufeff" + lines[0], "\ufeff" + lines[4]  # a spreadsheet's BOM; a second file pasted on
    seg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    lab.write_text("\ufeff" + lab.read_text(), encoding="utf-8")
    items = audioset.read_segments(seg, audioset.read_labels(lab))
    assert [(i["ytid"], i["labels"][0]["name"]) for i in items] == [("abcdefghijk", "Speech"), ("bcdefghijkl", "Music")]
    media_dir = tmp_path / "media"
    media.write_audio(media_dir / "abcdefghijk.wav", media.tone(440, 10, 16_000), 16_000)
    media.write_image(media_dir / "abcdefghijk.jpg")
    out = tmp_path / "out"
    result = invoke(
        "shards",
        "audioset",
        "--segments",
        str(seg),
        "--labels",
        str(lab),
        "--out",
        str(out),
        "--media-dir",
        str(media_dir),
        "--workers",
        "0",
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    dataset = json.loads((out / "dataset.json").read_text())
    assert (dataset["written"], dataset["failures"]) == (1, {"missing_media": 1})


def test_audioset_unknown_mids_are_counted_and_warned_once(tmp_path):
    segments = [
        ("abcdefghijk", 0, 10, ["/m/09x0r", "/m/gone1"]),
        ("bcdefghijkl", 0, 10, ["/m/gone1"]),
        ("cdefghijklm", 0, 10, ["/m/gone2"]),
    ]
    seg, lab = media.audioset_csvs(tmp_path, segments, LABELS)
    (tmp_path / "media").mkdir()
    out = tmp_path / "out"
    result = invoke(
        "shards",
        "audioset",
        "--segments",
        str(seg),
        "--labels",
        str(lab),
        "--out",
        str(out),
        "--media-dir",
        str(tmp_path / "media"),
        "--workers",
        "0",
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "2 MID(s)" in warnings[0] and "/m/gone1" in warnings[0] and str(lab) in warnings[0]
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["input_warnings"]["unknown_mids"] == {"/m/gone1": 2, "/m/gone2": 1}
    assert invoke("retry", str(out), "--workers", "0", "--no-progress").exit_code == 0
    assert json.loads((out / "dataset.json").read_text())["input_warnings"] == dataset["input_warnings"]


def test_corrupt_commit_marker_is_an_uncommitted_shard_that_a_rerun_rebuilds(tmp_path):
    meta = media.places_tree(tmp_path, [entry(i) for i in range(4)])
    out = tmp_path / "out"
    build_places(meta, out, "--shard-size", "2")
    tar_before = (out / "000000.tar").read_bytes()
    (out / "000000_stats.json").write_text('{"shard": 0, "writ')  # torn by a crash or a full disk
    for extra, code in (((), 0), (("--json",), 0), (("--verify",), 1)):
        result = invoke("inspect", str(out), *extra)
        assert result.exit_code == code and "Traceback" not in result.output
        (note,) = [ln for ln in result.output.splitlines() if ln.startswith("warning:")]
        assert f"{out / '000000_stats.json'} is not a readable commit marker" in note
        assert "shard 0 counts as uncommitted" in note and "prep shards" in note
    report = json.loads(invoke("inspect", str(out), "--json").stdout)
    assert report["health"]["corrupt_markers"] == ["000000_stats.json"] and report["health"]["shards_missing"] == [0]
    assert report["written"] == 2  # figures come from the committed shard only

    build_places(meta, out, "--shard-size", "2")
    assert (out / "000000.tar").read_bytes() == tar_before
    report = json.loads(invoke("inspect", str(out), "--json").stdout)
    assert report["health"]["corrupt_markers"] == [] and report["written"] == 4


def test_torn_dataset_json_is_rewritten_by_a_rerun_and_refused_by_retry_in_one_line(tmp_path):
    meta = media.places_tree(tmp_path, [entry(i) for i in range(4)])
    out = tmp_path / "out"
    build_places(meta, out, "--shard-size", "2")
    (out / shard_dir.DATASET_FILE).write_text('{"items_total": 4, "load')  # torn by a crash or a full disk
    retried = invoke("retry", str(out))
    assert retried.exit_code == 2 and "Traceback" not in retried.output
    assert "records no re-creatable loader" in retried.output
    build_places(meta, out, "--shard-size", "2")  # every shard committed: only the summary is rewritten
    dataset = json.loads((out / shard_dir.DATASET_FILE).read_text())
    assert dataset["written"] == 4 and dataset["loader"]["name"] == "places"


def test_a_16_bit_png_is_stored_as_its_8_bit_copy_and_a_prime_rate_wav_is_resampled(tmp_path):
    """`prep shards places` once stored a 16-bit grey PNG washed out (PIL clips it at 255: the dark
    quarter of a ramp at 251/255) and failed on a WAV at 100,003 Hz (a 6.4 GB resampling kernel)."""
    pictures = media.write_mode_pictures(tmp_path / "modes")
    prime = 100_003
    entries = [{**entry(i), "image": f"b/bakery/img_{i}.png", "image_size": None} for i in range(2)]
    entries.append({**entry(2), "audio": media.tone(1000, 0.6, prime), "sr": prime})
    meta = media.places_tree(tmp_path, entries)
    for i, name in enumerate(["I16.png", "L.png"]):  # the same ramp in 16 and in 8 bits
        (tmp_path / "places205" / f"b/bakery/img_{i}.png").write_bytes(pictures[name][0].read_bytes())
    out = tmp_path / "out"
    build_places(meta, out)
    assert [r["status"] for _, r in sorted(rows(out).items())] == ["written"] * 3, rows(out)
    stored = {json.loads(s[fmt.META_EXT])["source_id"]: s for s in samples(out).values()}
    wide, eight = (stored[f"wavs/{i}/utterance_{i}.wav"][fmt.IMAGE_EXT] for i in range(2))
    assert wide == eight  # byte-identical JPEGs: scaled by 1/257, not clipped
    assert np.asarray(fmt.decode_image(wide))[:, :60].mean() < 12  # the dark quarter stays dark
    clip = fmt.decode_audio(stored["wavs/2/utterance_2.wav"][fmt.AUDIO_EXT])
    assert json.loads(stored["wavs/2/utterance_2.wav"][fmt.META_EXT])["duration"] == pytest.approx(0.6, abs=1e-4)
    assert media.dominant_frequency(clip[:9600], fmt.SAMPLE_RATE) == pytest.approx(1000, abs=2)
