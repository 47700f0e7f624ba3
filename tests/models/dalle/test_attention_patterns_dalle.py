"""Properties of the attention-pattern masks (the `sparse` pattern has no runnable reference: DeepSpeed)."""

import torch

from hf_mm.models.dalle import DalleConfig
from hf_mm.models.dalle.attention_patterns import attention_pattern_mask, sparse_block_layout

from .helpers import VAE_CONFIGS


def _config(**fields):
    return DalleConfig(vae_config=VAE_CONFIGS["2layers-resblock"], num_text_tokens=20, text_seq_len=7,
                       num_hidden_layers=5, attn_types=["full", "axial_row", "axial_col", "conv_like", "sparse"],
                       sparse_block_size=8, sparse_local_blocks=2, sparse_num_random_blocks=1, **fields)


def test_every_pattern_is_causal_and_image_sees_all_text():
    config = _config()
    positions = torch.arange(config.max_seq_len + 1)
    for layer_type in ("full", "axial_row", "axial_col", "conv_like", "sparse"):
        mask = attention_pattern_mask(layer_type, positions, positions, config)
        assert not torch.triu(mask, diagonal=1).any(), layer_type
        assert mask.diagonal().all(), layer_type
        if layer_type != "sparse":
            assert mask[config.text_len :, : config.text_len].all(), layer_type


def test_conv_like_window_with_dilation():
    config = _config(conv_kernel_size=3, conv_dilation=2)
    fmap, text_len = config.image_fmap_size, config.text_len
    query = text_len + 5 * fmap + 4  # row 5, column 4
    mask = attention_pattern_mask("conv_like", torch.tensor([query]), torch.arange(query + 1), config)[0]
    seen = {(int(i) // fmap, int(i) % fmap) for i in torch.nonzero(mask[text_len:]).flatten()}
    assert seen == {(r, c) for r in (1, 3, 5) for c in (0, 2, 4)}


def test_axial_rows_and_columns():
    config = _config()
    fmap, text_len = config.image_fmap_size, config.text_len
    query = text_len + 3 * fmap + 2
    keys = torch.arange(query + 1)
    row = attention_pattern_mask("axial_row", torch.tensor([query]), keys, config)[0, text_len:]
    col = attention_pattern_mask("axial_col", torch.tensor([query]), keys, config)[0, text_len:]
    assert {int(i) for i in torch.nonzero(row).flatten()} == {3 * fmap, 3 * fmap + 1, 3 * fmap + 2}
    assert {int(i) for i in torch.nonzero(col).flatten()} == {2, fmap + 2, 2 * fmap + 2, 3 * fmap + 2}


def test_sparse_layout_is_local_global_and_seeded():
    config = _config()
    layout = sparse_block_layout(config)
    assert layout[:, 0].all()  # the text block is global
    assert layout[3, 2] and layout[2, 3]  # same local window of 2 blocks
    assert torch.equal(layout, sparse_block_layout(config))
    assert not layout.all()
    other = sparse_block_layout(_config(sparse_seed=1))
    assert not torch.equal(layout.tril(), other.tril()) or layout.shape[0] < 4
