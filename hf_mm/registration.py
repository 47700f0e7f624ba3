"""Registers each family with transformers' Auto classes (one list, one place)."""

import importlib

# Each family module exposes `register()`; add a family here when it lands.
FAMILIES: list[str] = ["hf_mm.models.coca", "hf_mm.models.flamingo", "hf_mm.models.dalle", "hf_mm.models.x_clip"]


def register_all():
    for name in FAMILIES:
        importlib.import_module(name).register()
