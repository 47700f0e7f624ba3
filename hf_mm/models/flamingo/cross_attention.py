"""Gated cross-attention from text to media latents, and the text-to-media masks it uses.

Einstein notation: `b` batch, `n` text positions, `t` media, `l` latents per medium, `d` features.
`media_time (b, n)` is the 1-based index of the medium a position belongs to (the count of media tokens up to
and including it); 0 means no media token precedes it.
"""

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from hf_mm.layers import MLP, Attention, LayerNorm, on_rows


def media_time_from_ids(input_ids: torch.Tensor, media_token_id: int) -> torch.Tensor:
    """`(b, n)` token ids -> `(b, n)` index of the latest media token at each position (0 = none yet)."""
    return (input_ids == media_token_id).long().cumsum(dim=-1)


def text_to_media_mask(
    media_time: torch.Tensor, num_media: int, num_latents: int, only_immediate: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which latents each text position may attend to.

    Returns `mask (b, 1, n, t * l)` (True = attend) and `attends (b, n, 1)` (False where a position may attend
    to no latent at all: text before the first medium, or past the last given medium in immediate mode).
    Rows that attend nothing are opened fully in `mask` (an all-masked row would give NaN under sdpa) and
    their output is zeroed through `attends`.
    """
    key_time = torch.arange(1, num_media + 1, device=media_time.device).repeat_interleave(num_latents)
    query_time = media_time[:, :, None]
    allowed = query_time == key_time if only_immediate else (query_time >= key_time) & (query_time > 0)
    attends = allowed.any(dim=-1, keepdim=True)
    return (allowed | ~attends)[:, None], attends


class GatedCrossAttentionBlock(GradientCheckpointingLayer):
    """`x + tanh(attn_gate) * xattn(norm1(x), latents)`, then `x + tanh(ff_gate) * mlp(norm2(x))`.

    Both gates start at 0, so an untrained block is the identity. Cross-attention K/V over the latents are
    stored once in the cross-attention half of an `EncoderDecoderCache` at `layer_idx`.

    `forward(hidden_states (b, n, d), media_latents (b, t * l, d_media) | None, media_mask (b, 1, n, t * l),
    attends (b, n, 1)) -> (b, n, d)`; queries come from the text width `d`, K/V from the perceiver width.
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        d, eps = config.text_config.hidden_size, config.cross_attn_layer_norm_eps
        self.norm1 = LayerNorm(d, eps=eps)
        self.attn = Attention(
            config, d, config.cross_attn_num_heads, config.cross_attn_head_dim,
            kv_dim=config.perceiver_config.hidden_size, is_cross_attention=True, qkv_bias=False, out_bias=False,
            layer_idx=layer_idx,
        )
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.norm2 = LayerNorm(d, eps=eps)
        self.mlp = MLP(d, config.cross_attn_intermediate_size, act="gelu", bias=False)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(
        self,
        hidden_states: torch.Tensor,
        media_latents: torch.Tensor | None,
        media_mask: torch.Tensor,
        attends: torch.Tensor,
        past_key_values=None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attn_out = self.attn(self.norm1(hidden_states), media_mask, context=media_latents,
                             past_key_values=past_key_values, rows=rows)
        hidden_states = hidden_states + self.attn_gate.tanh() * attn_out * attends.to(attn_out.dtype)
        return hidden_states + self.ff_gate.tanh() * on_rows(self.mlp, self.norm2(hidden_states), rows)
