"""The test suite's handle on the reference libraries: a re-export of conversion/reference_imports.py.

The stand-ins for torchvision & co. and the function that switches them on live in one shipped place,
conversion/reference_imports.py and conversion/reference_stubs/, used by the converter CLI (to verify a
conversion), the benchmarks and the tests alike; see that module. hf_mm itself never uses them.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

# tests/conversion (no __init__.py) must not stand in for the real `conversion` package: with tests/ ahead of the
# checkout on sys.path (pytest run from another folder), `import conversion` would find that namespace folder.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from conversion.reference_imports import (  # noqa: E402
    REFERENCE_DISTRIBUTIONS,
    STUB_PACKAGES,
    STUBS_DIR,
    MissingReferenceError,
    enable_reference_imports,
    require_reference,
)

__all__ = [
    "REFERENCE_DISTRIBUTIONS", "REPO_ROOT", "STUB_PACKAGES", "STUBS_DIR", "TESTS_DIR", "MissingReferenceError",
    "enable_reference_imports", "require_reference",
]
