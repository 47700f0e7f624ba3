"""Multi-head / multi-query attention through transformers' attention interface (sdpa by default).

Einstein notation: `b` batch, `h` query heads, `k` key/value heads, `n` query length, `m` key length,
`d` head features. Masks are boolean `(b, 1, n, m)` with True = may attend, or None (pure causal /
full attention handled by the kernel).
"""

import torch
from torch import nn
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .linear import Linear
from .norms import LayerNorm
from .packing import on_rows
from .rotary import apply_rotary


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Reference attention: `softmax(q k^T * scaling + mask) v`. Returns `(b, n, h, d)` and the weights."""
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    elif kwargs.get("is_causal", False) and query.shape[2] > 1:
        n, m = query.shape[2], key.shape[2]
        causal = torch.ones(n, m, dtype=torch.bool, device=query.device).tril(m - n)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def self_attention_cache(past_key_values: Cache | None) -> Cache | None:
    if isinstance(past_key_values, EncoderDecoderCache):
        return past_key_values.self_attention_cache
    return past_key_values


class Attention(nn.Module):
    """Self- or cross-attention with separate q/k/v/o projections.

    - `num_kv_heads=1` is multi-query attention (PaLM / lucidrains); `num_kv_heads=num_heads` is MHA.
    - `kv_dim` sets the width of the key/value source (cross-attention to image tokens of another width).
    - Rotary angles (from `RotaryEmbedding`) rotate q and k, and v too when `rotate_values`.
    - `out_norm=True` adds a LayerNorm after `o_proj` (x-clip's `to_out = Linear + LayerNorm`).
    - Self-attention appends its K/V to the `Cache` at `layer_idx`; cross-attention stores its K/V once in
      the cross-attention half of an `EncoderDecoderCache` and reuses them on later steps.
    - Cross-attention from `b * g` rows to `b` contexts: each group of `g` consecutive rows (the beams of one
      image) attends to its context, as if the context were repeated `g` times.

    - `rows` (flat indices over `b * n`, from `packing.row_indices`): the projections run on those rows only
      (the others are 0); for rows that no kept row attends to (padding a loss ignores).

    `forward(hidden_states (b, n, dim), attention_mask, context (b, m, kv_dim) | None, ...) -> (b, n, dim)`
    """

    def __init__(
        self,
        config,
        dim: int,
        num_heads: int,
        head_dim: int,
        num_kv_heads: int | None = None,
        kv_dim: int | None = None,
        is_cross_attention: bool = False,
        is_causal: bool = False,
        qkv_bias: bool = True,
        out_bias: bool = True,
        layer_idx: int | None = None,
        rotary_interleaved: bool = False,
        rotate_values: bool = False,
        dropout: float = 0.0,
        out_norm: bool = False,
        norm_eps: float = 1e-5,
        norm_bias: bool = True,
    ):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.config = config  # read at call time: `config._attn_implementation` picks the kernel
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.num_key_value_groups = num_heads // num_kv_heads
        self.scaling = head_dim**-0.5
        self.is_cross_attention = is_cross_attention
        self.is_causal = is_causal and not is_cross_attention
        self.layer_idx = layer_idx
        self.rotary_interleaved, self.rotate_values = rotary_interleaved, rotate_values
        self.dropout = dropout
        kv_dim = kv_dim or dim
        self.q_proj = Linear(dim, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = Linear(kv_dim, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = Linear(kv_dim, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = Linear(num_heads * head_dim, dim, bias=out_bias)
        # x-clip's `to_out = Linear + LayerNorm`: a norm on the attention output, before the residual
        self.o_norm = LayerNorm(dim, eps=norm_eps, bias=norm_bias) if out_norm else None

    def _split_heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        return x.view(*x.shape[:-1], heads, self.head_dim).transpose(1, 2)  # b n (h d) -> b h n d

    def project_key_value(self, context: torch.Tensor, rows: torch.Tensor | None = None):
        """`(b, m, kv_dim) -> k, v (b, k, m, d)` (only at `rows`, flat indices over `b * m`; zeros elsewhere)."""
        return (self._split_heads(on_rows(self.k_proj, context, rows), self.num_kv_heads),
                self._split_heads(on_rows(self.v_proj, context, rows), self.num_kv_heads))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        rotary_angles: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        rows: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        q = self._split_heads(on_rows(self.q_proj, hidden_states, rows), self.num_heads)
        if self.is_cross_attention:
            k, v = self._cross_key_value(context, past_key_values)
        else:
            k, v = self.project_key_value(hidden_states) if rows is None else self.project_key_value(hidden_states, rows)
            if rotary_angles is not None:
                q = apply_rotary(q, rotary_angles, self.rotary_interleaved)
                k = apply_rotary(k, rotary_angles, self.rotary_interleaved)
                if self.rotate_values:
                    v = apply_rotary(v, rotary_angles, self.rotary_interleaved)
            cache = self_attention_cache(past_key_values)
            if cache is not None:
                k, v = cache.update(k, v, self.layer_idx)
        groups = self._query_rows_per_context(q, k)
        if groups > 1:  # g query rows share one context (the beams of one image): fold them into the query length
            q = q.unflatten(0, (-1, groups)).transpose(1, 2).flatten(2, 3)  # (b g) h n d -> b h (g n) d
            if attention_mask is not None:
                attention_mask = attention_mask.expand(q.shape[0] * groups, *attention_mask.shape[1:])
                attention_mask = attention_mask.unflatten(0, (-1, groups)).transpose(1, 2).flatten(2, 3)
        n, m = q.shape[2], k.shape[2]
        if attention_mask is None and self.is_causal and n > 1 and m > n:
            # the sdpa integration would crop keys to n here (correct only for an empty static cache)
            attention_mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril(m - n)[None, None]
        attn_fn = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, _ = attn_fn(
            self, q, k, v, attention_mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
            is_causal=self.is_causal and attention_mask is None,
        )
        if groups > 1:
            out = out.unflatten(1, (groups, -1)).flatten(0, 1)  # b (g n) h d -> (b g) n h d
        out = on_rows(self.o_proj, out.reshape(*hidden_states.shape[:-1], -1), rows)
        return self.o_norm(out) if self.o_norm is not None else out

    def _query_rows_per_context(self, q: torch.Tensor, k: torch.Tensor) -> int:
        """How many consecutive query rows share one context row: 1, or `g` when cross-attending `b` contexts
        from `b * g` rows (generate() keeps one image per input for all its beams / returned sequences). Each
        query row attends independently, so folding the `g` rows into the query length is exact."""
        if not self.is_cross_attention or q.shape[0] == k.shape[0]:
            return 1
        if k.shape[0] == 0 or q.shape[0] % k.shape[0]:
            raise ValueError(f"cross-attention got {q.shape[0]} text rows for {k.shape[0]} contexts (image "
                             "tokens); expected one context per row or per group of consecutive rows")
        return q.shape[0] // k.shape[0]

    def context_is_cached(self, past_key_values) -> bool:
        """True when this cross-attention's K/V are already stored in `past_key_values`."""
        return (
            self.is_cross_attention
            and isinstance(past_key_values, EncoderDecoderCache)
            and past_key_values.is_updated.get(self.layer_idx, False)
        )

    def _cross_key_value(self, context, past_key_values):
        cache = past_key_values if isinstance(past_key_values, EncoderDecoderCache) else None
        if self.context_is_cached(cache):
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            return layer.keys, layer.values
        if context is None:
            raise ValueError("cross-attention needs `context` (image tokens) on the first step")
        k, v = self.project_key_value(context)
        if cache is not None:
            k, v = cache.cross_attention_cache.update(k, v, self.layer_idx)
            cache.is_updated[self.layer_idx] = True
        return k, v
