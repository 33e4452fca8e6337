"""`prep shards audioset`: Google's CSVs, media directories (whole videos, cut clips in every
spelling, audio + image pairs), exact time ranges, and the yt-dlp path against a local server."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline import format as fmt
from pipeline import shard_dir
from pipeline.prep import audioset
from pipeline.prep.cli import app
from pipeline.prep.manifest import read_rows
from pipeline.prep.media import SkipItem
from pipeline.prep.worker import FAILED
from tests.support import media

LABELS = {"/m/09x0r": "Speech", "/m/04rlf": "Music", "/t/dd00088": "Gush, water"}
SR = 44_100


def source_video(path: Path, seconds: float, first_second: int = 0) -> Path:
    """A stereo video whose second k (counting from ``first_second``: a cut clip of a longer
    source) has pitch step_frequency(k) and colour colour_for_second(k)."""
    tone = media.stepped_tone(seconds, SR, base=media.step_frequency(first_second))
    return media.write_video(path, np.stack([tone, 0.5 * tone]), SR, first_second=first_second)


def check_range(sample: dict, start: float, end: float) -> None:
    """The sample's audio is [start, end) of a stepped-tone source and its frame is from the middle."""
    meta = fmt.decode_meta(sample["json"])
    assert (meta["clip_start"], meta["clip_end"]) == (start, end)
    clip = fmt.decode_audio(sample["flac"])
    assert clip.shape == (fmt.CLIP_SAMPLES,)
    offset = np.ceil(start) - start  # the first whole-second pitch change inside the clip
    if offset > 0:
        assert media.first_change(clip, fmt.SAMPLE_RATE) == pytest.approx(offset, abs=0.02)
    probe = offset + 1.5  # middle of a whole source second
    window = clip[int((probe - 0.3) * 16_000) : int((probe + 0.3) * 16_000)]
    assert media.dominant_frequency(window, 16_000) == pytest.approx(media.step_frequency(int(start + probe)), abs=3)
    frame = fmt.decode_image(sample["jpg"])
    assert min(frame.size) == fmt.IMAGE_SHORT_SIDE
    middle = int((start + end) / 2)
    assert media.nearest_palette_second(np.asarray(frame).reshape(-1, 3).mean(0)) == middle % len(media.PALETTE)


def test_read_segments_as_published(tmp_path):
    seg, lab = media.audioset_csvs(
        tmp_path,
        [("--PJHxphWEs", 30, 40, ["/m/09x0r", "/t/dd00088"]), ("abcdefghijk", 0.5, 10.5, ["/m/unknown"])],
        LABELS,
        extra_lines=[
            "just-one-field",
            'bad id!!!!!, 1, 2, "/m/04rlf"',
            'abcdefghij2, 10, 5, "/m/04rlf"',
            'abcdefghij3, 1, 2, ""',
            'abcdefghij4, x, 2, "/m/04rlf"',
            "",
        ],
    )
    labels = audioset.read_labels(lab)
    assert labels["/t/dd00088"] == "Gush, water"
    items = audioset.read_segments(seg, labels)
    assert len(items) == 7
    assert items[0] == {
        "line": 4,
        "ytid": "--PJHxphWEs",
        "start": 30.0,
        "end": 40.0,
        "labels": [{"mid": "/m/09x0r", "name": "Speech"}, {"mid": "/t/dd00088", "name": "Gush, water"}],
    }
    assert items[1]["labels"] == [{"mid": "/m/unknown", "name": None}]
    assert [audioset.item_key(i) for i in items[:2]] == ["as_--PJHxphWEs_30000", "as_abcdefghijk_500"]
    errors = [i["error"] for i in items[2:]]
    assert all(e.startswith("bad_row: line ") for e in errors)
    assert "got 1 fields" in errors[0] and "outside" in errors[1] and "start < end" in errors[2]
    assert "no labels" in errors[3] and "not numbers" in errors[4]


def test_unquoted_label_lists_are_still_read(tmp_path):
    seg = tmp_path / "s.csv"
    seg.write_text("# a\n# b\n# c\nabcdefghijk, 1.0, 11.0, /m/09x0r,/m/04rlf\n")
    (item,) = audioset.read_segments(seg, LABELS)
    assert [x["mid"] for x in item["labels"]] == ["/m/09x0r", "/m/04rlf"]


