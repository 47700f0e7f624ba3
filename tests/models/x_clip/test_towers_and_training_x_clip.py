"""x-clip features that parity cannot show: user-supplied transformers towers saved and reloaded through the
Auto classes, LiT with a given (pretrained) tower, gradient checkpointing really recomputing layers (same
gradients), the input embeddings that checkpointing and adapters hook, and the learned temperature."""

import math

import pytest
import torch
from transformers import AutoModel, CLIPTextConfig, CLIPVisionConfig, CLIPVisionModel, ViTConfig

import hf_mm  # noqa: F401  (registers the Auto classes)
from hf_mm.models.x_clip import XClipConfig, XClipModel

TEXT = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, head_dim=16,
            max_position_embeddings=8)
VISION = dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, head_dim=16,
              patch_dropout=0.0)
CLIP_TEXT = dict(model_type="clip_text_model", vocab_size=50, hidden_size=32, intermediate_size=64,
                 num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8)
CLIP_VISION = CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                               image_size=16, patch_size=8)


def batch(n=3):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50, (n, 8), generator=g)
    ids[0, 6:] = 0
    return ids, torch.rand(n, 3, 16, 16, generator=g)


@pytest.mark.parametrize("vision", [CLIP_VISION, ViTConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                                                           num_attention_heads=2, image_size=16, patch_size=8)])
def test_external_towers_save_and_reload_through_auto_model(tmp_path, vision):
    """A text tower given as a dict with its model_type and a vision tower given as a config instance (of a
    different width) survive save_pretrained -> AutoModel.from_pretrained with identical outputs."""
    torch.manual_seed(0)
    model = XClipModel(XClipConfig(text_config=CLIP_TEXT, vision_config=vision, projection_dim=16)).eval()
    assert type(model.text_model).__name__ == "CLIPTextModel"
    assert type(model.vision_model).__name__ == ("CLIPVisionModel" if vision is CLIP_VISION else "ViTModel")
    ids, pixels = batch()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded.config.text_config) is CLIPTextConfig and type(loaded.config.vision_config) is type(vision)
    with torch.no_grad():
        expected, got = model(ids, pixels), loaded(ids, pixels)
    assert torch.equal(got.logits_per_image, expected.logits_per_image)
    assert expected.image_embeds.shape == (3, 16) and expected.vision_model_output.shape[-1] == 24
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        loaded(ids, torch.rand(3, 3, 24, 24))


def test_lit_with_a_given_pretrained_vision_tower():
    """LiT: load a (here random, stand-in for pretrained) CLIPVisionModel into the tower and lock it with
    `freeze_image_encoder`: an optimiser step changes the text tower and projections, never the image tower."""
    torch.manual_seed(0)
    pretrained = CLIPVisionModel(CLIP_VISION)
    model = XClipModel(XClipConfig(text_config=TEXT, vision_config=CLIP_VISION, projection_dim=16))
    model.vision_model.load_state_dict(pretrained.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    model(*batch(), return_loss=True, freeze_image_encoder=True).loss.backward()
    assert all(p.grad is None for p in model.vision_model.parameters())
    assert model.visual_projection.weight.grad is not None and model.text_model.embed_tokens.weight.grad is not None
    optimizer.step()
    after = model.state_dict()
    for name, value in before.items():
        changed = not torch.equal(after[name], value)
        assert changed == (not name.startswith("vision_model.")) or "position_ids" in name, name


def forward_backward(model, **options):
    """One training forward + backward: how often the first block of each tower ran its attention, and the
    gradients. (transformers checkpoints a layer's `forward`, so a hook on the block itself fires once; its
    submodules run again when recomputed.)"""
    calls = {"text": 0, "vision": 0}

    def count(tower):
        return lambda *_: calls.update({tower: calls[tower] + 1})

    handles = [model.text_model.encoder.layers[0].attn.register_forward_hook(count("text")),
               model.vision_model.encoder.layers[0].attn.register_forward_hook(count("vision"))]
    model.zero_grad(set_to_none=True)
    model.train()
    model(*batch(), return_loss=True, **options).loss.backward()
    for handle in handles:
        handle.remove()
    return calls, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_recomputes_the_layers_and_keeps_the_gradients():
    """With checkpointing each block runs twice (forward + recompute in backward), without it once, and every
    parameter gets the same gradient either way; a frozen tower has nothing to recompute."""
    torch.manual_seed(0)
    model = XClipModel(XClipConfig(text_config=TEXT, vision_config=VISION, projection_dim=16))
    calls, expected = forward_backward(model)
    assert calls == {"text": 1, "vision": 1}
    assert len(expected) == len(list(model.parameters()))
    model.activation_checkpointing_enable()
    calls, grads = forward_backward(model)
    assert calls == {"text": 2, "vision": 2}
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=0, atol=1e-6, msg=name)
    assert forward_backward(model, freeze_text_encoder=True)[0] == {"text": 1, "vision": 2}
    model.activation_checkpointing_disable()
    assert forward_backward(model)[0] == {"text": 1, "vision": 1}


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")  # the frozen vision tower, expected
def test_input_embeddings_let_adapters_train_under_reentrant_checkpointing():
    """get/set_input_embeddings reach the text tower's token embeddings (a user-supplied transformers tower's own),
    so activation checkpointing hooks them: with every weight frozen but one attention projection (an adapter's
    setting) and reentrant checkpointing, that projection still gets its gradient."""
    torch.manual_seed(0)
    model = XClipModel(XClipConfig(text_config=TEXT, vision_config=VISION, projection_dim=16))
    assert model.get_input_embeddings() is model.text_model.embed_tokens
    embeddings = torch.nn.Embedding(TEXT["vocab_size"], TEXT["hidden_size"])
    model.set_input_embeddings(embeddings)
    assert model.text_model.embed_tokens is embeddings and model.get_input_embeddings() is embeddings

    model.requires_grad_(False)
    adapted = model.text_model.encoder.layers[1].attn.q_proj.requires_grad_(True)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    model(*batch(), return_loss=True).loss.backward()
    assert adapted.weight.grad is not None and adapted.weight.grad.abs().sum() > 0

    external = XClipModel(XClipConfig(text_config=CLIP_TEXT, vision_config=VISION, projection_dim=16))
    assert external.get_input_embeddings() is external.text_model.embeddings.token_embedding
    external.set_input_embeddings(embeddings)
    assert external.text_model.embeddings.token_embedding is embeddings


