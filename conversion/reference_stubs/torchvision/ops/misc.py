"""Stand-in for ``torchvision.ops.misc``: only the FrozenBatchNorm2d name that timm / open_clip import."""

import torch

from conversion.reference_imports import standin_class

FrozenBatchNorm2d = standin_class(f"{__name__}.FrozenBatchNorm2d", base=torch.nn.Module)

__all__ = ["FrozenBatchNorm2d"]
