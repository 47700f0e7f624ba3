"""Residual transformer blocks built from `Attention` and the MLPs.

- `TransformerBlock`: pre-norm, serial (`x + attn(norm1(x))`, then `x + mlp(norm2(x))`) as in CLIP /
  open_clip / ViT, or parallel (`x + attn(norm1(x)) + mlp(norm1(x))`) as in PaLM / GPT-J. The attention is
  self-attention (optionally causal, rotary) or cross-attention to a context (`norm_context` on it).
  Optional layer scale on each branch. `attn_out_norm` / `mlp_inner_norm` add x-clip's LayerNorms after
  the attention output projection and inside the (gated) MLP. `post_norm` adds the sandwich norm (a
  LayerNorm on each branch output, before its layer scale).
- `AttentionalPooler`: learned queries cross-attend to tokens (CoCa's image pooling).
"""

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import Attention
from .mlp import MLP, GatedMLP
from .norms import LayerNorm
from .packing import on_rows


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT). `(..., dim) -> (..., dim)`."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.init_value = float(init_value)
        self.gamma = nn.Parameter(torch.full((dim,), self.init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def make_mlp(dim, hidden_dim, act, gated, bias, norm_eps=1e-5, inner_norm=False):
    if gated:
        return GatedMLP(dim, hidden_dim, act=act, bias=bias, norm_eps=norm_eps, inner_norm=inner_norm)
    if inner_norm:
        raise ValueError("mlp_inner_norm is only supported with gated_mlp=True")
    return MLP(dim, hidden_dim, act=act, bias=bias)


class TransformerBlock(GradientCheckpointingLayer):
    """One residual attention + feed-forward block. `forward(x (b, n, dim), ...) -> (b, n, dim)`."""

    def __init__(
        self,
        config,
        dim: int,
        num_heads: int,
        head_dim: int,
        mlp_dim: int,
        *,
        num_kv_heads: int | None = None,
        cross_attention: bool = False,
        context_dim: int | None = None,
        norm_context: bool = True,
        causal: bool = False,
        parallel: bool = False,
        norm_bias: bool = True,
        norm_eps: float = 1e-5,
        qkv_bias: bool = True,
        out_bias: bool = True,
        mlp_bias: bool = True,
        mlp_act: str = "gelu",
        gated_mlp: bool = False,
        layer_scale_init: float | None = None,
        layer_idx: int | None = None,
        rotary_interleaved: bool = False,
        rotate_values: bool = False,
        attn_out_norm: bool = False,
        mlp_inner_norm: bool = False,
        post_norm: bool = False,
    ):
        super().__init__()
        self.parallel = parallel
        self.norm1 = LayerNorm(dim, eps=norm_eps, bias=norm_bias)
        self.norm_context = (
            LayerNorm(context_dim or dim, eps=norm_eps, bias=norm_bias) if cross_attention and norm_context else None
        )
        self.attn = Attention(
            config, dim, num_heads, head_dim,
            num_kv_heads=num_kv_heads, kv_dim=context_dim, is_cross_attention=cross_attention, is_causal=causal,
            qkv_bias=qkv_bias, out_bias=out_bias, layer_idx=layer_idx,
            rotary_interleaved=rotary_interleaved, rotate_values=rotate_values,
            out_norm=attn_out_norm, norm_eps=norm_eps, norm_bias=norm_bias,
        )
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.norm2 = None if parallel else LayerNorm(dim, eps=norm_eps, bias=norm_bias)
        self.mlp = make_mlp(dim, mlp_dim, mlp_act, gated_mlp, mlp_bias, norm_eps, inner_norm=mlp_inner_norm)
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        # sandwich norm (CogView, DALL-E): `x + ls(post_norm(branch(norm(x))))`
        self.post_norm1 = LayerNorm(dim, eps=norm_eps, bias=norm_bias) if post_norm else None
        self.post_norm2 = LayerNorm(dim, eps=norm_eps, bias=norm_bias) if post_norm else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        rotary_angles: torch.Tensor | None = None,
        past_key_values=None,
        rows: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """`rows`: compute the projections and MLP only there (see `Attention`); other rows get partial updates."""
        normed = self.norm1(hidden_states)
        if self.attn.context_is_cached(past_key_values):
            context = None  # K/V of the context were projected on the first step
        elif context is not None and self.norm_context is not None:
            context = self.norm_context(context)
        attn_out = self.attn(normed, attention_mask, context=context, rotary_angles=rotary_angles,
                             past_key_values=past_key_values, rows=rows)
        if self.parallel:
            return hidden_states + self.ls1(self.post_norm_branch(attn_out, 1)) + self.ls2(
                self.post_norm_branch(on_rows(self.mlp, normed, rows), 2))
        hidden_states = hidden_states + self.ls1(self.post_norm_branch(attn_out, 1))
        return hidden_states + self.ls2(self.post_norm_branch(on_rows(self.mlp, self.norm2(hidden_states), rows), 2))

    def post_norm_branch(self, branch_out: torch.Tensor, branch: int) -> torch.Tensor:
        """Sandwich norm of branch 1 (attention) or 2 (MLP) output; identity without `post_norm`."""
        norm = self.post_norm1 if branch == 1 else self.post_norm2
        return branch_out if norm is None else norm(branch_out)


class AttentionalPooler(nn.Module):
    """`num_queries` learned queries attend to `tokens (b, m, context_dim)` -> `(b, num_queries, dim)`.

    No residual: the output is the attention result itself (open_clip's `AttentionalPooler`,
    lucidrains' `img_attn_pool`).
    """

    def __init__(
        self,
        config,
        dim: int,
        context_dim: int,
        num_queries: int,
        num_heads: int,
        head_dim: int,
        num_kv_heads: int | None = None,
        norm_bias: bool = True,
        norm_eps: float = 1e-5,
        bias: bool = True,
    ):
        super().__init__()
        self.query = nn.Parameter(torch.randn(num_queries, dim))
        self.norm_query = LayerNorm(dim, eps=norm_eps, bias=norm_bias)
        self.norm_context = LayerNorm(context_dim, eps=norm_eps, bias=norm_bias)
        self.attn = Attention(
            config, dim, num_heads, head_dim, num_kv_heads=num_kv_heads, kv_dim=context_dim,
            is_cross_attention=True, qkv_bias=bias, out_bias=bias,
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        query = self.norm_query(self.query).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.attn(query, context=self.norm_context(tokens))
