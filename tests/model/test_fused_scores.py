"""The fused (Triton) score backend: values and gradients against the naive einsum, and the
backend choice.

Triton fixes at its import whether kernels run in its interpreter, and this pytest process may have
imported it already, so the kernels run in a child process started with ``TRITON_INTERPRET=1``
(``tests.support.fused_cases``, tiny odd shapes, a few seconds in all).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import similarity
from model.config import ModelConfig
from model.loss import LossWeights, mix_separate_loss
from model.similarity import batch_scores, naive_batch_scores

if os.environ.get("CI") == "true":
    import triton  # noqa: F401  (CI must run these: torch's Linux wheel brings triton)
else:
    pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]
FP32_CASES = ["max_heads_fp32", "one_head_fp32", "tiles_fp32", "tiles_one_head_fp32"]
LOW_CASES = ["bf16_autocast", "bf16_inputs_one_head", "fp16_inputs"]


@pytest.fixture(scope="module")
def interpreted():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.fused_cases"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["interpret"] is True  # the child really ran the interpreter
    return result


@pytest.mark.parametrize("case", FP32_CASES)
def test_fused_float32_equals_naive_in_value_and_gradient(interpreted, case):
    got = interpreted[case]
    for key in ("scores", "no_grad_scores", "grad_a", "grad_v"):
        assert got[key] < 1e-6, (case, key, got[key])
    assert got["scores_dtype"] == "torch.float32"
    assert got["empty_clip_abs"] == 0.0  # a clip without valid frames scores 0 and gets no gradient


@pytest.mark.parametrize("case", LOW_CASES)
def test_fused_half_precision_accumulates_in_float32(interpreted, case):
    got = interpreted[case]
    # the products of 16-bit inputs are exact in float32: scores differ only by summation order
    assert got["scores"] < 1e-5 and got["no_grad_scores"] < 1e-5, got
    # gradients are rounded once to the 16-bit dtype (8 bits of mantissa for bf16)
    assert got["grad_a"] < 1e-2 and got["grad_v"] < 1e-2, got
    assert got["scores_dtype"] == "torch.float32"
    assert got["empty_clip_abs"] == 0.0


def test_fused_backend_gives_the_loss_and_gradients_of_naive(interpreted):
    assert interpreted["loss"]["loss"] < 1e-6 and interpreted["loss"]["grads"] < 1e-6, interpreted["loss"]


def test_fused_scores_of_an_empty_batch_have_the_naive_shape(interpreted):
    for name, got in interpreted["empty"].items():
        assert got["shape"] == got["naive_shape"], (name, got)
        assert got["grad_shapes"][0][0] == got["shape"][0] and got["grad_shapes"][1][0] == got["shape"][1], got


def _inputs():
    gen = torch.Generator().manual_seed(0)
    a, v = torch.randn(3, 4, 2, 1, 5, generator=gen), torch.randn(2, 4, 2, 2, 2, generator=gen)
    return a, torch.ones(3, 5, dtype=torch.bool), v


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs fused on the CPU")
def test_fused_on_cpu_without_interpreter_says_what_to_do():
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1") as err:
        batch_scores(*_inputs(), backend="fused")
    assert "\n" not in str(err.value) and "'blocked'" in str(err.value)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs fused on the CPU")
def test_score_backend_of_the_loss_reaches_the_scores():
    a, mask, v = _inputs()
    images = torch.cat([v, v[:1]])
    feats = {
        "sound_audio": a,
        "speech_audio": a.flip(0),
        "sound_mask": mask,
        "speech_mask": mask,
        "sound_image": images,
        "speech_image": images.flip(0),
    }

    def loss(backend):
        return mix_separate_loss(
            feats,
            torch.tensor(2.0),
            LossWeights(disentanglement=0.0),
            score_backend=backend,
            generator=torch.Generator().manual_seed(0),
        )[0]

    torch.testing.assert_close(loss("blocked"), loss("naive"))
    with pytest.raises(ValueError, match="score backend 'fused'"):
        loss("fused")


def test_auto_is_blocked_on_cpu_and_naive_is_the_einsum():
    a, mask, v = _inputs()
    assert similarity.resolve_backend("auto", a.device, torch.float32) == "blocked"
    torch.testing.assert_close(batch_scores(a, mask, v, backend="auto"), batch_scores(a, mask, v, backend="blocked"))
    torch.testing.assert_close(
        batch_scores(a, mask, v, head=1, backend="naive"), naive_batch_scores(a, mask, v, head=1)
    )


def test_unknown_backend_is_rejected_by_the_scores_and_the_config():
    with pytest.raises(ValueError, match="score backend must be one of auto, fused, blocked, naive"):
        batch_scores(*_inputs(), backend="flash")
    with pytest.raises(ValueError, match="score_backend must be one of"):
        ModelConfig.preset("tiny", score_backend="flash")
    assert ModelConfig.from_json(ModelConfig.preset("tiny", score_backend="naive").to_json()).score_backend == "naive"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs fused on the CPU")
def test_similarity_benchmark_runs_on_the_cpu_and_says_why_fused_is_skipped():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [
            sys.executable,
            "bench/similarity.py",
            "--batch-sizes",
            "3",
            "--repeats",
            "1",
            "--channels",
            "8",
            "--frames",
            "6",
            "--hw",
            "9",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("fused: skipped (") and "TRITON_INTERPRET=1" in line for line in lines)
    row = next(line.split() for line in lines if line.split()[:1] == ["3"])
    # naive ms, naive MB, blocked ms, blocked MB, then blocked/naive time and memory
    assert len(row) == 7 and all(float(x) >= 0 for x in row[1:]), row
