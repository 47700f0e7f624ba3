"""Stand-in for ``taming.models.vqgan``: VQModel / GumbelVQ exist but cannot be instantiated."""

import torch

from conversion.reference_imports import standin_class

VQModel = standin_class(f"{__name__}.VQModel", base=torch.nn.Module)
GumbelVQ = standin_class(f"{__name__}.GumbelVQ", base=VQModel)

__all__ = ["VQModel", "GumbelVQ"]
