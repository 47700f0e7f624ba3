"""The shared layer library: attention backends and cache, masks, rotary, contrastive loss."""

import math

import pytest
import torch
from transformers import PreTrainedConfig
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from hf_mm.layers import (
    Attention,
    LogitScale,
    RotaryEmbedding,
    apply_rotary,
    contrastive_loss,
    self_attention_mask,
)


def _config(impl):
    cfg = PreTrainedConfig()
    cfg._attn_implementation = impl
    return cfg


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_cached_incremental_attention_equals_full_attention(kv_heads):
    torch.manual_seed(0)
    for impl in ("sdpa", "eager"):
        attn = Attention(_config(impl), 32, 4, 8, num_kv_heads=kv_heads, is_causal=True, layer_idx=0).eval()
        rotary = RotaryEmbedding(8)
        x = torch.randn(2, 7, 32)
        angles = rotary(torch.arange(7).expand(2, 7))
        full = attn(x, rotary_angles=angles)
        cache = DynamicCache()
        steps = [attn(x[:, :4], rotary_angles=angles[:, :4], past_key_values=cache)]
        steps += [attn(x[:, i:i + 1], rotary_angles=angles[:, i:i + 1], past_key_values=cache) for i in range(4, 7)]
        assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5), impl
    # a multi-token step after cached keys is still causal (sdpa would crop the keys without an explicit mask)
    cache = DynamicCache()
    attn(x[:, :3], rotary_angles=angles[:, :3], past_key_values=cache)
    chunk = attn(x[:, 3:], rotary_angles=angles[:, 3:], past_key_values=cache)
    assert torch.allclose(chunk, full[:, 3:], atol=1e-5)


def test_cross_attention_projects_context_once_and_reuses_it():
    torch.manual_seed(0)
    attn = Attention(_config("sdpa"), 16, 2, 8, kv_dim=12, is_cross_attention=True, layer_idx=3).eval()
    context = torch.randn(2, 5, 12)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    first = attn(torch.randn(2, 1, 16), context=context, past_key_values=cache)
    assert attn.context_is_cached(cache)
    q = torch.randn(2, 1, 16)
    assert torch.allclose(attn(q, past_key_values=cache), attn(q, context=context), atol=1e-6)
    assert first.shape == (2, 1, 16)
    with pytest.raises(ValueError, match="context"):
        attn(q)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_rows_sharing_a_context_cross_attend_to_it_like_an_expanded_batch(impl):
    """b contexts, b * g query rows (g beams per image): same output as repeating each context g times, masks
    (per row, or broadcast) included; a row count that is not a multiple of the contexts is an error."""
    torch.manual_seed(0)
    attn = Attention(_config(impl), 16, 4, 8, num_kv_heads=2, kv_dim=12, is_cross_attention=True, layer_idx=0).eval()
    b, g, n, m = 2, 3, 4, 5
    context, x = torch.randn(b, m, 12), torch.randn(b * g, n, 16)
    mask = torch.rand(b * g, 1, n, m) > 0.3
    mask[..., 0] = True  # no fully masked row
    for row_mask in (None, mask, mask[:1]):
        expanded = attn(x, row_mask, context=context.repeat_interleave(g, dim=0))
        assert torch.allclose(attn(x, row_mask, context=context), expanded, atol=1e-6)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    attn(x, context=context, past_key_values=cache)  # K/V stored once per context
    assert cache.cross_attention_cache.layers[0].keys.shape[0] == b
    step = torch.randn(b * g, 1, 16)
    assert torch.allclose(attn(step, past_key_values=cache), attn(step, context=context.repeat_interleave(g, 0)),
                          atol=1e-6)
    with pytest.raises(ValueError, match="5 text rows for 2 contexts"):
        attn(torch.randn(5, n, 16), context=context)


