"""Shared fixtures of the model tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread while a model test module runs.

    The suite runs two pytest workers on two cores; a second OpenMP thread per worker only spins
    against the other worker and makes small-tensor code (gradcheck, tiny models) many times slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