def test_media_names_whole_videos_and_clips_in_every_spelling(tmp_path):
    for name in [
        "abcdefghijk.mp4",
        "clipInt0001_30_40.mkv",
        "clipFlt0001_30.000_40.000.webm",
        "clipMs00001_30000_40000.mp4",
        "YaudioOnly01.wav",
        "YaudioOnly01.jpg",
        "notes.txt",
    ]:
        (tmp_path / "sub" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "sub" / name).write_bytes(b"x")
    index = audioset.scan_media(tmp_path)

    def find(ytid, start, end):
        return audioset.find_media(index, {"ytid": ytid, "start": start, "end": end}, str(tmp_path))

    assert find("abcdefghijk", 30, 40).start is None
    assert (find("clipInt0001", 30, 40).start, find("clipInt0001", 30, 40).end) == (30, 40)
    assert find("clipFlt0001", 30, 40).start == 30
    assert find("clipMs00001", 30, 40).start == 30  # integer milliseconds
    wav = find("audioOnly01", 1, 6)  # "Y" + YTID, with an image beside it
    assert wav.path.endswith("YaudioOnly01.wav") and wav.image.endswith("YaudioOnly01.jpg")
    with pytest.raises(SkipItem, match="media_mismatch"):
        find("clipInt0001", 50, 60)
    with pytest.raises(SkipItem, match="missing_media: no nothere0001"):
        find("nothere0001", 0, 10)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("audioset_media")
    source_video(root / "-whole00001.mp4", 16.0)
    source_video(root / "clips" / "clipInt0001_30_40.mp4", 10.0, first_second=30)
    source_video(root / "clips" / "clipFlt0001_30.000_40.000.mkv", 10.0, first_second=30)
    source_video(root / "clips" / "clipMs00001_20000_30000.mp4", 10.0, first_second=20)
    source_video(root / "clipWide001_0_12.mp4", 12.0)
    media.write_audio(root / "YaudioOnly01.wav", media.stepped_tone(12.0, 22_050), 22_050)
    Image.new("RGB", (300, 200), media.colour_for_second(3)).save(root / "YaudioOnly01.jpg")
    media.write_audio(root / "noPicture01.flac", media.tone(440, 10, 16_000), 16_000)
    media.write_garbage(root / "corrupt0001.mp4")
    source_video(root / "mismatch001_0_10.mp4", 10.0)
    return root


def test_audioset_from_a_media_dir(media_dir, tmp_path):
    segments = [
        ("-whole00001", 3.5, 13.5, ["/m/09x0r"]),
        ("clipInt0001", 30, 40, ["/m/04rlf"]),
        ("clipFlt0001", 30, 40, ["/m/04rlf", "/t/dd00088"]),
        ("clipMs00001", 20, 30, ["/m/04rlf"]),
        ("clipWide001", 2.25, 12, ["/m/04rlf"]),  # inside a longer clip; source ends at 12 s
        ("audioOnly01", 1.5, 6.5, ["/m/09x0r"]),
        ("noPicture01", 0, 10, ["/m/09x0r"]),
        ("corrupt0001", 0, 10, ["/m/09x0r"]),
        ("missing0001", 0, 10, ["/m/09x0r"]),
        ("mismatch001", 20, 30, ["/m/09x0r"]),
    ]
    seg, lab = media.audioset_csvs(tmp_path, segments, LABELS, extra_lines=["broken line"])
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
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
            "2",
            "--shard-size",
            "4",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "media for 8 of 11 segments found" in result.output
    rows = {r["index"]: r for p in sorted(out.glob("*.parquet")) for r in read_rows(p)}
    assert sorted(rows) == list(range(11))
    failed = {i: r["reason_kind"] for i, r in rows.items() if r["status"] == FAILED}
    assert failed == {6: "no_frame", 7: "audio_decode", 8: "missing_media", 9: "media_mismatch", 10: "bad_row"}
    samples = {s["__key__"]: s for p in sorted(out.glob("*.tar")) for s in shard_dir.iter_tar_samples(p)}
    assert sorted(samples) == sorted(rows[i]["key"] for i in range(6))
    for s in samples.values():
        assert fmt.verify_sample(s) == []
    check_range(samples["as_-whole00001_3500"], 3.5, 13.5)
    for key, start in (("as_clipInt0001_30000", 30), ("as_clipFlt0001_30000", 30), ("as_clipMs00001_20000", 20)):
        check_range(samples[key], start, start + 10)
    meta = fmt.decode_meta(samples["as_clipFlt0001_30000"]["json"])
    assert meta["labels"] == [{"mid": "/m/04rlf", "name": "Music"}, {"mid": "/t/dd00088", "name": "Gush, water"}]
    assert (meta["source"], meta["source_id"], meta["audio_type"], meta["orig_channels"]) == (
        "audioset",
        "clipFlt0001",
        "sound",
        2,
    )

    wide = fmt.decode_meta(samples["as_clipWide001_2250"]["json"])
    assert wide["duration"] == pytest.approx(9.75, abs=0.01)  # the source ends before the segment does
    wide_clip = fmt.decode_audio(samples["as_clipWide001_2250"]["flac"])
    assert media.first_change(wide_clip, 16_000) == pytest.approx(0.75, abs=0.02)

    paired = samples["as_audioOnly01_1500"]
    assert fmt.decode_meta(paired["json"])["orig_sample_rate"] == 22_050
    assert media.first_change(fmt.decode_audio(paired["flac"]), 16_000) == pytest.approx(0.5, abs=0.02)
    assert media.nearest_palette_second(np.asarray(fmt.decode_image(paired["jpg"])).reshape(-1, 3).mean(0)) == 3


