"""XClipModel behaviour beyond parity: options where x-clip crashes, external towers, Auto classes, bad input."""

import pytest
import torch
from transformers import AutoModel, AutoModelForZeroShotImageClassification, CLIPTextConfig, CLIPVisionConfig, ViTConfig

import hf_mm  # noqa: F401  (registers the Auto classes)
from hf_mm.models.x_clip import XClipConfig, XClipModel, XClipOutput
from hf_mm.models.x_clip.image_augmentation_x_clip import default_ssl_augmentation

TEXT = dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16, max_position_embeddings=8)
VISION = dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16,
              patch_dropout=0.0)


def make(text=None, vision=None, **options):
    torch.manual_seed(0)
    return XClipModel(XClipConfig(text_config={**TEXT, **(text or {})}, vision_config=vision or VISION,
                                  projection_dim=16, **options))


def batch(n=3, eos=None):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50, (n, 8), generator=g)
    ids[0, 6:] = 0
    if eos is not None:
        ids[:, 5] = eos
    return ids, torch.rand(n, 3, 16, 16, generator=g)


def grads_ok(model, loss):
    loss.backward()
    assert torch.isfinite(loss)
    assert model.logit_scale.logit_scale.grad is not None and model.logit_scale.logit_scale.grad != 0


@pytest.mark.parametrize("text", [dict(causal=True, eos_token_id=49), dict(causal=True, eos_token_id=49, position_embedding_type="rotary")])
def test_causal_text_tower_works_where_x_clip_crashes(text):
    model = make(text=text)
    ids, pixels = batch(eos=49)
    out = model(ids, pixels, return_loss=True)
    grads_ok(model, out.loss)
    assert out.text_model_output.shape == (3, 8, 32)  # no CLS token in the causal tower
    # the pooled text feature is the eos token: changing a token after eos does not change it
    changed = ids.clone()
    changed[:, 7] = 7
    model.eval()
    assert torch.allclose(model.get_text_features(ids), model.get_text_features(changed), atol=1e-6)


def test_sim_reg_without_extra_projection_and_simclr_without_augment_both():
    model = make(sim_reg_loss_weight=0.5, use_visual_ssl=True, visual_ssl_type="simclr", simclr_augment_both=False,
                 visual_ssl_projection_hidden_size=32)
    out = model(*batch(), return_loss=True)
    assert out.sim_reg_loss > 0 and out.visual_ssl_loss > 0
    grads_ok(model, out.loss)


def test_simsiam_with_default_torch_augmentations_and_freeze():
    model = make(use_visual_ssl=True, visual_ssl_projection_hidden_size=32, use_mlm=True)
    ids, pixels = batch()
    with pytest.warns(UserWarning, match="freeze_text_encoder=True only freezes the contrastive pass: with use_mlm"):
        out = model(ids, pixels, return_loss=True, freeze_text_encoder=True)
    assert out.visual_ssl_loss is not None and out.mlm_loss is not None
    out.loss.backward()
    assert model.text_model.encoder.layers[0].attn.q_proj.weight.grad is not None  # MLM trains the text tower
    model.zero_grad()
    with pytest.warns(UserWarning) as record:
        out = model(ids, pixels, return_loss=True, freeze_image_encoder=True, freeze_text_encoder=True)
    messages = " | ".join(str(w.message) for w in record)
    assert "freeze_image_encoder=True" in messages and "use_visual_ssl=True" in messages and "use_mlm=True" in messages
    model.visual_ssl, model.mlm = None, None
    out = model(ids, pixels, return_loss=True, freeze_image_encoder=True, freeze_text_encoder=True)
    out.loss.backward()
    assert model.vision_model.patch_embedding.weight.grad is None
    assert model.text_model.embed_tokens.weight.grad is None
    assert model.text_projection.weight.grad is not None


def test_augmentations_keep_shape_and_change_images():
    torch.manual_seed(0)
    aug = default_ssl_augmentation(16)
    x = torch.rand(2, 3, 16, 16)
    outs = [aug(x) for _ in range(4)]
    assert all(o.shape == x.shape and torch.isfinite(o).all() for o in outs)
    assert any((o - outs[0]).abs().max() > 1e-3 for o in outs[1:])


