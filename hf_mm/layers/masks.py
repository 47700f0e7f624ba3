"""Boolean attention masks `(b, 1, n, m)`, True = may attend.

Queries are the last `n` of the `m` keys (self-attention, possibly after cached keys).
"""

import torch


def causal_mask(query_len: int, key_len: int, device=None) -> torch.Tensor:
    """`(n, m)`: query i (at key position m - n + i) sees keys 0..m - n + i."""
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(key_len - query_len)


def self_attention_mask(
    key_mask: torch.Tensor | None,
    query_len: int,
    causal: bool,
    pad_query_key_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Combine padding (`key_mask (b, m)`, True = real token) with causality.

    Rows whose own token is padding use `pad_query_key_mask (b, m)` instead, which lets a model
    reproduce exactly what a reference computes at padded positions without changing real rows.
    A row left with no key would give NaN under sdpa, so such a row attends to itself.
    Returns None when nothing needs masking beyond what the kernel's `is_causal` does.
    """
    if key_mask is None or (bool(key_mask.all()) and pad_query_key_mask is None):
        return None
    key_mask = key_mask.bool()
    b, m = key_mask.shape
    mask = key_mask[:, None, :].expand(b, query_len, m)
    if pad_query_key_mask is not None:
        query_is_pad = ~key_mask[:, m - query_len:, None]
        mask = torch.where(query_is_pad, pad_query_key_mask.bool()[:, None, :], mask)
    if causal:
        mask = mask & causal_mask(query_len, m, key_mask.device)
    empty = ~mask.any(dim=-1, keepdim=True)
    if bool(empty.any()):
        own_key = torch.eye(query_len, m, dtype=torch.bool, device=key_mask.device).roll(m - query_len, dims=1)
        mask = mask | (empty & own_key)
    return mask[:, None]