def test_download_failure_kinds():
    kinds = {
        "ERROR: [youtube] x: Video unavailable. This video has been removed by the uploader": "unavailable",
        "ERROR: [youtube] x: Private video. Sign in if you've been granted access": "unavailable",
        "ERROR: [youtube] x: Sign in to confirm you're not a bot. Use --cookies": "rate_limited",
        "ERROR: unable to download video data: HTTP Error 429: Too Many Requests": "rate_limited",
        "ERROR: [youtube] x: Sign in to confirm your age. This video may be inappropriate": "login_required",
        "ERROR: ffmpeg exited with code 183": "ffmpeg_error",
        "ERROR: [generic] x: Unable to download webpage: [Errno 111] Connection refused": "network_error",
        "ERROR: [youtube] x: Requested format is not available": "format_unavailable",
        "ERROR: something new": "download_error",
    }
    for text, kind in kinds.items():
        assert audioset.classify_download_failure(text) == kind, text


def test_download_with_yt_dlp_from_a_local_server(tmp_path):
    served = tmp_path / "served"
    source_video(served / "dlvideo0001.mp4", 16.0)
    segments = [
        ("dlvideo0001", 4.5, 14.5, ["/m/04rlf"]),
        ("gone0000001", 0, 10, ["/m/04rlf"]),
        ("ratelimited", 0, 10, ["/m/04rlf"]),
    ]
    seg, lab = media.audioset_csvs(tmp_path, segments, LABELS)
    cache = tmp_path / "cache"
    with media.serve_directory(served) as base:
        args = [
            "shards",
            "audioset",
            "--segments",
            str(seg),
            "--labels",
            str(lab),
            "--out",
            str(tmp_path / "out"),
            "--download-dir",
            str(cache),
            "--url-template",
            base + "/{ytid}.mp4",
            "--retries",
            "1",
            "--retry-wait",
            "0",
            "--workers",
            "2",
            "--no-progress",
        ]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {r["index"]: r for r in read_rows(tmp_path / "out" / "000000.parquet")}
    assert [rows[i]["reason_kind"] for i in range(3)] == [None, "unavailable", "rate_limited"]
    assert "HTTP Error 404" in rows[1]["reason"] and "429" in rows[2]["reason"]
    (sample,) = shard_dir.iter_tar_samples(tmp_path / "out" / "000000.tar")
    check_range(sample, 4.5, 14.5)
    assert [p.name for p in cache.iterdir()] == ["dlvideo0001_4.500_14.500.mp4"]  # only the segment, no temp dirs
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert dataset["failures"] == {"rate_limited": 1, "unavailable": 1}

    # the server is gone: a second build of the same segment is served from the download cache
    again = CliRunner().invoke(app, [*args[:6], "--out", str(tmp_path / "again"), *args[8:]])
    assert again.exit_code == 0, again.output
    (cached,) = shard_dir.iter_tar_samples(tmp_path / "again" / "000000.tar")
    assert cached == sample
