"""Suite-wide test setup.

- Makes the reference libraries importable (import-only stand-ins for torchvision & co., shipped with the
  conversion CLI in conversion/reference_imports.py; tests/reference_imports.py re-exports them). This runs at collection time, before any test module is imported, so that
  transformers pins "torchvision is not installed" before the stand-in becomes importable.
- Caps torch's intra-op threads for the 2-core CI box.
- Seeds nothing: tests that need determinism seed (or use a torch.Generator) themselves.
"""

import os
import sys

import pytest
import torch

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:  # also works under --import-mode=importlib
    sys.path.insert(0, _TESTS_DIR)

from reference_imports import enable_reference_imports  # noqa: E402

enable_reference_imports()

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def single_threaded_torch():
    """One intra-op thread for the test, then the suite's count again: for many tiny sequential steps (intra-op
    threading only adds synchronisation) and for tests that start their own Python threads (oversubscription)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
