"""Unit-test fixtures shared across modules: the fake OpenAI-compatible judge server, one intra-op thread."""

import pytest
import torch

from tests.unit.test_judge import fake_judge  # noqa: F401


@pytest.fixture
def one_thread():
    """The tiny model runs fastest on one intra-op thread; two threads spin against each other when the
    shared machine's other core is busy (100x slower). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
