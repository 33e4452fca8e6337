"""The shard builder under hostile data and faults, through the real `prep` CLI where it matters:
code named in dataset.json, a full output, two runs into one directory, bad durations, NaN in
metadata, and a killed driver's pool workers."""

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline import shard_dir
from pipeline.prep.build import build_shards
from pipeline.prep.cli import app
from pipeline.prep.manifest import read_rows
from pipeline.prep.media import Media
from tests.support import media, procs

REPO = Path(__file__).resolve().parents[3]


def _entry(i: int, seconds: float = 3.0, **fields) -> dict:
    return {
        "wav": f"wavs/utt_{i}.wav",
        "image": f"b/bakery/img_{i}.jpg",
        "audio": media.speech_like(seconds, 16_000, seed=i),
        "image_size": (256, 256),
        "uttid": f"U{i}",
        **fields,
    }


def _tree(root: Path, entries: list[dict]) -> tuple[Path, Path]:
    return media.places_tree(root, entries), root / "places205"


def _cli(meta: Path, image_root: Path, out: Path, *extra: str) -> list[str]:
    return [
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
        "--no-progress",
        *extra,
    ]


def _run(cmd: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, **kw)


def _shas(out: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


def _strict(text: str):
    """json.loads that refuses the non-standard NaN/Infinity literals."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# item 2: dataset.json never names code


def test_places_build_records_the_loader_by_registered_name(tmp_path):
    meta, image_root = _tree(tmp_path, [_entry(0)])
    out = tmp_path / "out"
    assert _run(_cli(meta, image_root, out, "--workers", "0")).returncode == 0
    dataset = _strict((out / "dataset.json").read_text())
    assert dataset["loader"] == {
        "name": "places",
        "args": [],
        "kwargs": {"audio_root": str(meta.parent.parent.resolve()), "image_root": str(image_root.resolve())},
    }
    assert dataset["key"] == "places"


HOSTILE_LOADERS = {
    "exec": lambda marker: {"name": "builtins:exec", "args": [f"open({str(marker)!r}, 'w').close()"], "kwargs": {}},
    "old-form-system": lambda marker: {"function": "os:system", "args": [f"touch {marker}"], "kwargs": {}},
    "dotted": lambda marker: {"name": "subprocess.run", "args": [["touch", str(marker)]]},
    "bare-string": lambda marker: "builtins:exec",
}


@pytest.mark.parametrize("hostile", HOSTILE_LOADERS.values(), ids=HOSTILE_LOADERS.keys())
def test_retry_refuses_a_loader_that_is_not_registered_and_runs_nothing(tmp_path, hostile):
    meta, image_root = _tree(tmp_path, [_entry(0), _entry(1, image_size=None)])  # one failed row to retry
    out = tmp_path / "out"
    assert _run(_cli(meta, image_root, out, "--workers", "0")).returncode == 0
    marker = tmp_path / "pwned"
    dataset = json.loads((out / "dataset.json").read_text())
    dataset["loader"] = hostile(marker)
    (out / "dataset.json").write_text(json.dumps(dataset))
    before = _shas(out)
    result = _run([sys.executable, "-m", "pipeline.prep.cli", "retry", str(out), "--workers", "0", "--no-progress"])
    assert result.returncode == 2
    line = _error_line(result.stderr)
    assert (
        "dataset.json names loader" in line and "which is not one of places, audioset" in line and "prep shards" in line
    )
    assert not marker.exists() and _shas(out) == before


def test_retry_refuses_arguments_the_registered_loader_does_not_take(tmp_path):
    meta, image_root = _tree(tmp_path, [_entry(0)])
    out = tmp_path / "out"
    assert _run(_cli(meta, image_root, out, "--workers", "0")).returncode == 0
    dataset = json.loads((out / "dataset.json").read_text())
    dataset["loader"]["kwargs"]["command"] = "touch x"
    (out / "dataset.json").write_text(json.dumps(dataset))
    result = CliRunner().invoke(app, ["retry", str(out), "--workers", "0", "--no-progress"])
    assert result.exit_code == 2 and "arguments it does not take" in result.output


# ---------------------------------------------------------------------------------------------
# item 8: a full output


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_write_error_stops_with_one_line_leaves_nothing_partial_and_a_rerun_resumes(tmp_path):
    # shards 0-1 hold short clips, shard 2 long ones: a file-size limit between them fails shard 2
    entries = [_entry(i, seconds=0.8) for i in range(4)] + [_entry(i, seconds=10.0) for i in range(4, 6)]
    meta, image_root = _tree(tmp_path, entries)
    reference = tmp_path / "reference"
    assert _run(_cli(meta, image_root, reference, "--shard-size", "2", "--workers", "1")).returncode == 0
    sizes = [p.stat().st_size for p in sorted(reference.glob("*.tar"))]
    assert max(sizes[:2]) < sizes[2]
    limit = (max(sizes[:2]) + sizes[2]) // 2

    out = tmp_path / "out"
    result = _run(
        _cli(meta, image_root, out, "--shard-size", "2", "--workers", "1"), preexec_fn=_limit_file_size(limit)
    )
    assert result.returncode == 2
    line = _error_line(result.stderr)
    assert f"cannot write the shards in {out}" in line and "File too large" in line
    assert "rerun the same command: it resumes" in line
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".partial") or n.startswith("000002")], names
    assert [c.index for c in shard_dir.committed_shards(out)] == [0, 1]

    assert _run(_cli(meta, image_root, out, "--shard-size", "2", "--workers", "1")).returncode == 0
    assert _shas(out) == _shas(reference)


def test_an_output_that_cannot_be_a_directory_is_one_line(tmp_path):
    meta, image_root = _tree(tmp_path, [_entry(0)])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "shards"
    result = _run(_cli(meta, image_root, out, "--workers", "0"))
    assert result.returncode == 2 and f"cannot write the shards in {out}" in _error_line(result.stderr)


# ---------------------------------------------------------------------------------------------
# item 9: one run per shard at a time


def _start_and_pause_after_first_commit(cmd: list[str], out: Path) -> subprocess.Popen:
    """Start ``cmd``; once it has committed a shard, stop it (SIGSTOP, with its pool) while it
    holds the lock, so the test does not race a build that might finish first."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("*_stats.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGSTOP)
    assert proc.poll() is None, "the first run ended before the test could pause it"
    return proc


