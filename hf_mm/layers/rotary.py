"""Rotary position embeddings (RoFormer), in the two layouts the references use.

`interleaved=False`: halves layout `[x1 | x2] -> [-x2 | x1]` (lucidrains' CoCa / PaLM, GPT-NeoX).
`interleaved=True`: pairs layout `(x0, x1) -> (-x1, x0)` (rotary-embedding-torch: x-clip, DALL-E).
Partial rotary: only the first `rot_dim` features of each head rotate.
"""

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Angles for integer positions. `forward(positions (b, n) or (n,)) -> angles (..., n, rot_dim)`."""

    def __init__(self, rot_dim: int, base: float = 10000.0, interleaved: bool = False):
        super().__init__()
        if rot_dim % 2:
            raise ValueError(f"rotary dimension must be even, got {rot_dim}")
        self.rot_dim, self.base, self.interleaved = rot_dim, base, interleaved
        self.register_buffer("inv_freq", self.compute_inv_freq(rot_dim, base), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute `inv_freq` (not saved in checkpoints; called by `_init_weights` after loading)."""
        self.inv_freq.copy_(self.compute_inv_freq(self.rot_dim, self.base))

    @staticmethod
    def compute_inv_freq(rot_dim: int, base: float = 10000.0) -> torch.Tensor:
        return 1.0 / (base ** (torch.arange(0, rot_dim, 2).float() / rot_dim))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        freqs = positions.float().unsqueeze(-1) * self.inv_freq.to(positions.device)
        if self.interleaved:
            return freqs.repeat_interleave(2, dim=-1)
        return torch.cat((freqs, freqs), dim=-1)


def rotate_half(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, angles: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate the first `angles.shape[-1]` features of `x (b, h, n, d)` by `angles (b or 1, n, rot_dim)`."""
    rot_dim = angles.shape[-1]
    if angles.ndim == 3:
        angles = angles.unsqueeze(1)  # broadcast over heads
    angles = angles.to(torch.float32)
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    rotated = x_rot.float() * angles.cos() + rotate_half(x_rot.float(), interleaved) * angles.sin()
    return torch.cat((rotated.to(x.dtype), x_pass), dim=-1)
