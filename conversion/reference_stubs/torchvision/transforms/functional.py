"""Stand-in for ``torchvision.transforms.functional``: the InterpolationMode enum is real, functions raise."""

from enum import Enum

from conversion.reference_imports import standin_function


class InterpolationMode(Enum):
    """Same members and values as torchvision's (evaluated at import time by timm and open_clip)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


_FUNCTIONS = (
    "center_crop", "crop", "get_dimensions", "get_image_size", "hflip", "normalize", "pad",
    "pil_to_tensor", "resize", "resized_crop", "to_pil_image", "to_tensor", "vflip",
)
for _name in _FUNCTIONS:
    globals()[_name] = standin_function(f"{__name__}.{_name}")
del _name

__all__ = ["InterpolationMode", *_FUNCTIONS]
