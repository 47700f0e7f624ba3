"""Import-only stand-in for ``pkg_resources`` (removed from setuptools >= 81), imported by dalle_pytorch.

Only ``get_distribution(name).version`` (answered from ``importlib.metadata``) and a no-op
``fixup_namespace_packages`` are provided.
When a real pkg_resources is installed it wins: conversion/reference_stubs is appended to sys.path.
"""

import importlib.metadata


class DistributionNotFound(Exception):
    pass


class _Distribution:
    def __init__(self, project_name, version):
        self.project_name = project_name
        self.version = version

    def __repr__(self):
        return f"{self.project_name} {self.version} (pkg_resources stand-in)"


def get_distribution(dist):
    try:
        return _Distribution(dist, importlib.metadata.version(dist))
    except importlib.metadata.PackageNotFoundError as exc:
        raise DistributionNotFound(dist) from exc


def fixup_namespace_packages(path_item, parent=None):
    """No-op. pytest's ``monkeypatch.syspath_prepend`` calls this whenever pkg_resources is in sys.modules."""


__all__ = ["DistributionNotFound", "fixup_namespace_packages", "get_distribution"]
