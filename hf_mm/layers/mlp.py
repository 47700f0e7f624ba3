"""Feed-forward layers: plain MLP (GELU / QuickGELU / ...) and gated MLP (SwiGLU / GEGLU)."""

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear
from .norms import LayerNorm


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "silu": F.silu,
    "relu": F.relu,
}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """`fc2(act(fc1(x)))`. Shapes: `(..., dim) -> (..., dim)`."""

    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.act = get_activation(act)
        self.fc1 = Linear(dim, hidden_dim, bias=bias)
        self.fc2 = Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class GatedMLP(nn.Module):
    """Gated feed-forward: `fc1` makes `[value | gate]`, `fc2(value * act(gate))`.

    SwiGLU with `act="silu"`, GEGLU with `act="gelu"`. `inner_norm` adds a LayerNorm on the hidden
    features (x-clip). Shapes: `(..., dim) -> (..., dim)`.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        act: str = "silu",
        bias: bool = False,
        inner_norm: bool = False,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.act = get_activation(act)
        self.fc1 = Linear(dim, 2 * hidden_dim, bias=bias)
        self.inner_norm = LayerNorm(hidden_dim, eps=norm_eps, bias=False) if inner_norm else None
        self.dropout = nn.Dropout(dropout)
        self.fc2 = Linear(hidden_dim, dim, bias=bias)

    def gate(self, projected: torch.Tensor) -> torch.Tensor:
        """`(..., 2 * hidden) -> (..., hidden)`: used by parallel blocks that fuse `fc1` with attention."""
        value, gate = projected.chunk(2, dim=-1)
        return value * self.act(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.gate(self.fc1(x))
        if self.inner_norm is not None:
            hidden = self.inner_norm(hidden)
        return self.fc2(self.dropout(hidden))
