"""Fixtures shared by every test package: one set of tiny shards from the real shard builder, and
one real tiny checkpoint."""

from typing import NamedTuple

import pytest

from tests.support import shardgen


class TinyShards(NamedTuple):
    root: object  # pathlib.Path holding speech/ and sound/ shard directories (read only: copy to damage)
    speech_keys: list[str]  # in input order: shard i holds keys [6i, 6i + 6)


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> TinyShards:
    root = tmp_path_factory.mktemp("tiny-shards")
    speech_keys = shardgen.build(root / "speech", "speech", 46, 6)  # 8 shards of unequal size (last has 4)
    shardgen.build(root / "sound", "sound", 20, 5, seed0=1000)
    return TinyShards(root, speech_keys)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint of the tiny preset as train.py writes it (model.checkpoint.save_checkpoint)."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.config import ModelConfig
    from model.factory import build_model

    torch.manual_seed(1)
    return save_checkpoint(build_model(ModelConfig.preset("tiny")), tmp_path_factory.mktemp("ckpt") / "tiny")


# The files whose tests take minutes go first: under `pytest -n 2 --dist loadfile` a worker takes
# whole files in collection order, so a long file collected last runs alone at the end while the
# other worker idles (the demo's four minutes were the suite's last four).
LONG_FIRST = ("tests/scripts/test_demo.py", "tests/model/test_levers.py", "tests/training/test_train.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.nodeid.split("::", 1)[0]
        return LONG_FIRST.index(path) if path in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable: every file keeps its own order, and the others theirs
