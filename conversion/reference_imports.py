"""Make the reference libraries importable: for the converters' verification (`python -m conversion`), the
benchmarks and the test suite. hf_mm itself never uses this module.

The reference implementations (open_clip, coca_pytorch, x_clip, flamingo_pytorch, dalle_pytorch, open_flamingo,
vit_pytorch, timm) are installed with ``pip install --no-deps -r requirements-references.txt``. At import time they
import packages that are not installed here: torchvision (the registry build is CUDA-only and breaks
``import transformers``, so it must never be installed), taming, youtokentome, pkg_resources (gone from
setuptools >= 81) and omegaconf. ``conversion/reference_stubs`` holds minimal stand-ins for them: they provide the
names the references evaluate on import, and every class or function in them raises
``NotImplementedError("stand-in: ...")`` when used. No conversion or verification uses them.

transformers treats *any* importable ``torchvision`` as installed (``_is_package_available`` is a bare
``find_spec``), and would then route image processors through the torchvision backend and import
``torchvision.transforms.v2`` etc. So ``enable_reference_imports`` first imports transformers (and
``transformers.image_utils``) and pins its availability answers while torchvision is still absent, and only then
puts the stand-ins on ``sys.path``.

Nothing here runs on import: ``import conversion`` (or a source module) leaves ``sys.path`` alone. The CLI calls
``enable_reference_imports`` before it imports a source, the benchmarks and the test suite (tests/conftest.py,
through tests/reference_imports.py) before they import a reference library.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
STUBS_DIR = PACKAGE_DIR / "reference_stubs"
REPO_ROOT = PACKAGE_DIR.parent  # the checkout (requirements-references.txt), or site-packages when installed

# Top-level names provided by conversion/reference_stubs.
STUB_PACKAGES = ("torchvision", "taming", "youtokentome", "pkg_resources", "omegaconf")

# import name -> pip distribution, for the error messages.
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
INSTALL_REFERENCES = "pip install --no-deps -r requirements-references.txt"

_enabled = False


# ---------------------------------------------------------------------------------------------------------
# helpers of the stand-in packages (imported by conversion/reference_stubs/*)

STUB_NOTE = (
    "is an import-only stand-in from conversion/reference_stubs (the real package is not installed here, "
    "see conversion/reference_imports.py)"
)


def _fail(qualname):
    raise NotImplementedError(f"stand-in: {qualname} {STUB_NOTE}")


def standin_class(qualname, base=object):
    """A class that can be subclassed and isinstance-checked at import time, but never instantiated."""
    module, _, name = qualname.rpartition(".")

    def __init__(self, *args, **kwargs):
        _fail(qualname)

    return type(name, (base,), {"__init__": __init__, "__module__": module, "__qualname__": name})


def standin_function(qualname):
    """A function that raises NotImplementedError when called."""
    module, _, name = qualname.rpartition(".")

    def function(*args, **kwargs):
        _fail(qualname)

    function.__name__ = function.__qualname__ = name
    function.__module__ = module
    return function


# ---------------------------------------------------------------------------------------------------------
# switching the stand-ins on


class MissingReferenceError(ImportError):
    """A reference library (or one of its import-time dependencies) is not importable: a CI failure, not a skip."""


def _installed_torchvision() -> bool:
    """A torchvision that is not the stand-in can be imported."""
    return str(STUBS_DIR) not in sys.path and importlib.util.find_spec("torchvision") is not None


def _pin_transformers_without_torchvision() -> None:
    """Fix every "is torchvision installed?" answer to False before a stand-in torchvision becomes importable."""
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
            "transformers now believes torchvision is installed (it found the stand-in in "
            f"{STUBS_DIR}); enable_reference_imports() must run before anything clears transformers' "
            "availability caches"
        )


def enable_reference_imports(allow_installed_torchvision: bool = False) -> None:
    """Make the reference libraries importable; idempotent.

    Imports transformers (and pins its torchvision-availability caches to False), then appends
    conversion/reference_stubs to ``sys.path``. It is appended rather than prepended so that a really installed
    package (e.g. pkg_resources from an older setuptools) always wins over its stand-in.

    A real torchvision must not be installed in this project: RuntimeError, unless `allow_installed_torchvision`
    (the CLI, run by users whose torchvision works): then it is left to win over the stand-in and transformers'
    answers are not pinned, and only the other stand-ins are of use.
    """
    global _enabled
    if _enabled and str(STUBS_DIR) in sys.path:
        return
    installed_torchvision = _installed_torchvision()
    if installed_torchvision and not allow_installed_torchvision:
        raise RuntimeError(
            "a real torchvision is importable in this environment; it must not be installed for hf_mm "
            "(the registry build is CUDA-only and breaks `import transformers`): pip uninstall torchvision"
        )
    if not installed_torchvision:
        _pin_transformers_without_torchvision()
    if str(STUBS_DIR) not in sys.path:
        sys.path.append(str(STUBS_DIR))
    importlib.invalidate_caches()
    if not installed_torchvision:
        _check_transformers_still_without_torchvision()
    _enabled = True


# ---------------------------------------------------------------------------------------------------------
# importing a reference library, and saying what is missing


def _pinned_requirement(dist: str) -> str | None:
    req_file = REPO_ROOT / "requirements-references.txt"
    if not req_file.is_file():
        return None
    for line in req_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.split("==", 1)[0].strip().lower() == dist:
            return line
    return None


def _pip_hint(top_level: str) -> str:
    dist = REFERENCE_DISTRIBUTIONS.get(top_level)
    lines = ["install the pinned reference libraries with:",
             f"    .venv/bin/python -m {INSTALL_REFERENCES}"]
    if dist is not None:
        pinned = _pinned_requirement(dist) or dist
        lines.append(f"  or just this one:  .venv/bin/python -m pip install --no-deps '{pinned}'")
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


def import_error_message(err: ImportError) -> str:
    """One line for the CLI: the module that could not be imported, why, and what to do about it."""
    missing = err.name or ""
    top_level = missing.split(".", 1)[0]
    why = " ".join(str(err).split())
    if top_level in REFERENCE_DISTRIBUTIONS:
        dist = REFERENCE_DISTRIBUTIONS[top_level]
        hint = (f"the reference library {dist} is needed to rebuild and verify the original model: "
                f"pip install --no-deps '{_pinned_requirement(dist) or dist}' (or all of them: {INSTALL_REFERENCES})")
    elif missing:
        hint = ("a reference library imports it, but it is neither installed nor provided by a stand-in in "
                "conversion/reference_stubs")
    else:
        hint = f"check that the pinned reference libraries are installed ({INSTALL_REFERENCES})"
    return f"cannot import {missing!r} ({why}); {hint}" if missing else f"cannot import ({why}); {hint}"
