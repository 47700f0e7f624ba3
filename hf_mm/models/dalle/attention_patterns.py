"""DALL-E's attention patterns as boolean masks over the shared (sdpa/eager) attention.

The sequence is `[bos, text (text_seq_len) | image grid (f*f, raster order)]`; `text_len = text_seq_len + 1`.
Every pattern is causal; image queries always see the whole text. Because a mask is a pure function of the
query and key *positions*, the same function serves the full forward and each cached step (query rows
`past..past+n`, key columns `0..past+n`), so cached and uncached computations agree for every pattern.

- `full`: causal.
- `axial_row` / `axial_col`: an image query sees earlier image keys of its own row / column.
- `conv_like`: an image query sees the image keys of the causal `kernel x kernel` window (dilated) that ends at
  its own cell: rows `r - (k-1)d .. r`, columns `c - (k-1)d .. c`, step `d` (dalle-pytorch's unfold pattern).
- `sparse`: block-sparse (DeepSpeed `VariableSparsityConfig` semantics without DeepSpeed): keys in the query's
  local window of `sparse_local_blocks` blocks, the global blocks covering the text, and
  `sparse_num_random_blocks` random earlier blocks per query block (fixed by `sparse_seed`).
"""

import math

import torch

from .configuration_dalle import DalleConfig


def _grid(positions: torch.Tensor, text_len: int, fmap: int):
    """`positions (n,) -> is_image (n,), row (n,), col (n,)` (row/col meaningless for text)."""
    index = positions - text_len
    return index >= 0, index.div(fmap, rounding_mode="floor"), index.remainder(fmap)


def sparse_block_layout(config: DalleConfig, device=None) -> torch.Tensor:
    """`(nb, nb)` bool block layout for the `sparse` pattern (before causality)."""
    block = config.sparse_block_size
    num_blocks = math.ceil((config.max_seq_len + 1) / block)
    rows = torch.arange(num_blocks)
    layout = (rows[:, None] // config.sparse_local_blocks) == (rows[None, :] // config.sparse_local_blocks)
    layout[:, : math.ceil(config.text_seq_len / block)] = True
    num_random = config.sparse_num_random_blocks
    if num_random is None:
        num_random = config.max_seq_len // block // 4
    generator = torch.Generator().manual_seed(config.sparse_seed)
    for row in range(num_blocks):
        picks = torch.randperm(row + 1, generator=generator)[:num_random]
        layout[row, picks] = True
    return layout.to(device)


def attention_pattern_mask(
    layer_type: str, query_positions: torch.Tensor, key_positions: torch.Tensor, config: DalleConfig
) -> torch.Tensor:
    """`(n,)` query and `(m,)` key positions -> `(n, m)` bool mask, True = may attend."""
    q, k = query_positions[:, None], key_positions[None, :]
    causal = k <= q
    if layer_type == "full":
        return causal
    if layer_type == "sparse":
        layout = sparse_block_layout(config, q.device)
        block = config.sparse_block_size
        return causal & layout[q // block, k // block]
    text_len, fmap = config.text_len, config.image_fmap_size
    q_image, q_row, q_col = (t[:, None] for t in _grid(query_positions, text_len, fmap))
    k_image, k_row, k_col = (t[None, :] for t in _grid(key_positions, text_len, fmap))
    if layer_type == "axial_row":
        image_to_image = (q_row == k_row) & (k_col <= q_col)
    elif layer_type == "axial_col":
        image_to_image = (q_col == k_col) & (k_row <= q_row)
    elif layer_type == "conv_like":
        dilation, span = config.conv_dilation, (config.conv_kernel_size - 1) * config.conv_dilation
        d_row, d_col = q_row - k_row, q_col - k_col
        image_to_image = (
            (d_row >= 0) & (d_row <= span) & (d_row % dilation == 0)
            & (d_col >= 0) & (d_col <= span) & (d_col % dilation == 0)
        )
    else:
        raise ValueError(f"layer_type must be one of full, axial_row, axial_col, conv_like, sparse; got {layer_type!r}")
    text_query = ~q_image & causal
    image_query = q_image & (~k_image | (k_image & image_to_image))
    return text_query | image_query
