"""Stand-in for ``torchvision.io`` (named by transformers' image / video utils and datasets' formatters)."""

from enum import Enum

from conversion.reference_imports import standin_class, standin_function


class ImageReadMode(Enum):
    UNCHANGED = 0
    GRAY = 1
    GRAY_ALPHA = 2
    RGB = 3
    RGB_ALPHA = 4


VideoReader = standin_class(f"{__name__}.VideoReader")
decode_image = standin_function(f"{__name__}.decode_image")
read_image = standin_function(f"{__name__}.read_image")
read_video = standin_function(f"{__name__}.read_video")

__all__ = ["ImageReadMode", "VideoReader", "decode_image", "read_image", "read_video"]
