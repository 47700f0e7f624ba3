"""DALL-E test setup: the tiny models run dozens of small sequential decode steps, where intra-op threading
only adds synchronisation overhead (10x slower on the shared 2-core CI box), so each test runs single-threaded
and restores the suite's thread count afterwards."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_threaded_torch():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
