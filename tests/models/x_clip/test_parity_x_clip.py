"""Parity with lucidrains' x-clip 0.14.4 through conversion/x_clip.py (fp32, max abs diff <= 1e-4)."""

import pytest
import torch
from reference_imports import require_reference
from torch import nn

from conversion.x_clip import convert

BASE = dict(dim_text=64, dim_image=64, dim_latent=32, num_text_tokens=100, text_enc_depth=1, text_seq_len=16,
            text_heads=2, text_dim_head=16, visual_enc_depth=1, visual_heads=2, visual_dim_head=16,
            visual_image_size=32, visual_patch_size=8, visual_patch_dropout=0.0)
CONFIGS = {
    "default": {},
    "deeper_heads4": dict(text_enc_depth=2, visual_enc_depth=2, text_heads=4, visual_heads=4, dim_latent=48),
    "filip": dict(use_all_token_embeds=True),
    "filip_dcl": dict(use_all_token_embeds=True, decoupled_contrastive_learning=True),
    "dcl_cloob_simreg": dict(decoupled_contrastive_learning=True, extra_latent_projection=True, sim_reg_loss_weight=0.1),
    "filip_cloob_downsample": dict(use_all_token_embeds=True, extra_latent_projection=True, downsample_image_embeds=True),
    "rotary_mlm": dict(text_rotary_pos_emb=True, use_mlm=True, text_ssl_loss_weight=0.2),
    "mlm_random_tokens": dict(use_mlm=True, mlm_random_token_prob=0.1),
    "simsiam": dict(visual_ssl_type="simsiam"),
    "simclr": dict(visual_ssl_type="simclr"),
    "encode_without_mask": dict(text_encode_without_mask=True),
    "mlm_encode_without_mask": dict(use_mlm=True, text_encode_without_mask=True),  # the MLM pass still masks pads
    "mlm_own_pad_id": dict(use_mlm=True, mlm_pad_token_id=3),
    "mlm_text_pad_id": dict(use_mlm=True, text_pad_id=5),  # the MLM pad id stays x-clip's default 0
}


@pytest.fixture(scope="module")
def x_clip():
    module = require_reference("x_clip")
    import x_clip.visual_ssl as visual_ssl

    # x-clip builds torchvision augmentations even when unused; the stand-in cannot, so SSL runs un-augmented
    visual_ssl.get_default_aug = lambda *args, **kwargs: nn.Identity()
    return module


def inputs(seed=0, batch=3, pad=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (batch, 16), generator=g)
    ids[0, 10:] = pad
    ids[2, 5:] = pad
    return ids, torch.randn(batch, 3, 32, 32, generator=g)


def build(x_clip, options):
    torch.manual_seed(0)
    reference = x_clip.CLIP(**{**BASE, **options})
    if "visual_ssl_type" in options:  # x-clip's SSL heads with a small hidden size (its CLIP hard-codes 4096)
        from x_clip.visual_ssl import SimCLR, SimSiam

        if options["visual_ssl_type"] == "simsiam":
            reference.visual_ssl = SimSiam(reference.visual_transformer, image_size=32, hidden_layer=-1,
                                           projection_hidden_size=64)
        else:
            reference.visual_ssl = SimCLR(reference.visual_transformer, image_size=32, hidden_layer=-1)
            wrapper = reference.visual_ssl.net
            wrapper.projection_hidden_size, wrapper.projector = 64, None  # rebuilt lazily on the next call
            reference.visual_ssl(torch.randn(2, 3, 32, 32))
        reference.use_visual_ssl, reference.image_ssl_loss_weight = True, 0.05
    model = convert(reference)
    if model.visual_ssl is not None:
        model.visual_ssl.augment1 = model.visual_ssl.augment2 = nn.Identity()
    return reference, model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity(x_clip, name):
    reference, model = build(x_clip, CONFIGS[name])
    ids, pixels = inputs(pad=reference.text_pad_id)
    reference.eval(), model.eval()
    with torch.no_grad():
        ref_text, ref_image = reference(ids, pixels, return_latents=True)[:2]
        ref_enc_text, ref_enc_image = reference(ids, pixels, return_encodings=True)
        ref_sim = reference(ids, pixels)
        out = model(ids, pixels)
    diffs = {
        "text_embeds": (ref_text - out.text_embeds).abs().max().item(),
        "image_embeds": (ref_image - out.image_embeds).abs().max().item(),
        "text_states": (ref_enc_text - out.text_model_output).abs().max().item(),
        "image_states": (ref_enc_image - out.vision_model_output).abs().max().item(),
    }
    if ref_sim.ndim == 1:  # per-pair similarity = diagonal of our full matrix
        diffs["similarity"] = (ref_sim - out.logits_per_text.diagonal()).abs().max().item()
    reference.train(), model.train()
    torch.manual_seed(1)
    ref_loss = reference(ids, pixels, return_loss=True)
    torch.manual_seed(1)
    out = model(ids, pixels, return_loss=True)
    loss = out.loss
    diffs["loss"] = (ref_loss - loss).abs().item()
    if reference.use_mlm:  # the MLM term alone, with the same masks (x-clip draws them first)
        with torch.no_grad():
            torch.manual_seed(1)
            ref_mlm = reference.mlm(ids, mask=ids != reference.text_pad_id)
        diffs["mlm_loss"] = (ref_mlm - out.mlm_loss).abs().item()
    ref_loss.backward(), loss.backward()
    diffs["temperature_grad"] = (reference.temperature.grad - model.logit_scale.logit_scale.grad).abs().item()
    print(name, diffs)
    assert max(diffs.values()) <= 1e-4, diffs


def test_parity_multiview(x_clip):
    reference, model = build(x_clip, dict(decoupled_contrastive_learning=True))
    ids, pixels = inputs()
    aug_ids, aug_pixels = inputs(seed=1)
    ref = reference(ids, pixels, return_loss=True, aug_text=aug_ids, aug_image=(aug_pixels, pixels.flip(-1)))
    out = model(ids, pixels, return_loss=True, aug_input_ids=aug_ids, aug_pixel_values=(aug_pixels, pixels.flip(-1)))
    assert out.multiview_loss is not None
    assert (ref - out.loss).abs().item() <= 1e-4


def test_parity_freeze_and_extra_direction(x_clip):
    reference, model = build(x_clip, dict(extra_latent_projection=True))
    ids, pixels = inputs()
    ref = reference(ids, pixels, return_loss=True, freeze_image_encoder=True, freeze_text_encoder=False)
    out = model(ids, pixels, return_loss=True, freeze_image_encoder=True)
    assert (ref - out.loss).abs().item() <= 1e-4
    reference.eval(), model.eval()
    with torch.no_grad():
        ref_i2t = reference(ids, pixels, text_to_image=False)
        out = model(ids, pixels)
    assert (ref_i2t - out.logits_per_image.diagonal()).abs().max().item() <= 1e-4