def test_patch_dropout_only_in_training():
    model = make(vision={**VISION, "patch_dropout": 0.5})
    ids, pixels = batch()
    model.train()
    assert model(ids, pixels).vision_model_output.shape[1] == 1 + 2
    model.eval()
    assert model(ids, pixels).vision_model_output.shape[1] == 1 + 4


@pytest.mark.parametrize("vision", [
    CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8),
    ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8),
])
def test_external_towers(vision):
    text = CLIPTextConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=8)
    torch.manual_seed(0)
    model = XClipModel(XClipConfig(text_config=text, vision_config=vision, projection_dim=16, use_all_token_embeds=True))
    ids, pixels = batch()
    out = model(ids, pixels, return_loss=True)
    grads_ok(model, out.loss)
    assert out.logits_per_image.shape == (3, 3)


def test_save_and_load_through_auto_classes(tmp_path):
    model = make(extra_latent_projection=True).eval()
    ids, pixels = batch()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert XClipConfig.model_type == "hf_mm_x_clip"
    for auto in (AutoModel, AutoModelForZeroShotImageClassification):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert type(loaded) is XClipModel
        with torch.no_grad():
            assert torch.equal(loaded(ids, pixels).logits_per_image, model(ids, pixels).logits_per_image)
    eager = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert eager.config.text_config._attn_implementation == "eager"
    with torch.no_grad():
        assert torch.allclose(eager(ids, pixels).logits_per_image, model(ids, pixels).logits_per_image, atol=1e-5)


def test_bad_input():
    model = make(use_visual_ssl=True, visual_ssl_projection_hidden_size=32)
    ids, pixels = batch()
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        model(ids, torch.rand(3, 3, 20, 20))
    with pytest.raises(ValueError, match="text_seq_len"):
        model(torch.ones(3, 9, dtype=torch.long), pixels)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 50\)"):
        model(ids.clone().fill_(3).index_fill_(1, torch.tensor([0]), 50), pixels)
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        model(ids.float(), pixels)
    with pytest.raises(ValueError, match="needs both input_ids"):
        model(ids, None, return_loss=True)
    with pytest.raises(ValueError, match="input_ids has batch 3, pixel_values has batch 2"):
        model(ids, pixels[:2], return_loss=True)
    with pytest.raises(ValueError, match="visual_ssl_type must be one of"):
        XClipConfig(visual_ssl_type="byol")
    with pytest.raises(ValueError, match="image_size .* divisible by patch_size"):
        XClipConfig(vision_config={**VISION, "image_size": 20})
    with pytest.raises(ValueError, match="eos_token_id is required"):
        XClipConfig(text_config={**TEXT, "causal": True})


def test_edge_cases_refused_where_x_clip_returns_garbage():
    """x-clip gives a meaningless finite loss (log(1e-20) - positive) for DCL on one pair, and similarities of
    -3.4e38 for a FILIP text of padding only; both are refused with the argument named."""
    ids, pixels = batch()
    with pytest.raises(ValueError, match=r"decoupled_contrastive_learning .* at least 2 \(text, image\) pairs .* got 1"):
        make(decoupled_contrastive_learning=True)(ids[:1], pixels[:1], return_loss=True)
    assert torch.isfinite(make(decoupled_contrastive_learning=True)(ids[:2], pixels[:2], return_loss=True).loss)
    filip = make(use_all_token_embeds=True)
    padded = ids.clone()
    padded[1] = 0
    with pytest.raises(ValueError, match=r"use_all_token_embeds .* rows \[1\] of input_ids are all padding"):
        filip(padded, pixels)
    with pytest.raises(ValueError, match=r"rows \[2\] of input_ids are all padding"):
        filip(ids, pixels, attention_mask=torch.ones_like(ids).index_fill_(0, torch.tensor([2]), 0))
    with pytest.raises(ValueError, match=r"rows \[1\] of aug_input_ids\[0\] are all padding"):
        filip.train()(ids, pixels, aug_input_ids=padded, return_loss=True)
    assert filip.get_text_features(padded).shape == (3, 8, 16)  # token latents alone compare nothing
    for features in (lambda m: m.get_text_features(ids, extra_projection=True),
                     lambda m: m.get_image_features(pixels, extra_projection=True)):
        with pytest.raises(ValueError, match="extra_projection=True needs .* extra_latent_projection=True"):
            features(make())
        assert features(make(extra_latent_projection=True)).shape == (3, 16)


