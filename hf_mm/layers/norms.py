"""Normalisation layers shared by every family."""

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias, computed in float32 and cast back (as open_clip's `LayerNormFp32`).

    `bias=False` is the PaLM / lucidrains variant (gain only). Shapes: `(..., dim) -> (..., dim)`.
    """

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True, fp32: bool = True):
        super().__init__()
        self.eps, self.fp32 = eps, fp32
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self.fp32 and dtype in (torch.float16, torch.bfloat16):
            weight = self.weight.float()
            bias = self.bias.float() if self.bias is not None else None
            return F.layer_norm(x.float(), x.shape[-1:], weight, bias, self.eps).to(dtype)
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}, fp32={self.fp32}"
