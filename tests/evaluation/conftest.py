"""Shared fixtures of the evaluation tests: small retrieval sets (the tiny checkpoint is tests/conftest.py's)."""

import pytest

from tests.support.testsets import make_retrieval_shards


@pytest.fixture(scope="session")
def places_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("places") / "places"
    make_retrieval_shards(root, 6, "speech")
    return root
