"""The coca-pytorch and flamingo-pytorch converters map a vit-pytorch `ViT` to the output of `vit.transformer`:
any other image encoder, or an `Extractor` hooked elsewhere, is refused with a ValueError naming the option
(it used to convert silently into a model with other image tokens, or fail with an unrelated message)."""

import pytest
import torch

from reference_imports import require_reference

VIT = dict(image_size=16, patch_size=8, num_classes=0, dim=32, depth=1, heads=2, dim_head=16, mlp_dim=64)


def _vit_pytorch():
    return require_reference("vit_pytorch"), require_reference("vit_pytorch.extractor").Extractor


def _coca(img_encoder):
    from conversion.coca_pytorch import convert

    ref = require_reference("coca_pytorch").CoCa(
        dim=32, num_tokens=50, unimodal_depth=1, multimodal_depth=1, dim_head=8, heads=2, num_img_queries=4,
        image_dim=VIT["dim"], img_encoder=img_encoder)
    return ref, convert


def _flamingo(img_encoder):
    from conversion.flamingo_pytorch import convert

    ref = require_reference("flamingo_pytorch").FlamingoPaLM(
        num_tokens=60, dim=32, depth=2, heads=2, dim_head=16, media_token_id=3, cross_attn_every=1,
        perceiver_num_latents=4, perceiver_depth=1, img_encoder=img_encoder)
    return ref, convert


def _encoder(case):
    vit_pytorch, Extractor = _vit_pytorch()
    vit = vit_pytorch.ViT(**VIT)
    if case == "layer_name":
        return Extractor(vit, return_embeddings_only=True, layer_name="to_patch_embedding")
    if case == "layer":
        return Extractor(vit, return_embeddings_only=True, layer=vit.transformer.layers[0][1])
    if case == "layer_save_input":
        return Extractor(vit, return_embeddings_only=True, layer_save_input=True)
    if case == "bare_vit":
        return vit
    assert case == "simple_vit"
    simple_vit = require_reference("vit_pytorch.simple_vit").SimpleViT(**dict(VIT, num_classes=1))
    return Extractor(simple_vit, return_embeddings_only=True)


CASES = {
    "layer_name": r"Extractor\(layer_name='to_patch_embedding'\) is not supported",
    "layer": r"Extractor\(layer=FeedForward\) is not supported",
    "layer_save_input": r"Extractor\(layer_save_input=True\) is not supported",
    "bare_vit": r"only a vit_pytorch Extractor is supported .* got vit_pytorch\.vit\.ViT",
    "simple_vit": r"only vit_pytorch\.ViT is supported .* got vit_pytorch\.simple_vit\.SimpleViT",
}


@pytest.mark.parametrize("family", [_coca, _flamingo], ids=["coca_pytorch", "flamingo_pytorch"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_unsupported_image_encoders_are_refused(family, case):
    torch.manual_seed(0)
    ref, convert = family(_encoder(case))
    with pytest.raises(ValueError, match=CASES[case]):
        convert(ref.eval())


@pytest.mark.parametrize("detach", [True, False])
def test_supported_extractor_options_pass_the_check(detach):
    """`detach` and `return_embeddings_only` do not change the image tokens."""
    from conversion.vit_pytorch import check_vit_extractor

    vit_pytorch, Extractor = _vit_pytorch()
    check_vit_extractor(Extractor(vit_pytorch.ViT(**VIT), detach=detach))
    check_vit_extractor(Extractor(vit_pytorch.ViT(**VIT), return_embeddings_only=True, detach=detach))


@pytest.mark.parametrize("family", [_coca, _flamingo], ids=["coca_pytorch", "flamingo_pytorch"])
def test_extractor_hooked_on_the_transformer_itself_converts(family):
    """`layer=vit.transformer` hooks the very module the default `layer_name` does: same image tokens."""
    vit_pytorch, Extractor = _vit_pytorch()
    torch.manual_seed(0)
    vit = vit_pytorch.ViT(**VIT)
    ref, convert = family(Extractor(vit, return_embeddings_only=True, layer=vit.transformer))
    model = convert(ref.eval())
    torch.manual_seed(1)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = ref.img_encoder(images)
        tokens = model.vision_model(images) if hasattr(model, "vision_model") else model.model.vision_model(images)
    assert (tokens - expected).abs().max() <= 1e-5
