"""Weights of one checkpoint onto a freshly built model (model/transfer.py): heads matched by the
audio type they answer, the aligners' channel blocks permuted exactly, and one-line refusals. The
DenseAV mapping itself is checked end to end in tests/training/test_finetune.py."""

import pytest
import torch

from model.config import ModelConfig
from model.denseav import DenseAVConfig
from model.factory import build_model
from model.transfer import TransferError, architecture, architecture_differences, head_mapping, transfer_weights


def _model(seed: int, **fields):
    torch.manual_seed(seed)
    return build_model(ModelConfig.preset("tiny", image_size=32, **fields)).eval()


def test_heads_are_matched_by_type_and_permuted_exactly():
    source = _model(1, head_types=["sound", "speech", "music"])
    target = _model(2, head_types=["music", "sound", "speech"])
    assert architecture_differences(architecture(target), architecture(source)) == []
    assert transfer_weights(source, target) == {0: 2, 1: 0, 2: 1}
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    wave = 0.1 * torch.randn(2, 16_000, generator=torch.Generator().manual_seed(4))
    valid = torch.ones_like(wave, dtype=torch.bool)
    with torch.no_grad():
        v, vs = target.encode_image(images), source.encode_image(images)
        (a, _), (a_s, _) = target.encode_audio(wave, valid), source.encode_audio(wave, valid)
    for head, theirs in ((0, 2), (1, 0), (2, 1)):  # each type's head computes what the checkpoint's did
        torch.testing.assert_close(v[:, :, head], vs[:, :, theirs], rtol=0, atol=1e-6)
        torch.testing.assert_close(a[:, :, head], a_s[:, :, theirs], rtol=0, atol=1e-6)


def test_head_mapping_names_heads_as_the_configs_do_and_refuses_a_type_without_a_head():
    two = ModelConfig.preset("tiny")  # sound 0, speech 1
    assert head_mapping(ModelConfig.preset("tiny", sound_head=1, speech_head=0), two) == {0: 1, 1: 0}
    # DenseAV's configs name only sound_head / speech_head; a one-head model's head answers every type
    assert head_mapping(DenseAVConfig(num_heads=2, sound_head=1, speech_head=0), two) == {0: 1, 1: 0}
    assert head_mapping(DenseAVConfig(), ModelConfig.preset("tiny", head_types=["music"])) == {0: 0}
    with pytest.raises(TransferError) as err:
        head_mapping(two, ModelConfig.preset("tiny", head_types=["music", "speech"]))
    assert str(err.value) == (
        "its heads answer ['sound', 'speech'], this model's ['music', 'speech']: no head of the checkpoint "
        "answers ['music'] (model.head_types must name the checkpoint's types)"
    )


def test_weights_of_another_shape_are_one_line():
    with pytest.raises(TransferError, match=r"^its weights do not fit this model \(.*of another shape"):
        transfer_weights(_model(1), _model(2, code_dim=16))
