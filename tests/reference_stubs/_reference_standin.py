"""Shared helpers for the test-only stand-in packages in this directory.

Nothing here is real: every class or function made by these helpers raises
``NotImplementedError("stand-in: ...")`` as soon as it is instantiated or called.
They exist only so that the reference libraries can be *imported* inside the test suite.
"""

STUB_NOTE = (
    "is a test-only stand-in from tests/reference_stubs (the real package is not installed here, "
    "see tests/reference_imports.py)"
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
    module, _, name = qualname.rpartition(".")

    def function(*args, **kwargs):
        _fail(qualname)

    function.__name__ = function.__qualname__ = name
    function.__module__ = module
    return function
