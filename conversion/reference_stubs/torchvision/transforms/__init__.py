"""Stand-in for ``torchvision.transforms``: classes can be subclassed at import time but not instantiated."""

from conversion.reference_imports import standin_class

from . import functional  # noqa: F401
from .functional import InterpolationMode  # noqa: F401

_CLASSES = (
    "CenterCrop", "ColorJitter", "Compose", "GaussianBlur", "Grayscale", "Lambda", "Normalize", "PILToTensor",
    "RandomApply", "RandomCrop", "RandomGrayscale", "RandomHorizontalFlip", "RandomResizedCrop",
    "RandomVerticalFlip", "Resize", "ToPILImage", "ToTensor",
)
for _name in _CLASSES:
    globals()[_name] = standin_class(f"{__name__}.{_name}")
del _name

__all__ = ["InterpolationMode", "functional", *_CLASSES]
