"""`prep shards manifest` and `prep shards videos` end to end on generated files: CSV, JSONL and
parquet manifests, two types, bad rows counted where they belong, resume, retry, inspect, a folder
of videos, and an s3:// output."""

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline import format as fmt
from pipeline import shard_dir, storage
from pipeline.prep import generic
from pipeline.prep.cli import app
from pipeline.prep.manifest import read_rows
from pipeline.prep.worker import FAILED, WRITTEN
from tests.support import media

SR = 44_100
FIELDS = ["audio", "image", "start", "end", "frame_time", "type", "caption", "class", "id", "site"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Speech wavs and pictures, a 3 s video whose second k has pitch step_frequency(k) and colour
    colour_for_second(k), a music wav."""
    root = tmp_path_factory.mktemp("own")
    media.write_audio(root / "speech/a.wav", media.speech_like(2.0, 16_000, seed=1), 16_000)
    media.write_audio(root / "speech/b.flac", np.stack([media.speech_like(3.0, SR, seed=2)] * 2), SR)
    media.write_image(root / "img/a.jpg", (320, 240))
    media.write_image(root / "img/b.png", (240, 320))
    tone = media.stepped_tone(3.0, SR)
    media.write_video(root / "vid/clip.mp4", np.stack([tone, tone]), SR)
    media.write_audio(root / "music/tune.wav", media.tone(440.0, 1.5, 16_000), 16_000)
    return root


ROWS = [
    {"audio": "speech/a.wav", "image": "img/a.jpg", "type": "speech", "caption": "a red thing", "site": "x"},
    {"audio": "speech/b.flac", "image": "img/b.png", "type": "speech", "class": "talk"},
    {"audio": "vid/clip.mp4", "start": 0.5, "end": 2.5, "type": "sound", "class": "beep"},  # frame at 1.5 s
    {"audio": "music/tune.wav", "image": "vid/clip.mp4", "frame_time": 2.5, "type": "sound", "id": "tune one"},
    {"audio": "speech/missing.wav", "image": "img/a.jpg", "type": "speech"},  # missing_audio
    {"audio": "../outside.wav", "image": "img/a.jpg", "type": "sound"},  # path_escapes_root
    {"audio": "speech/a.wav", "image": "img/a.jpg", "type": "Speech!"},  # bad_type
    {"audio": "speech/a.wav", "image": "img/gone.jpg", "type": "speech", "id": "later"},  # missing_image, for retry
]


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        columns = {name: [r.get(name) for r in rows] for name in FIELDS}
        types = {n: pa.float64() if n in ("start", "end", "frame_time") else pa.string() for n in FIELDS}
        pq.write_table(pa.table({n: pa.array(v, types[n]) for n, v in columns.items()}), path)
    return path


def invoke(*args: str, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def build(manifest: Path, root: Path, out: Path, *extra: str):
    return invoke("shards", "manifest", "--manifest", manifest, "--root", root, "--out", out, "--no-progress", *extra)


def rows_of(out: Path) -> list[dict]:
    return [r for p in sorted(out.glob("*.parquet")) for r in read_rows(p)]


def samples_of(out: Path) -> dict[str, dict]:
    return {s["__key__"]: s for p in sorted(out.glob("*.tar")) for s in shard_dir.iter_tar_samples(p)}


def colour_second(sample: dict) -> int:
    return media.nearest_palette_second(np.asarray(fmt.decode_image(sample["jpg"])).reshape(-1, 3).mean(0))


def test_csv_manifest_gives_a_shard_directory_per_type_with_counted_failures(files, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", ROWS)
    out = tmp_path / "shards"
    result = build(manifest, files, out, "--workers", "0", "--shard-size", "3")
    assert sorted(p.name for p in out.iterdir()) == ["_untyped", "sound", "speech"]
    assert f"data.streams.speech={out / 'speech'}" in result.stdout

    speech = rows_of(out / "speech")
    assert [(r["index"], r["status"], r["reason_kind"]) for r in speech] == [
        (0, WRITTEN, None),
        (1, WRITTEN, None),
        (2, FAILED, "missing_audio"),
        (3, FAILED, "missing_image"),
    ]
    assert "line 6" in speech[2]["reason"] and "missing.wav" in speech[2]["reason"]  # the row and why
    sound = rows_of(out / "sound")
    assert [r["reason_kind"] for r in sound] == [None, None, "path_escapes_root"]
    assert "line 7" in sound[2]["reason"]
    (untyped,) = rows_of(out / "_untyped")
    assert untyped["reason_kind"] == "bad_type" and "line 8" in untyped["reason"] and "Speech!" in untyped["reason"]

    keys = [r["key"] for r in speech + sound]
    assert keys[:2] == ["speech_speech_a", "speech_speech_b"] and keys[4] == "sound_vid_clip_500_2500"
    assert keys[5].startswith("sound_tune-one-")  # an id made safe: the space replaced, a hash added
    assert all(fmt.is_valid_key(k) for k in keys)

    got = samples_of(out / "speech")
    for s in got.values():
        assert fmt.verify_sample(s) == []
    a = fmt.decode_meta(got["speech_speech_a"]["json"])
    assert (a["source"], a["audio_type"], a["caption"]) == ("manifest", "speech", "a red thing")
    assert a["extra"] == {"site": "x"}
    assert a["duration"] == pytest.approx(2.0) and a["image_source"] == "img/a.jpg"
    b = fmt.decode_meta(got["speech_speech_b"]["json"])
    assert (b["orig_sample_rate"], b["orig_channels"], b["class"]) == (SR, 2, "talk")
    assert b["labels"] == [{"mid": None, "name": "talk"}]

    got = samples_of(out / "sound")
    clip = got["sound_vid_clip_500_2500"]
    m = fmt.decode_meta(clip["json"])
    assert (m["clip_start"], m["clip_end"], m["frame_time"]) == (0.5, 2.5, 1.5)
    assert m["duration"] == pytest.approx(2.0, abs=0.03)
    assert colour_second(clip) == 1  # the middle of [0.5, 2.5)
    audio = fmt.decode_audio(clip["flac"])
    window = audio[int(0.6 * 16_000) : int(1.0 * 16_000)]  # source seconds 1.1-1.5
    assert media.dominant_frequency(window, 16_000) == pytest.approx(media.step_frequency(1), abs=3)
    tune = got[keys[5]]
    assert colour_second(tune) == 2 and fmt.decode_meta(tune["json"])["frame_time"] == 2.5

    report = json.loads(invoke("inspect", out, "--json", "--verify").stdout)
    by_dir = {Path(r["dir"]).name: r for r in report}
    assert {k: (r["written"], r["failed"]) for k, r in by_dir.items()} == {
        "speech": (2, 2),
        "sound": (2, 1),
        "_untyped": (0, 1),
    }
    assert by_dir["speech"]["verify"]["problems"] == 0

    markers = {p: p.stat().st_mtime_ns for p in out.rglob("*_stats.json")}
    result = build(manifest, files, out, "--workers", "0", "--shard-size", "3")  # resume: nothing to do
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*_stats.json")} == markers

    media.write_image(files / "img/gone.jpg", (300, 200))  # the missing picture arrives
    invoke("retry", out / "speech", "--no-progress", "--workers", "0")
    assert rows_of(out / "speech")[3]["status"] == WRITTEN
    (files / "img/gone.jpg").unlink()


def test_jsonl_and_parquet_give_the_csv_shards_byte_for_byte(files, tmp_path):
    rows = ROWS[:4]
    tars = {}
    for suffix in (".csv", ".jsonl", ".parquet"):
        out = tmp_path / suffix[1:]
        build(write_manifest(tmp_path / f"m{suffix}", rows), files, out, "--workers", "0")
        tars[suffix] = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.tar"))}
    assert len(tars[".csv"]) == 2
    assert tars[".jsonl"] == tars[".csv"] and tars[".parquet"] == tars[".csv"]


def test_manifest_rows_and_files_that_are_unusable(files, tmp_path):
    lines = [
        json.dumps({"audio": "a.wav", "type": "music"}),
        "{not json",
        "[1, 2]",
        json.dumps({"audio": "a.wav", "type": "music", "start": 5, "end": 2}),
        json.dumps({"audio": "a.wav", "type": "music", "start": "soon"}),
        json.dumps({"image": "x.jpg", "type": "music"}),
        json.dumps({"audio": "pipe:rm -rf x|y.wav", "type": "music"}),
        json.dumps({"audio": "a.wav"}),
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    items = generic.read_manifest(path)
    kinds = [i.get("error", "").split(":")[0] for i in items]
    assert kinds == ["", "bad_row", "bad_row", "bad_row", "bad_row", "bad_row", "", "bad_type"]
    assert "line 4" in items[3]["error"] and "start < end" in items[3]["error"]
    key = generic.item_key(items[6])
    assert fmt.is_valid_key(key) and "pipe:" not in key and "|" not in key
    assert [i["type"] for i in generic.read_manifest(path, default_type="sound")][7] == "sound"

    (tmp_path / "no_audio.csv").write_text("wav,type\nx.wav,speech\n")
    (tmp_path / "no_type.csv").write_text("audio\nx.wav\n")
    (tmp_path / "m.txt").write_text("audio,type\n")
    for name, words in [
        ("no_audio.csv", "has no 'audio' column"),
        ("no_type.csv", "has no 'type' column"),
        ("m.txt", "a .csv, .jsonl or .parquet"),
        ("absent.csv", "does not exist"),
    ]:
        result = invoke("shards", "manifest", "--manifest", tmp_path / name, "--out", tmp_path / "o", code=2)
        assert "error: " in result.output and words in result.output
    result = invoke("shards", "manifest", "-m", path, "--type", "Music", "--out", tmp_path / "o", code=2)
    assert "--type 'Music' is not a type name" in result.output


def test_video_segments_rule():
    assert generic.video_segments(None) == ([(None, None)], 0.0)
    assert generic.video_segments(10.4) == ([(None, None)], 0.0)
    assert generic.video_segments(25.0) == ([(0.0, 10.0), (10.0, 20.0), (20.0, None)], 0.0)
    spans, left = generic.video_segments(23.0)
    assert spans == [(0.0, 10.0), (10.0, 20.0)] and left == pytest.approx(3.0)


def test_a_folder_of_videos(tmp_path):
    folder = tmp_path / "videos"
    for rel, seconds in (("dog/b.mp4", 2.0), ("a.mkv", 3.0)):
        media.write_video(folder / rel, media.stepped_tone(seconds, SR), SR)
    (folder / "notes.txt").write_text("not a video")
    out = tmp_path / "shards"
    result = invoke("shards", "videos", folder, "--type", "sound", "--out", out, "--no-progress", "--class-from-folder")
    assert "1 file(s) under" in result.output
    assert [p.name for p in out.iterdir()] == ["sound"]
    samples = samples_of(out / "sound")
    assert sorted(samples) == ["sound_a", "sound_dog_b"]
    a, b = (fmt.decode_meta(samples[k]["json"]) for k in ("sound_a", "sound_dog_b"))
    assert a["duration"] == pytest.approx(3.0, abs=0.03) and a["frame_time"] == pytest.approx(1.5, abs=0.02)
    assert (a["source"], a.get("class"), b["class"]) == ("videos", None, "dog")
    assert colour_second(samples["sound_a"]) == 1 and colour_second(samples["sound_dog_b"]) == 1
    assert json.loads((out / "sound/dataset.json").read_text())["input_warnings"] == {"files_not_videos": 1}


def test_an_s3_out_holds_one_prefix_per_type(files, s3_env, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [ROWS[0], ROWS[3]])
    build(manifest, files, s3_env, "--workers", "0")
    assert not (tmp_path / "s3:").exists()
    for audio_type in ("speech", "sound"):
        loc = storage.location(f"{s3_env}/{audio_type}")
        assert json.loads(storage.read_bytes(loc / "dataset.json"))["written"] == 1
