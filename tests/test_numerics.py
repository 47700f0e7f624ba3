"""Numerics: clamped contrastive logit scale, finite bf16 / fp16 forward and generate for every family, fp32
LayerNorm everywhere, and no NaN from fully-masked attention rows (text before the first image, padded rows)."""

import math

import pytest
import torch
from torch import nn

import tiny_models as tm
from reference_imports import require_reference
from hf_mm.layers import LayerNorm, self_attention_mask

CONTRASTIVE = ("coca", "coca_lucidrains", "x_clip")


def finite(family: str, tensor: torch.Tensor) -> bool:
    """DALL-E masks the logits of the wrong modality with -finfo.max on purpose; everything else must be finite."""
    tensor = tensor.float()
    if family == "dalle":
        tensor = tensor[tensor > torch.finfo(torch.float16).min]
    return bool(torch.isfinite(tensor).all())


# ---- logit scale --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", CONTRASTIVE)
def test_logit_scale_is_clamped_to_100_by_default(family):
    model = tm.build(family)
    assert model.config.logit_scale_max == 100.0
    with torch.no_grad():
        model.logit_scale.logit_scale.fill_(math.log(1e6))  # what unclamped fp16 training can drift to
        out = model(**tm.inputs(family, model))
    assert model.logit_scale().item() == pytest.approx(100.0)
    cosine = out.image_embeds @ out.text_embeds.t()
    torch.testing.assert_close(out.logits_per_image, 100.0 * cosine)


@pytest.mark.parametrize("family", CONTRASTIVE)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_huge_learned_scale_keeps_half_precision_logits_and_loss_finite(family, dtype):
    model = tm.build(family).to(dtype).train()
    with torch.no_grad():
        model.logit_scale.logit_scale.fill_(math.log(1e6))  # 1e6 * cosine overflows fp16 (max 65504) unclamped
    out = model(**tm.inputs(family, model), return_loss=True)
    assert torch.isfinite(out.logits_per_image.float()).all() and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad.float()).all() for p in model.parameters() if p.grad is not None)


def test_x_clip_clamp_is_configurable_and_none_reproduces_the_unclamped_reference():
    clamped, unclamped = tm.build("x_clip"), tm.build("x_clip", logit_scale_max=None)
    batch = tm.inputs("x_clip", clamped)
    with torch.no_grad():
        for model in (clamped, unclamped):
            model.logit_scale.logit_scale.fill_(math.log(500.0))
        big, small = unclamped(**batch), clamped(**batch)
    torch.testing.assert_close(big.logits_per_image, small.logits_per_image * 5.0)
    # at x-clip's own initial scale (e) the clamp changes nothing: parity with the reference is untouched
    fresh, free = tm.build("x_clip"), tm.build("x_clip", logit_scale_max=None)
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits_per_image, free(**batch).logits_per_image)


@pytest.mark.parametrize("scale, expected_max", [(math.e, 100.0), (300.0, None)])
def test_x_clip_converter_keeps_a_checkpoint_scale_above_the_clamp(scale, expected_max):
    """x-clip never clamps: a checkpoint whose scale grew past 100 converts unclamped, and stays at parity."""
    x_clip = require_reference("x_clip")
    from conversion.x_clip import convert, parity_report

    torch.manual_seed(0)
    reference = x_clip.CLIP(dim_text=32, dim_image=32, dim_latent=16, num_text_tokens=50, text_enc_depth=1,
                            text_seq_len=8, text_heads=2, text_dim_head=16, visual_enc_depth=1, visual_heads=2,
                            visual_dim_head=16, visual_image_size=16, visual_patch_size=8, visual_patch_dropout=0.0)
    with torch.no_grad():
        reference.temperature.fill_(math.log(scale))
    model = convert(reference)
    assert model.config.logit_scale_max == expected_max
    report = parity_report(reference, model)
    assert max(report.values()) <= 1e-4, report


# ---- half precision -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", tm.FAMILIES)
def test_half_precision_forward_is_finite(family, dtype):
    model = tm.build(family).to(dtype)
    torch.manual_seed(0)
    with torch.no_grad():
        out = tm.main_output(family, model(**tm.inputs(family, model)))
    assert out.dtype == dtype
    assert finite(family, out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", tm.GENERATIVE)
def test_half_precision_generate_is_finite_and_valid(family, dtype):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny sequential decode steps: threads only add overhead
    try:
        model = tm.build(family).to(dtype)
        kwargs = {} if family == "dalle" else dict(max_new_tokens=3)
        torch.manual_seed(0)
        out = model.generate(**tm.generate_inputs(family, model), do_sample=True, output_scores=True,
                             return_dict_in_generate=True, **kwargs)
    finally:
        torch.set_num_threads(previous)
    vocab = model.config.vae_config.num_tokens if family == "dalle" else model.config.text_config.vocab_size
    assert out.sequences.min() >= 0 and out.sequences.max() < vocab
    assert all(not torch.isnan(step.float()).any() for step in out.scores)


# ---- LayerNorm in fp32 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", tm.FAMILIES)
def test_every_layer_norm_computes_in_fp32(family):
    """The references use LayerNormFp32 (open_clip) / fp32 norms; hf_mm's LayerNorm upcasts half inputs."""
    model = tm.build(family)
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, LayerNorm))]
    assert all(isinstance(m, LayerNorm) and m.fp32 for m in norms)
    assert len(norms) > 0 or family == "dalle_vae"


def test_layer_norm_in_bf16_equals_fp32_norm_rounded_once():
    norm = LayerNorm(64)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    norm = norm.bfloat16()
    x = (torch.randn(4, 64) * 300 + 1000).bfloat16()  # large mean: a bf16 variance would lose every digit
    expected = nn.functional.layer_norm(x.float(), (64,), norm.weight.float(), norm.bias.float(), 1e-5).bfloat16()
    assert torch.equal(norm(x), expected)


# ---- fully-masked attention rows ----------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flamingo_text_before_the_first_image_and_padded_rows_are_finite(attn, dtype):
    model = tm.build("flamingo")
    model.set_attn_implementation(attn)
    model = model.to(dtype)
    ids = torch.full((3, 8), 5)
    ids[:, 5] = 3  # positions 0..4 precede the image: their cross-attention row is fully masked
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, :] = 0  # a row that is padding only: its self-attention rows are fully masked
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(3, 1, 3, 16, 16)).logits
    assert torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("family", ["coca", "coca_lucidrains", "x_clip"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_all_padding_rows_give_finite_outputs(family, attn):
    model = tm.build(family)
    model.set_attn_implementation(attn)
    batch = tm.inputs(family, model)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["attention_mask"][0] = 0
    with torch.no_grad():
        out = model(**batch)
    for name in ("logits", "logits_per_image", "text_embeds", "image_embeds"):
        value = getattr(out, name, None)
        assert value is None or torch.isfinite(value).all(), name


def test_self_attention_mask_never_leaves_a_row_without_a_key():
    key_mask = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    pad_rows = torch.zeros_like(key_mask)  # padded queries asked to see nothing
    for causal in (True, False):
        for pad in (None, pad_rows):
            mask = self_attention_mask(key_mask, 4, causal=causal, pad_query_key_mask=pad)
            assert mask.any(dim=-1).all()
            q = torch.randn(3, 2, 4, 8)
            out = nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
            assert torch.isfinite(out).all()
