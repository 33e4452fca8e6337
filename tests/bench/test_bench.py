"""The benchmarks run end to end at toy sizes (their figures are only meaningful at full size)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from bench.train_step import flop_counter, peak_tflops

ROOT = Path(__file__).resolve().parents[2]


def _run(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_loader_benchmark_prints_every_figure(tmp_path):
    out = _run(
        [
            "bench/loader.py",
            "--speech",
            "24",
            "--sound",
            "12",
            "--items",
            "64",
            "--batch-size",
            "4",
            "--image-size",
            "64",
            "--clip-seconds",
            "2",
            "--rounds",
            "2",
            "--out",
            str(tmp_path / "shards"),
        ],
        tmp_path,
    )
    assert re.search(r"decode-only ceiling .* items/s", out)
    for workers in (1, 2):
        for label in ("workers \\(raw batches\\)", "full, finished on"):
            assert re.search(rf"{workers} worker\(s\), {label}.*items/s = [0-9.]+ x ceiling", out), out
    assert re.search(r"finish_batch on \w+ .*: [0-9.]+ ms per item", out)


def test_train_step_benchmark_measures_every_variant_against_the_baseline(tmp_path):
    # the compiled variants are left out here (minutes of C++ compilation on this CPU);
    # tests/model/test_levers.py checks a compiled model's loss and gradients
    variants = ["baseline", "sdpa", "channels_last", "checkpoint_front_end", "freeze_feature_encoder"]
    ab = tmp_path / "ab.jsonl"
    out = _run(
        [
            "bench/train_step.py",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--clip-seconds",
            "1",
            "--variants",
            *variants,
            "--json",
            str(ab),
        ],
        tmp_path,
    )
    for name in variants:
        assert re.search(
            rf"tiny stage=full B=2 {name} +cpu no: [0-9.]+ items/s, [0-9]+ ms/step, [0-9.]+ TFLOP/s, "
            rf"MFU n/a, peak n/a, [0-9.]+ GFLOP/item, vs baseline: loss [0-9.e+-]+, grad norm "
            rf"[0-9.e+-]+ rel. diff ok",
            out,
        ), out
    rows = [json.loads(line) for line in ab.read_text().splitlines()]
    assert [r["variant"] for r in rows] == variants and all(r["ok"] for r in rows)
    assert max(max(r["loss_rel_diff"], r["grad_rel_diff"]) for r in rows) < 1e-5  # float32
    # the best checked variant, with selective checkpointing, at the next batch size
    out = _run(
        [
            "bench/train_step.py",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--batch-size",
            "3",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--clip-seconds",
            "1",
            "--variants",
            "best",
            "--best-from",
            str(ab),
            "--set",
            "gradient_checkpointing=front_end",
            "--until-oom",
        ],
        tmp_path,
    )
    best = max((r for r in rows if r["variant"] != "freeze_feature_encoder"), key=lambda r: r["items_per_s"])
    assert re.search(rf"B=3 {best['variant']}\+gradient_checkpointing=front_end +cpu no: [0-9.]+ items/s", out), out
    overrides = _run(["bench/train_step.py", "--print-best", str(ab)], tmp_path).split()
    assert all(o.startswith("model.") and "=" in o for o in overrides)
    assert len(overrides) == (best["variant"] != "baseline")


def test_train_step_benchmark_checks_the_fused_score_kernels_or_says_why_not(tmp_path):
    """A whole training step with the Triton score kernels (interpreted on the CPU) gives the
    baseline's loss and gradient norm; without the interpreter the variant is skipped, with why."""
    args = [
        "bench/train_step.py",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--clip-seconds",
        "1",
        "--variants",
        "baseline",
        "fused_scores",
    ]
    out = _run(args, tmp_path)
    assert re.search(r"B=2 fused_scores +cpu: skipped \(score backend 'fused' runs Triton kernels on CUDA", out), out
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(
        r"B=2 fused_scores +cpu no: .* vs baseline: loss [0-9.e+-]+, grad norm [0-9.e+-]+ rel. diff ok", result.stdout
    ), result.stdout


def test_mfu_uses_the_dense_bf16_peak_of_known_devices():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989 and peak_tflops("NVIDIA H100 PCIe") == 756
    assert peak_tflops("NVIDIA H200") == 989 and peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert peak_tflops("NVIDIA L4") is None and peak_tflops("cpu") is None


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
