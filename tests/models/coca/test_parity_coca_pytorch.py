"""CocaModel converted from lucidrains' coca-pytorch matches it (fp32, max abs diff <= 1e-4)."""

import pytest
import torch
import torch.nn.functional as F
from conversion.coca_pytorch import convert

from .references import COCA_PYTORCH_CONFIGS, coca_pytorch_reference

TOL = 1e-4


def _inputs(ref, vit_kwargs, model, seed=3):
    g = torch.Generator().manual_seed(seed)
    pad = model.config.text_config.pad_token_id
    text = torch.randint(2, model.config.text_config.vocab_size, (3, 11), generator=g)
    text[1, -4:] = pad
    if vit_kwargs is None:
        tokens = torch.randn(3, 7, model.config.image_embed_dim, generator=g)
        return text, dict(image_tokens=tokens), dict(image_embeds=tokens)
    s = vit_kwargs["image_size"]
    images = torch.randn(3, 3, s, s, generator=g)
    return text, dict(images=images), dict(pixel_values=images)


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no_mask"])
@pytest.mark.parametrize("name", sorted(COCA_PYTORCH_CONFIGS))
def test_logits_embeddings_and_loss_match(name, masked):
    """Right-padded text, with `attention_mask` or without one (padding is then `input_ids != pad_token_id`, as
    coca-pytorch derives it)."""
    ref, vit_kwargs = coca_pytorch_reference(name)
    model = convert(ref)
    text, ref_images, our_images = _inputs(ref, vit_kwargs, model)
    pad = model.config.text_config.pad_token_id
    mask = (text != pad).long() if masked else None
    with torch.no_grad():
        ref_logits = ref(text.clone(), **ref_images)
        ref_text, ref_image = ref(text.clone(), **ref_images, return_embeddings=True)
        ours = model(input_ids=text, attention_mask=mask, **our_images)
    assert (ref_logits - ours.logits).abs().max() <= TOL
    ref_text_latents = F.normalize(ref.text_to_latents.to_latents(ref_text), dim=-1)
    ref_image_latents = F.normalize(ref.img_to_latents.to_latents(ref_image), dim=-1)
    assert (ref_text_latents - ours.text_embeds).abs().max() <= TOL
    assert (ref_image_latents - ours.image_embeds).abs().max() <= TOL

    # the loss: coca-pytorch's labels are given per position (no shift), hf_mm shifts like a causal LM
    labels = torch.cat((text[:, 1:], torch.full_like(text[:, :1], pad)), dim=1)
    with torch.no_grad():
        ref_loss = ref(text.clone(), **ref_images, labels=labels, return_loss=True)
        ours = model(input_ids=text, attention_mask=mask, labels=text, **our_images)
    assert abs(ref_loss - ours.loss) <= TOL


def test_tied_embeddings_survive_conversion():
    ref, _ = coca_pytorch_reference("encoder_free")
    model = convert(ref)
    assert model.lm_head.weight.data_ptr() == model.text_model.embed_tokens.weight.data_ptr()
    assert model.config.logit_scale_max is None