def test_external_text_tower_checks_its_vocabulary():
    text = CLIPTextConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=8)
    torch.manual_seed(0)
    model = XClipModel(XClipConfig(text_config=text, vision_config=VISION, projection_dim=16))
    ids, pixels = batch()
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 50\) \(text_config.vocab_size\), got .* 60\]"):
        model(ids.index_fill(1, torch.tensor([2]), 60), pixels)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 50\)"):
        model.get_text_features(torch.full((2, 8), -1))


def test_mlm_pad_token_id_survives_save_and_load_and_defaults_to_the_text_pad_id(tmp_path):
    """x-clip's MLM pad id (label fill, ignore_index, never masked) is its own; None means text_config.pad_token_id."""
    default = XClipConfig(text_config={**TEXT, "pad_token_id": 4}, use_mlm=True, mlm_mask_ignore_token_ids=[1])
    assert default.mlm_pad_token_id is None
    assert XClipModel(default).mlm.pad_token_id == 4 and XClipModel(default).mlm.ignore_ids == [1, 4]
    own = XClipConfig(text_config={**TEXT, "pad_token_id": 4}, use_mlm=True, mlm_pad_token_id=3)
    own.save_pretrained(tmp_path)
    loaded = XClipConfig.from_pretrained(tmp_path)
    assert loaded.mlm_pad_token_id == 3 and loaded.text_config.pad_token_id == 4
    assert XClipModel(loaded).mlm.pad_token_id == 3 and XClipModel(loaded).mlm.ignore_ids == [3]
    default.save_pretrained(tmp_path)
    assert XClipConfig.from_pretrained(tmp_path).mlm_pad_token_id is None
    with pytest.raises(ValueError, match=r"mlm_pad_token_id \(50\) must lie in \[0, text_config.vocab_size=50\)"):
        XClipConfig(text_config=TEXT, use_mlm=True, mlm_pad_token_id=50)
    no_pad = XClipConfig(text_config={**TEXT, "pad_token_id": None}, use_mlm=True)  # loads (inference works)
    with pytest.raises(ValueError, match="the MLM loss needs mlm_pad_token_id or text_config.pad_token_id"):
        XClipModel(no_pad).mlm.mask_tokens(torch.tensor([[5, 6, 7]]))


def test_return_dict_false_returns_a_tuple_loss_first():
    """`return_dict=False` (keyword or config) gives `XClipOutput.to_tuple()`; it was ignored (a ModelOutput,
    whose unpacking gave the field names)."""
    model = make(sim_reg_loss_weight=0.5).eval()
    ids, pixels = batch()
    with torch.no_grad():
        expected = model(ids, pixels, return_loss=True)
        out = model(ids, pixels, return_loss=True, return_dict=False)
        assert isinstance(out, tuple) and len(out) == len(expected.to_tuple())
        loss, logits_per_image, *_ = out
        assert torch.equal(loss, expected.loss) and torch.equal(logits_per_image, expected.logits_per_image)
        model.config.return_dict = False
        assert torch.equal(model(ids, pixels)[0], expected.logits_per_image)
        assert isinstance(model(ids, pixels, return_dict=True), XClipOutput)


def test_runs_with_weights_offloaded_to_disk(tmp_path):
    """accelerate offloading: weights live on the meta device until a module is called (a direct `.weight` read of
    the position embeddings failed with "Tensor on device meta")."""
    model = make().eval()
    ids, pixels = batch()
    model.save_pretrained(tmp_path / "model")
    offloaded = XClipModel.from_pretrained(tmp_path / "model", device_map="auto", max_memory={"cpu": "30KB"},
                                           offload_folder=tmp_path / "offload").eval()
    assert set(offloaded.hf_device_map.values()) == {"disk"}
    with torch.no_grad():
        assert torch.equal(offloaded(ids, pixels).logits_per_image, model(ids, pixels).logits_per_image)
