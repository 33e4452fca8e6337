"""Shared fixtures of the evaluation tests: the generated test sets (the tiny checkpoint is tests/conftest.py's)."""

import pytest

from tests.support.testsets import make_ade_tree, make_is3_tree, make_retrieval_shards


@pytest.fixture(scope="session")
def places_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("places") / "places"
    make_retrieval_shards(root, 6, "speech")
    return root


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """Every table's test set, generated (read only): is3/, ADE20KSpeechPrompted/,
    ADE20KSoundPrompted/, places/ and audioset/ under one folder."""
    root = tmp_path_factory.mktemp("eval_data")
    make_is3_tree(root / "is3")
    make_ade_tree(root, "speech")
    make_ade_tree(root, "sound")
    make_retrieval_shards(root / "places", 6, "speech")
    make_retrieval_shards(root / "audioset", 6, "sound")
    return root
