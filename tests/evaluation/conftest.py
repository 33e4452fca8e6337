"""Shared fixtures of the evaluation tests: a real tiny checkpoint and a small retrieval set."""

import pytest
import torch

from tests.support.testsets import make_retrieval_shards


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint of the tiny preset as train.py writes it (model.checkpoint.save_checkpoint)."""
    from model.checkpoint import save_checkpoint
    from model.config import ModelConfig
    from model.factory import build_model

    torch.manual_seed(1)
    return save_checkpoint(build_model(ModelConfig.preset("tiny")), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def places_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("places") / "places"
    make_retrieval_shards(root, 6, "speech")
    return root
