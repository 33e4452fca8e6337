"""The benchmarks run end to end at toy sizes (their figures are only meaningful at full size)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from bench.train_step import flop_counter

ROOT = Path(__file__).resolve().parents[2]


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
                "--clip-seconds", "1", "--count-flops"], tmp_path)
    assert re.search(r"tiny stage=full B=2 cpu .*items/s", out), out
    assert re.search(r"tiny stage=full B=2 cpu .*: [0-9.]+ GFLOP per item .* [0-9.]+ TFLOP/s achieved", out), out


def test_flop_count_of_a_grouped_convolution_step_is_three_forwards():
    # torch's own backward formula ignores the groups in one term (HuBERT's positional conv has 16)
    for groups in (1, 16):
        conv = torch.nn.Conv1d(32, 32, 8, padding=4, groups=groups)
        x = torch.randn(2, 32, 50, requires_grad=True)
        with flop_counter() as forward:
            conv(x)
        with flop_counter() as step:
            conv(x).sum().backward()
        expected = 2 * 2 * 32 * 51 * (32 // groups) * 8  # 2 x batch x c_out x out length x c_in/groups x kernel
        assert forward.get_total_flops() == expected
        assert step.get_total_flops() == 3 * expected  # input and weight gradients cost a forward each
