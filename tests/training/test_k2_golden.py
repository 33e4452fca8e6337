"""K = 2 stays bit-identical under typed audio streams.

One fixed tiny model and one fixed random batch through three paths: ``AVModel.forward`` + the
objective (Eq. 11, every regularizer on), ``training.step``'s padding and loss in both stages
(mosaic on in the full one), and the objective alone on float64 features with the heads swapped
and with ``correspondence_heads: own``. Each must give the loss terms, features and gradients of
the frozen two-stream path (``tests/support/k2_reference.py``) bit for bit, on any machine, with
and without the typed-streams fields a loader now adds (``types``, ``mix_types``); and the values
themselves must be those recorded in ``fixtures/k2_golden.json`` before typed streams existed,
wherever the encoders compute the recorded features (the same numeric environment).

    python -m tests.training.test_k2_golden   # rewrites the fixture (only ever from the old path)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from model import regularizers as reg
from model.config import ModelConfig
from model.factory import build_model
from model.loss import LossWeights, mix_separate_loss
from tests.support import k2_reference as old
from training.config import TrainConfig
from training.step import pad_batch, step_loss

FIXTURE = Path(__file__).parent / "fixtures" / "k2_golden.json"
B, N, SIZE = 3, 9_600, 64  # 0.6 s clips, 64 px images
CPU = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"))


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def _batch(typed: bool) -> dict:
    """A loader-like K = 2 batch; ``typed``: with the fields of the typed-streams contract (the
    types in config order, ``speech`` first, as ``data.speech``/``data.sound`` list them)."""
    g = torch.Generator().manual_seed(0)
    batch = {}
    for kind in ("sound", "speech"):
        batch[f"{kind}_audio"] = 0.1 * torch.randn(B, N, generator=g)
        batch[f"{kind}_mask"] = torch.ones(B, N, dtype=torch.bool)
        batch[f"{kind}_image"] = torch.randn(B, 3, SIZE, SIZE, generator=g)
        batch[f"{kind}_splice"] = torch.zeros(B, N, dtype=torch.bool)
        batch[f"{kind}_key"] = [f"{kind}{i}" for i in range(B)]
    batch["speech_mask"][1, N // 2 :] = False
    batch["speech_audio"] *= batch["speech_mask"]
    batch["sound_splice"][0, 2_000:5_000] = True
    batch["speech_splice"][2, 4_000:6_000] = True
    batch["mix_audio"] = batch["sound_audio"] + batch["speech_audio"]
    batch["mix_mask"] = batch["sound_mask"] | batch["speech_mask"]
    if typed:
        batch["types"] = batch["mix_types"] = ("speech", "sound")
    return batch


def _model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny", image_size=SIZE, **overrides))
    return model.set_stage("full").train()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _model_path(ours: bool, typed: bool) -> dict:
    """forward + Eq. 11 with every regularizer, mosaic shares on the speech images."""
    model = _model()
    batch = _batch(typed)
    batch["speech_image"], batch["speech_image_foreign"] = reg.make_mosaic(
        batch["speech_image"], torch.Generator().manual_seed(1), 1.0
    )
    feats = model(batch) if ours else old.forward(model, batch)
    loss = mix_separate_loss if ours else old.mix_separate_loss
    total, terms = loss(feats, model.logit_scale(), LossWeights(), generator=torch.Generator().manual_seed(2))
    total.backward()
    return {"terms": terms, "feats": {k: v for k, v in feats.items()}, "grads": _grads(model)}


def _step_path(ours: bool, typed: bool, stage: str) -> dict:
    """training.step: one dummy item padded in, the mosaic drawn per type, the loss's generator."""
    cfg = TrainConfig(model=ModelConfig.preset("tiny", image_size=SIZE), mosaic_prob=0.5, seed=3)
    model = _model().set_stage(stage)
    if ours:
        batch, batch["valid"] = pad_batch(_batch(typed), B + 1, SIZE, N)
        total, terms, items = step_loss(model, model, batch, cfg, stage, 7, CPU)
    else:
        batch, batch["valid"] = old.pad_batch(_batch(typed), B + 1, SIZE, N)
        total, terms, items = old.step_loss(model, batch, cfg, stage, 7)
    assert items == B
    total.backward()
    return {"terms": terms, "grads": _grads(model)}


