"""`Linear`: `nn.Linear` with a faster kernel for the few-row calls of cached decoding on CPU."""

import torch
from torch import nn

from .native import skinny_linear

# Up to this many rows (tokens x sequences) a CPU fp32 inference call takes the skinny path.
SKINNY_MAX_ROWS = 32


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, state dict and init) that routes skinny CPU fp32 inference calls to a
    kernel that streams the weight once at close to memory bandwidth.

    A cached decoding step feeds one token per sequence, so `x` has only `batch x beams` rows and the step is
    bound by reading the weights. On a 2-core EPYC MKL's sgemm reads them at 6-10 GB/s there; the native kernel
    (`hf_mm/layers/kernels/skinny_linear.c`, built on first use) at 16-23 GB/s on one thread (a plain `sum()`
    streams 19) and 24-33 GB/s on two: CoCa's one-token forward 67 -> 42-47 ms (README, Benchmarks). Without a
    C compiler the call runs as `weight @ x.T` (MKL is ~1.5x faster with the weight as left operand when
    `out >= in`) or `F.linear`. Calls that need autograd, or under tracing / compile, always use `F.linear`.
    Shapes: `(..., in) -> (..., out)`.
    """

    def _skinny(self, x: torch.Tensor) -> bool:
        w, b = self.weight, self.bias
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad))
        return (
            x.device.type == "cpu" and x.dtype == w.dtype == torch.float32 and (b is None or b.dtype == torch.float32)
            and 0 < x.numel() <= SKINNY_MAX_ROWS * self.in_features and x.dim() >= 2 and not needs_grad
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._skinny(x):
            return super().forward(x)
        rows = x.reshape(-1, self.in_features)
        if self.in_features % 16 == 0 and self.weight.is_contiguous():
            out = skinny_linear(rows.contiguous(), self.weight, None if self.bias is None else self.bias.contiguous())
            if out is not None:
                return out.view(*x.shape[:-1], self.out_features)
        if self.out_features < self.in_features or rows.shape[0] > 8:
            return super().forward(x)
        if self.bias is None:
            out = torch.mm(self.weight, rows.t())
        else:
            out = torch.addmm(self.bias[:, None], self.weight, rows.t())
        return out.t().contiguous().view(*x.shape[:-1], self.out_features)