def _resume(proc: subprocess.Popen) -> int:
    os.killpg(proc.pid, signal.SIGCONT)
    proc.communicate(timeout=300)
    return proc.returncode


def test_a_second_run_into_the_same_out_is_refused_at_once_naming_the_holder(tmp_path):
    entries = [_entry(i) for i in range(12)]
    meta, image_root = _tree(tmp_path, entries)
    out = tmp_path / "out"
    first = _start_and_pause_after_first_commit(_cli(meta, image_root, out, "--shard-size", "2", "--workers", "1"), out)
    try:
        for second in (
            _cli(meta, image_root, out, "--shard-size", "2", "--workers", "1"),
            [sys.executable, "-m", "pipeline.prep.cli", "retry", str(out), "--no-progress"],
        ):
            started = time.monotonic()
            result = _run(second, timeout=60)
            assert result.returncode == 2 and time.monotonic() - started < 30
            line = _error_line(result.stderr)
            assert f"{out} is being built by another prep run (pid {first.pid})" in line
    finally:
        assert _resume(first) == 0
    assert sum(s.samples for s in shard_dir.committed_shards(out)) == 12


def test_parts_of_one_array_share_a_directory_but_one_part_runs_once(tmp_path):
    entries = [_entry(i) for i in range(12)]
    meta, image_root = _tree(tmp_path, entries)
    out = tmp_path / "out"
    args = ("--shard-size", "2", "--workers", "1")
    first = _start_and_pause_after_first_commit(_cli(meta, image_root, out, *args, "--part", "0/2"), out)
    try:
        same = _run(_cli(meta, image_root, out, *args, "--part", "0/2"))
        assert same.returncode == 2 and f"(pid {first.pid})" in _error_line(same.stderr)
        other = _run(_cli(meta, image_root, out, *args, "--part", "1/2"))
        assert other.returncode == 0, other.stderr
    finally:
        assert _resume(first) == 0
    assert [s.index for s in shard_dir.committed_shards(out)] == list(range(6))
    assert json.loads((out / "dataset.json").read_text())["written"] == 12