def test_beam_reorder_moves_self_attention_rows_and_keeps_per_image_cross_attention():
    from hf_mm.layers.generation import CrossAttentionCacheMixin

    cache = CrossAttentionCacheMixin.new_cache()
    self_kv, cross_kv = torch.randn(4, 1, 3, 2), torch.randn(2, 1, 5, 2)  # 2 images x 2 beams
    cache.self_attention_cache.update(self_kv, self_kv, 0)
    cache.cross_attention_cache.update(cross_kv, cross_kv, 1)
    CrossAttentionCacheMixin._reorder_cache(None, cache, torch.tensor([1, 1, 2, 3]))
    assert torch.equal(cache.self_attention_cache.layers[0].keys, self_kv[[1, 1, 2, 3]])
    assert torch.equal(cache.cross_attention_cache.layers[1].keys, cross_kv)
    with pytest.raises(ValueError, match="moved to another input"):
        CrossAttentionCacheMixin._reorder_cache(None, cache, torch.tensor([2, 1, 2, 3]))


def test_rows_needed_follows_attention_to_any_depth_and_on_rows_zeroes_the_rest():
    from hf_mm.layers import on_rows, row_indices, rows_needed

    needed = torch.tensor([[False, False, True, False]])
    assert rows_needed(needed, None, causal=True).tolist() == [[True, True, True, False]]
    assert rows_needed(needed, None, causal=False).all()
    mask = torch.eye(4, dtype=torch.bool)[None, None].clone()  # each row sees itself, plus a chain 2 -> 1 -> 0
    mask[0, 0, 2, 1] = mask[0, 0, 1, 0] = True
    assert rows_needed(needed, mask, causal=True).tolist() == [[True, True, True, False]]
    assert row_indices(torch.ones(2, 3, dtype=torch.bool)) is None
    x = torch.randn(2, 3, 4)
    rows = row_indices(torch.tensor([[True, False, True], [False, True, False]]))
    out = on_rows(lambda h: 2 * h[:, :2], x, rows)
    assert out.shape == (2, 3, 2) and torch.equal(out[0, 0], 2 * x[0, 0, :2]) and not out[0, 1].any()


def test_masks_combine_padding_and_causality_without_empty_rows():
    real = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]).bool()
    mask = self_attention_mask(real, 4, causal=True)[:, 0]
    assert mask.any(-1).all()  # no row left without a key (sdpa would give NaN)
    assert not mask[0, 2, :2].any() and mask[0, 3, 2:].all()  # real tokens never see left padding
    assert self_attention_mask(torch.ones(2, 4, dtype=torch.bool), 4, causal=True) is None


def test_rotary_layouts_rotate_pairs_or_halves():
    x = torch.randn(1, 1, 3, 8)
    angles_half = RotaryEmbedding(8)(torch.arange(3))[None]
    angles_pair = RotaryEmbedding(8, interleaved=True)(torch.arange(3))[None]
    half = apply_rotary(x, angles_half)
    pairs = apply_rotary(x[..., [0, 4, 1, 5, 2, 6, 3, 7]], angles_pair, interleaved=True)
    assert torch.allclose(half[..., [0, 4, 1, 5, 2, 6, 3, 7]], pairs, atol=1e-6)
    assert torch.allclose(half.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation keeps norms
    partial = apply_rotary(x, angles_half[..., :4])
    assert torch.equal(partial[..., 4:], x[..., 4:])


def test_logit_scale_is_clamped_and_loss_checks_batches():
    scale = LogitScale(1 / 0.07, max_scale=100.0)
    with torch.no_grad():
        scale.logit_scale.fill_(10.0)
    assert math.isclose(scale().item(), 100.0, rel_tol=1e-6)
    img, txt = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1), torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    with pytest.raises(ValueError, match="3 images and 2 texts"):
        contrastive_loss(img, txt, scale())
    loss = contrastive_loss(img, img, torch.tensor(100.0))
    assert loss < 1e-3  # perfectly aligned pairs


def test_sincos_vision_tower_has_patch_positions_only():
    """vit-pytorch SimpleViT's fixed 2-D sin-cos table covers the patches: a class token is refused up front
    (it used to fail with a size mismatch at the first forward)."""
    from hf_mm.layers import VisionTowerConfig, VisionTransformer

    tower = dict(image_size=16, patch_size=8, hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
                 intermediate_size=64, position_embedding_type="sincos2d")
    with pytest.raises(ValueError, match="sincos2d.*class_token=False"):
        VisionTransformer(VisionTowerConfig(**tower))
    out = VisionTransformer(VisionTowerConfig(**tower, class_token=False))(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 4, 32)
