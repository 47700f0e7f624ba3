"""Stand-in for ``torchvision.ops``."""

from . import misc  # noqa: F401