@pytest.mark.parametrize("logit_scale_max", [None, 100.0])
def test_learned_temperature(tmp_path, logit_scale_max):
    """logits = scale * cosine similarity with scale = exp(logit_scale), clamped at `logit_scale_max` (None:
    x-clip's unclamped temperature); logit_scale starts at `logit_scale_init_value`, is trained by the loss
    (one SGD step moves it by -lr * grad), and is saved."""
    torch.manual_seed(0)
    model = XClipModel(XClipConfig(text_config=TEXT, vision_config=VISION, projection_dim=16,
                                   logit_scale_init_value=math.log(5.0), logit_scale_max=logit_scale_max))
    ids, pixels = batch()
    param = model.logit_scale.logit_scale
    assert param.item() == pytest.approx(math.log(5.0))
    out = model(ids, pixels, return_loss=True)
    torch.testing.assert_close(out.logits_per_image, 5.0 * out.image_embeds @ out.text_embeds.T)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.T)
    out.loss.backward()
    grad, before = param.grad.item(), param.item()
    assert grad != 0
    torch.optim.SGD([param], lr=0.5).step()
    assert param.item() == pytest.approx(before - 0.5 * grad)

    with torch.no_grad():
        param.fill_(math.log(500.0))  # beyond CLIP's usual clamp of 100
    out = model(ids, pixels)
    expected = 500.0 if logit_scale_max is None else logit_scale_max
    torch.testing.assert_close(out.logits_per_image, expected * out.image_embeds @ out.text_embeds.T)
    model.save_pretrained(tmp_path)
    reloaded = XClipModel.from_pretrained(tmp_path)
    assert reloaded.logit_scale.logit_scale.item() == param.item()
    assert reloaded.config.logit_scale_max == logit_scale_max


# -------------------------------------------------------------------- freeze flags and x-clip's self-supervised passes
@pytest.mark.parametrize("side", ["image", "text"])
def test_freezing_a_tower_that_a_side_loss_trains_warns(side):
    """x-clip's visual SSL / MLM passes encode with gradients whatever `freeze_*_encoder` says (as in the reference,
    kept for parity): the tower then still trains, so the combination warns, naming both options."""
    torch.manual_seed(0)
    config = XClipConfig(text_config=TEXT, vision_config=VISION, projection_dim=16, visual_ssl_projection_hidden_size=32,
                         **({"use_visual_ssl": True} if side == "image" else {"use_mlm": True, "mlm_mask_token_id": 50}))
    model = XClipModel(config).train()
    ids, pixels = batch(4)
    tower, loss_option = ("vision_model", "use_visual_ssl") if side == "image" else ("text_model", "use_mlm")
    with pytest.warns(UserWarning, match=rf"freeze_{side}_encoder.*{loss_option}"):
        out = model(ids, pixels, return_loss=True, **{f"freeze_{side}_encoder": True})
    out.loss.backward()
    # the documented behaviour (x-clip's): the side loss still reaches the "frozen" tower
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, tower).parameters())


# ------------------------------------------------------------------------------------- losses in fp32 under autocast
@pytest.mark.parametrize("options", [{}, {"use_visual_ssl": True}, {"use_visual_ssl": True, "visual_ssl_type": "simclr"},
                                     {"decoupled_contrastive_learning": True, "sim_reg_loss_weight": 0.5},
                                     {"use_all_token_embeds": True}])
def test_losses_are_float32_under_bf16_autocast(options):
    """bf16 autocast (CPU): every loss term is computed (and returned) in float32, as hf_mm's shared contrastive
    loss does (`at_least_fp32`), and stays close to the float32 loss."""
    torch.manual_seed(0)
    config = XClipConfig(text_config=TEXT, vision_config=VISION, projection_dim=16, visual_ssl_projection_hidden_size=32,
                         logit_scale_init_value=math.log(100.0), visual_ssl_augment="none", **options)
    model = XClipModel(config).train()
    ids, pixels = batch(4)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(ids, pixels, return_loss=True)
    torch.manual_seed(1)
    full = model(ids, pixels, return_loss=True)
    for name in ("loss", "contrastive_loss", "visual_ssl_loss", "sim_reg_loss"):
        value = getattr(low, name)
        if value is not None:
            assert value.dtype == torch.float32, name
            torch.testing.assert_close(value, getattr(full, name), rtol=5e-2, atol=5e-2)


def test_info_nce_upcasts_bf16_logits():
    """The loss of bf16 logits is the float32 maths on the same (bf16) values, not bf16 maths (steps of 0.125)."""
    from hf_mm.models.x_clip.loss_x_clip import info_nce

    logits = (torch.randn(64, 64, generator=torch.Generator().manual_seed(0)) * 30).bfloat16()
    for decoupled in (False, True):
        got = info_nce(logits, decoupled)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, info_nce(logits.float(), decoupled), rtol=0, atol=0)
