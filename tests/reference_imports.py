"""Make the reference libraries importable inside the test suite (test-only; hf_mm never uses this).

The reference implementations (open_clip, coca_pytorch, x_clip, flamingo_pytorch, dalle_pytorch,
open_flamingo, vit_pytorch, timm) are installed with ``--no-deps`` and import packages that cannot be
installed here at module import time: torchvision (CUDA-only registry build that breaks
``import transformers``), taming, youtokentome, pkg_resources (gone from setuptools >= 81) and omegaconf.
``tests/reference_stubs`` holds minimal stand-ins for them; see that directory.

transformers treats *any* importable ``torchvision`` as installed (``_is_package_available`` is a bare
``find_spec``), and would then route image processors through the torchvision backend and import
``torchvision.transforms.v2`` etc. So ``enable_reference_imports`` first imports transformers and pins its
availability answers while torchvision is still absent, and only then puts the stand-ins on ``sys.path``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
STUBS_DIR = TESTS_DIR / "reference_stubs"
REPO_ROOT = TESTS_DIR.parent

# Top-level names provided by tests/reference_stubs (besides the private helper module).
STUB_PACKAGES = ("torchvision", "taming", "youtokentome", "pkg_resources", "omegaconf")

# import name -> pip distribution, for the error message of require_reference.
REFERENCE_DISTRIBUTIONS = {
    "open_clip": "open-clip-torch",
    "coca_pytorch": "coca-pytorch",
    "x_clip": "x-clip",
    "flamingo_pytorch": "flamingo-pytorch",
    "dalle_pytorch": "dalle-pytorch",
    "open_flamingo": "open-flamingo",
    "vit_pytorch": "vit-pytorch",
    "timm": "timm",
    "rotary_embedding_torch": "rotary-embedding-torch",
    "einops_exts": "einops-exts",
    "axial_positional_embedding": "axial-positional-embedding",
    "beartype": "beartype",
    "ftfy": "ftfy",
}

_enabled = False


class MissingReferenceError(ImportError):
    """A reference library (or one of its import-time dependencies) is not importable: a CI failure, not a skip."""


def _pin_transformers_without_torchvision() -> None:
    """Fix every "is torchvision installed?" answer to False before a stand-in torchvision becomes importable."""
    if importlib.util.find_spec("torchvision") is not None and str(STUBS_DIR) not in sys.path:
        raise RuntimeError(
            "a real torchvision is importable in this environment; it must not be installed for hf_mm "
            "(the registry build is CUDA-only and breaks `import transformers`): pip uninstall torchvision"
        )
    import transformers  # noqa: F401  (its __init__ already asks is_torchvision_available())
    from transformers.utils import import_utils

    # lru_cached probes: evaluate them now, while torchvision cannot be found, so the cached answer is False.
    for probe in ("is_torchvision_available", "is_torchvision_v2_available", "is_timm_available"):
        fn = getattr(import_utils, probe, None)
        if fn is not None:
            fn()
    # Light modules that decide at import time whether to `from torchvision... import ...`. The heavier ones
    # (image_processing_utils / _backends, video_processing_utils: ~2 s more) read the same cached probes, so
    # they are left to load lazily; _check_transformers_still_without_torchvision() guards the caches.
    for name in ("transformers.image_utils", "transformers.video_utils"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:  # module renamed or removed in another transformers release
            if exc.name != name:
                raise
    # datasets caches `find_spec("torchvision") is not None` at import time as well.
    try:
        importlib.import_module("datasets.config")
    except ModuleNotFoundError:
        pass


def _check_transformers_still_without_torchvision() -> None:
    from transformers.utils import import_utils

    if import_utils.is_torchvision_available():
        raise RuntimeError(
            "transformers now believes torchvision is installed (it found the test stand-in in "
            f"{STUBS_DIR}); enable_reference_imports() must run before anything clears transformers' "
            "availability caches"
        )


def enable_reference_imports() -> None:
    """Make the reference libraries importable; idempotent.

    Imports transformers (and pins its torchvision-availability caches to False), then appends
    tests/reference_stubs to ``sys.path``. It is appended rather than prepended so that a really installed
    package (e.g. pkg_resources from an older setuptools) always wins over its stand-in.
    """
    global _enabled
    if _enabled and str(STUBS_DIR) in sys.path:
        return
    _pin_transformers_without_torchvision()
    if str(STUBS_DIR) not in sys.path:
        sys.path.append(str(STUBS_DIR))
    importlib.invalidate_caches()
    _check_transformers_still_without_torchvision()
    _enabled = True


def _pip_hint(top_level: str) -> str:
    dist = REFERENCE_DISTRIBUTIONS.get(top_level)
    pinned = None
    req_file = REPO_ROOT / "requirements-references.txt"
    if dist is not None and req_file.is_file():
        for line in req_file.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line.split("==", 1)[0].strip().lower() == dist:
                pinned = line
                break
    lines = ["install the pinned reference libraries with:",
             "    .venv/bin/python -m pip install --no-deps -r requirements-references.txt"]
    if dist is not None:
        lines.append(f"  or just this one:  .venv/bin/python -m pip install --no-deps '{pinned or dist}'")
    return "\n".join(lines)


def require_reference(name: str):
    """Import and return reference module ``name`` (dotted names allowed), with the stand-ins enabled.

    Raises MissingReferenceError (never a pytest skip: a missing reference library is a CI failure).
    """
    enable_reference_imports()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        top_level = name.split(".", 1)[0]
        missing = (exc.name or "").split(".", 1)[0]
        if missing in ("", top_level) or missing in REFERENCE_DISTRIBUTIONS:
            raise MissingReferenceError(
                f"reference library {missing or top_level!r} is not installed (needed for {name!r}); "
                + _pip_hint(missing or top_level)
            ) from exc
        raise MissingReferenceError(
            f"reference library {name!r} is installed but imports {exc.name!r}, which is neither installed "
            f"nor provided by a stand-in in {STUBS_DIR.relative_to(REPO_ROOT)}. Install it if it is a small "
            "pure-python package (add it to the `test` extra in pyproject.toml, then "
            "`.venv/bin/python -m pip install -e '.[test]'`), otherwise add a minimal stand-in there."
        ) from exc
