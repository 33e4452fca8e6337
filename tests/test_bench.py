"""The benchmarks run end to end at toy sizes (their figures are only meaningful at full size)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_loader_benchmark_prints_every_figure(tmp_path):
    out = _run(["bench/loader.py", "--speech", "24", "--sound", "12", "--items", "64", "--batch-size", "4",
                "--image-size", "64", "--clip-seconds", "2", "--rounds", "2", "--out", str(tmp_path / "shards")], tmp_path)
    assert re.search(r"decode-only ceiling .* items/s", out)
    for workers in (1, 2):
        for label in ("workers \\(raw batches\\)", "full, finished on"):
            assert re.search(rf"{workers} worker\(s\), {label}.*items/s = [0-9.]+ x ceiling", out), out
    assert re.search(r"finish_batch on \w+ .*: [0-9.]+ ms per item", out)


def test_train_step_benchmark_runs_the_real_step(tmp_path):
    out = _run(["bench/train_step.py", "--preset", "tiny", "--batch-size", "2", "--steps", "2", "--warmup", "1",
                "--clip-seconds", "1"], tmp_path)
    assert re.search(r"tiny stage=full B=2 cpu .*items/s", out), out
