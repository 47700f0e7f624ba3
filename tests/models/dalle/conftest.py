"""DALL-E test setup: the tiny models run dozens of small sequential decode steps, where intra-op threading
only adds synchronisation overhead (10x slower on the shared 2-core CI box), so each test runs single-threaded
(`single_threaded_torch` in tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _dalle_single_threaded(single_threaded_torch):
    yield