# ---------------------------------------------------------------------------------------------
# items 13 and 15: durations and NaN in metadata


def _load(item: dict) -> Media:
    audio = media.tone(300, 2.0, item.get("sr", 16_000)) if item.get("sr", 16_000) > 0 else np.ones(32_000, np.float32)
    return Media(
        audio,
        item.get("sr", 16_000),
        Image.new("RGB", (64, 48)),
        {"source": "test", "source_id": str(item["i"]), "audio_type": "sound", **item.get("meta", {})},
    )


def _key(item: dict) -> str:
    return f"t_{item['i']}"


def test_bad_durations_become_failed_rows_never_samples(tmp_path):
    cases = {
        0: {},
        1: {"meta": {"duration": 0}},
        2: {"meta": {"duration": -1.5}},
        3: {"meta": {"duration": float("nan")}},
        4: {"meta": {"duration": float("inf")}},
        5: {"meta": {"duration": "2"}},
        6: {"meta": {"duration": None}},
        7: {"sr": 0},
        8: {"sr": -16_000},
    }
    out = tmp_path / "ds"
    summary = build_shards(
        [{"i": i, **c} for i, c in cases.items()], _load, out, key=_key, shard_size=4, workers=0, progress=False
    )
    rows = {r["index"]: r for p in sorted(out.glob("*.parquet")) for r in read_rows(p)}
    kinds = {i: r["reason_kind"] for i, r in rows.items() if r["status"] == "failed"}
    assert kinds == {
        1: "bad_duration",
        2: "bad_duration",
        3: "bad_duration",
        4: "bad_duration",
        5: "bad_duration",
        6: "bad_duration",
        7: "audio_rate",
        8: "audio_rate",
    }
    assert summary.written == 1
    assert [s["__key__"] for p in sorted(out.glob("*.tar")) for s in shard_dir.iter_tar_samples(p)] == ["t_0"]
    for r in rows.values():  # the manifest's item/meta columns are strict JSON too
        _strict(r["item"])


def test_nan_and_inf_in_metadata_are_written_as_null_in_strict_json(tmp_path):
    nan_meta = {"score": float("nan"), "gain": np.float32("-inf"), "nested": {"x": [1.0, float("nan")]}}
    out = tmp_path / "ds"
    build_shards([{"i": 0, "meta": nan_meta, "weight": float("nan")}], _load, out, key=_key, workers=0, progress=False)
    (sample,) = shard_dir.iter_tar_samples(out / "000000.tar")
    meta = _strict(sample["json"].decode())
    assert meta["score"] is None and meta["gain"] is None and meta["nested"] == {"x": [1.0, None]}
    (row,) = read_rows(out / "000000.parquet")
    assert _strict(row["meta"])["score"] is None and _strict(row["item"])["weight"] is None
    for path in (out / "000000_stats.json", out / "dataset.json"):
        _strict(path.read_text())


def test_places_metadata_holding_nan_gives_null_through_the_cli(tmp_path):
    meta, image_root = _tree(tmp_path, [_entry(0, score=float("nan"))])
    assert "NaN" in meta.read_text()  # Python's json writes (and reads) the non-standard literal
    out = tmp_path / "out"
    assert _run(_cli(meta, image_root, out, "--workers", "0")).returncode == 0
    (sample,) = shard_dir.iter_tar_samples(out / "000000.tar")
    assert _strict(sample["json"].decode())["score"] is None
    for path in out.glob("*.json"):
        _strict(path.read_text())


# ---------------------------------------------------------------------------------------------
# item 19: no orphaned pool workers


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_kill_9_of_the_driver_takes_its_pool_workers_with_it(tmp_path):
    meta, image_root = _tree(tmp_path, [_entry(i, seconds=6.0) for i in range(40)])
    out = tmp_path / "out"
    workers, left = procs.survivors_of_kill_9(
        _cli(meta, image_root, out, "--workers", "2", "--shard-size", "4"), 2, REPO
    )
    assert len(workers) >= 2, "the pool never started"
    assert left == [], f"pool workers outlived their driver: {left}"
