"""Parity with dalle-pytorch 1.6.6: dVAE indices / reconstructions / loss, DALLE logits and loss for every
attention type and option (max abs diff <= 1e-4, fp32)."""

import pytest
import torch

from conversion.common import UnmappedTensorsError, max_abs_diff

from .helpers import (
    DALLE_CONFIGS, VAE_CONFIGS, build_reference_dalle, build_reference_vae, converted_pair, image_codes, pixels,
    text_ids,
)

TOL = 1e-4


@pytest.mark.parametrize("name", sorted(VAE_CONFIGS))
def test_vae_parity(name):
    from conversion.dalle_pytorch import convert_discrete_vae, vae_config_from_kwargs

    ref = build_reference_vae(name)
    model = convert_discrete_vae(ref.state_dict(), vae_config_from_kwargs(VAE_CONFIGS[name]))
    images = pixels(model.config, batch=3)
    assert torch.equal(model.get_codebook_indices(images), ref.get_codebook_indices(images))
    codes = torch.randint(0, model.config.num_tokens, (2, model.config.fmap_size**2))
    assert max_abs_diff(model.decode(codes), ref.decode(codes)) <= TOL
    with torch.no_grad():
        torch.manual_seed(3)
        ref_loss, ref_recons = ref(images, return_loss=True, return_recons=True, temp=0.7)
        torch.manual_seed(3)
        out = model(images, return_loss=True, temperature=0.7)
    assert max_abs_diff(out.reconstructions, ref_recons) <= TOL
    assert abs(out.loss.item() - ref_loss.item()) <= TOL


def test_vae_without_normalization_matches_reference_norm_free_path():
    """dalle-pytorch crashes on `normalization=None`; its `norm()` supports None, which we set after init."""
    from conversion.dalle_pytorch import convert_discrete_vae, vae_config_from_kwargs

    ref = build_reference_vae("3layers-plain")
    ref.normalization = None
    config = vae_config_from_kwargs(dict(VAE_CONFIGS["3layers-plain"], normalization=None))
    model = convert_discrete_vae(ref.state_dict(), config)
    images = pixels(config)
    assert torch.equal(model.get_codebook_indices(images), ref.get_codebook_indices(images))
    assert max_abs_diff(model(images).logits, ref(images, return_logits=True)) <= TOL


@pytest.mark.parametrize("name", sorted(DALLE_CONFIGS))
def test_dalle_logits_and_loss_parity(name):
    ref, model = converted_pair(name)
    config = model.config
    text, codes = text_ids(config), image_codes(config)
    with torch.no_grad():
        ref_logits = ref(text.clone(), codes)
        ref_loss = ref(text.clone(), codes, return_loss=True)
        ref_text_only = ref(text.clone())
        out = model(text, image_ids=codes, return_loss=True, use_cache=False)
        text_only = model(text, use_cache=False).logits
    assert out.logits.shape == (2, config.max_seq_len, config.vocab_size)
    assert max_abs_diff(out.logits, ref_logits) <= TOL
    assert abs(out.loss.item() - ref_loss.item()) <= TOL
    assert max_abs_diff(text_only, ref_text_only) <= TOL


def test_dalle_parity_from_raw_images():
    ref, model = converted_pair("axial-conv-mix")
    images = pixels(model.config.vae_config)
    text = text_ids(model.config)
    with torch.no_grad():
        expected = ref(text.clone(), images, return_loss=True)
        out = model(text, pixel_values=images, return_loss=True, use_cache=False)
    assert abs(out.loss.item() - expected.item()) <= TOL


def test_converter_rejects_unaccounted_tensors():
    from conversion.dalle_pytorch import convert_dalle, dalle_config_from_kwargs

    kwargs, vae_name = DALLE_CONFIGS["default"]
    ref = build_reference_dalle("default")
    config = dalle_config_from_kwargs(kwargs, VAE_CONFIGS[vae_name])
    extra = dict(ref.state_dict(), **{"transformer.extra": torch.zeros(1)})
    with pytest.raises(ValueError):
        convert_dalle(extra, config)
    missing = {k: v for k, v in ref.state_dict().items() if not k.endswith("to_qkv.weight")}
    with pytest.raises(UnmappedTensorsError):
        convert_dalle(missing, config)
    wrong_rotary = dict(ref.state_dict())
    wrong_rotary["transformer.pos_emb"] = wrong_rotary["transformer.pos_emb"] + 1
    with pytest.raises(UnmappedTensorsError):
        convert_dalle(wrong_rotary, config)


def test_normalise_layer_key_handles_every_nesting():
    from conversion.dalle_pytorch import normalise_layer_key

    assert normalise_layer_key("transformer.layers.layers.3.0.fn.fn.fn.fn.fn.to_qkv.weight") == (3, 0, "to_qkv.weight")
    assert normalise_layer_key("transformer.layers.layers.1.1.fn.norm_out.bias") == (1, 1, "norm_out.bias")
    assert normalise_layer_key("transformer.layers.blocks.2.g.net.fn.fn.net.3.weight") == (2, 1, "net.3.weight")
    assert normalise_layer_key("transformer.layers.blocks.0.f.net.scale") == (0, 0, "scale")
    assert normalise_layer_key("to_logits.1.weight") is None


def test_cli_converts_training_checkpoints(tmp_path):
    """dalle-pytorch's train_dalle.py / train_vae.py format: {"hparams", "vae_params", "weights"}."""
    from transformers import AutoModel

    from conversion.dalle_pytorch import main

    from .helpers import DALLE_CONFIGS

    kwargs, vae_name = DALLE_CONFIGS["axial-conv-mix"]
    ref = build_reference_dalle("axial-conv-mix")
    torch.save({"hparams": dict(kwargs), "vae_params": VAE_CONFIGS[vae_name], "weights": ref.state_dict()},
               tmp_path / "dalle.pt")
    main(["--checkpoint", str(tmp_path / "dalle.pt"), "--output", str(tmp_path / "out")])
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert "axial_row, conv_like, axial_col, full" in (tmp_path / "out" / "README.md").read_text()
    text, codes = text_ids(model.config), image_codes(model.config)
    with torch.no_grad():
        assert max_abs_diff(model(text, image_ids=codes, use_cache=False).logits, ref(text.clone(), codes)) <= TOL

    torch.save({"hparams": VAE_CONFIGS[vae_name], "weights": ref.vae.state_dict()}, tmp_path / "vae.pt")
    main(["--checkpoint", str(tmp_path / "vae.pt"), "--vae-only", "--output", str(tmp_path / "vae")])
    vae = AutoModel.from_pretrained(tmp_path / "vae")
    images = pixels(vae.config)
    assert torch.equal(vae.get_codebook_indices(images), ref.vae.get_codebook_indices(images))


def test_null_condition_training_matches_reference_and_keeps_input():
    ref, model = converted_pair("sandwich-stable")
    config = model.config
    text, codes = text_ids(config), image_codes(config)
    before = text.clone()
    with torch.no_grad():
        expected = ref(text.clone(), codes, return_loss=True, null_cond_prob=1.0)
        out = model(text, image_ids=codes, return_loss=True, null_cond_prob=1.0, use_cache=False)
        kept = model(text, image_ids=codes, return_loss=True, use_cache=False)
    assert abs(out.loss.item() - expected.item()) <= TOL
    assert abs(out.loss.item() - kept.loss.item()) > 1e-4
    assert torch.equal(text, before)
    with pytest.raises(ValueError, match="null_cond_prob"):
        model(text, null_cond_prob=1.5, use_cache=False)