def _loss_path(ours: bool) -> dict:
    """The objective alone on float64 features: heads swapped, then each type scored by its own head."""
    g = torch.Generator().manual_seed(4)
    feats = {}
    for kind in ("sound", "speech", "mix"):
        feats[f"{kind}_audio"] = torch.randn(5, 6, 2, 1, 8, generator=g, dtype=torch.float64)
        feats[f"{kind}_mask"] = torch.ones(5, 8, dtype=torch.bool)
    for kind in ("sound", "speech"):
        feats[f"{kind}_image"] = torch.randn(5, 6, 2, 3, 3, generator=g, dtype=torch.float64)
    feats["speech_mask"][:, 6:] = False
    feats["sound_splice"] = torch.zeros(5, 8, dtype=torch.bool)
    feats["sound_splice"][:, 2:4] = True
    w = torch.tensor(1.7, dtype=torch.float64)
    loss = mix_separate_loss if ours else old.mix_separate_loss
    out = {}
    for name, weights in (("swapped", LossWeights()), ("own", LossWeights(correspondence_heads="own"))):
        _, out[name] = loss(feats, w, weights, sound_head=1, speech_head=0, generator=torch.Generator().manual_seed(5))
    return out


def _cases(ours: bool, typed: bool) -> dict:
    return {
        "model": _model_path(ours, typed),
        "step_full": _step_path(ours, typed, "full"),
        "step_warmup": _step_path(ours, typed, "warmup"),
        "loss": _loss_path(ours),
    }


def _record(cases: dict) -> dict:
    """What the fixture keeps: terms as exact hex floats, tensors as sha256."""
    out = {}
    for case, parts in cases.items():
        if case == "loss":
            out[case] = {name: {t: float(v).hex() for t, v in terms.items()} for name, terms in parts.items()}
            continue
        out[case] = {"terms": {t: float(v).hex() for t, v in parts["terms"].items()}}
        for group in ("feats", "grads"):
            if group in parts:
                out[case][group] = {name: _digest(x) for name, x in parts[group].items()}
    return out


def _environment() -> dict:
    """The encoders' outputs on a fixed input: code typed streams never touched, so a different
    digest means a different numeric environment (CPU kernels, torch build), not a regression."""
    model = _model().eval()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        a, _ = model.encode_audio(0.1 * torch.randn(2, N, generator=g), torch.ones(2, N, dtype=torch.bool))
        v = model.encode_image(torch.randn(2, 3, SIZE, SIZE, generator=g))
    return {"torch": torch.__version__.split("+")[0], "audio": _digest(a), "image": _digest(v)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def reference() -> dict:
    return _cases(ours=False, typed=False)


def _assert_identical(ours, theirs, where=""):
    if isinstance(theirs, dict):
        assert set(ours) == set(theirs), where
        for key in theirs:
            _assert_identical(ours[key], theirs[key], f"{where}/{key}")
    else:
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), where


@pytest.mark.parametrize("typed", [False, True], ids=["untyped", "typed"])
def test_k2_features_losses_and_gradients_are_those_of_the_two_stream_path(reference, typed):
    ours = _cases(ours=True, typed=typed)
    _assert_identical(ours, reference)
    assert set(ours["model"]["terms"]) >= {"cor/sound", "cor/speech", "dis/sound", "dis/speech", "reg/mixup"}


def test_k2_values_are_those_recorded_before_typed_streams(reference):
    recorded = json.loads(FIXTURE.read_text())
    if _environment() != recorded["environment"]:
        pytest.skip("another numeric environment than the fixture's (the exact comparison above still ran)")
    assert _record(_cases(ours=True, typed=True)) == _record(reference) == recorded["cases"]


if __name__ == "__main__":
    torch.set_num_threads(1)
    if "--write" not in sys.argv:
        sys.exit("pass --write to rewrite the fixture from the frozen two-stream path")
    FIXTURE.parent.mkdir(exist_ok=True)
    data = {"environment": _environment(), "cases": _record(_cases(ours=False, typed=False))}
    FIXTURE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
