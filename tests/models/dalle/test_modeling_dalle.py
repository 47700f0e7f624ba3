"""Save/load, Auto classes, any-to-any pipeline, attention backends, gradient checkpointing, bad input."""

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForMultimodalLM

import hf_mm  # noqa: F401  (registers the families)
from conversion.common import max_abs_diff
from hf_mm.models.dalle import DalleConfig, DalleForImageGeneration, DalleProcessor, DiscreteVAEConfig, DiscreteVAEModel

from .helpers import VAE_CONFIGS, image_codes, pixels, text_ids, tiny_model


@pytest.mark.parametrize("overrides", [{}, dict(shared_attn_ids=[0, 1, 2, 3, 4, 1], shared_ff_ids=[0, 0, 1, 1, 2, 2],
                                                share_input_output_emb=True)], ids=["plain", "shared"])
def test_save_and_load_through_auto_classes(tmp_path, overrides):
    model = tiny_model(**overrides)
    text, codes = text_ids(model.config), image_codes(model.config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "hf_mm_dalle"
    for auto in (AutoModel, AutoModelForMultimodalLM):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, DalleForImageGeneration)
        with torch.no_grad():
            expected = model(text, image_ids=codes, use_cache=False).logits
            assert max_abs_diff(loaded(text, image_ids=codes, use_cache=False).logits, expected) == 0
    if overrides:  # shared layers stay shared after loading
        assert loaded.layers[5].attn.q_proj is loaded.layers[1].attn.q_proj
        assert loaded.layers[1].mlp is loaded.layers[0].mlp


def test_vae_is_a_standalone_model(tmp_path):
    model = tiny_model()
    model.vae.save_pretrained(tmp_path)
    vae = AutoModel.from_pretrained(tmp_path)
    assert isinstance(vae, DiscreteVAEModel) and vae.config.model_type == "hf_mm_dalle_vae"
    images = pixels(vae.config)
    assert torch.equal(vae.get_codebook_indices(images), model.vae.get_codebook_indices(images))


def test_sdpa_and_eager_agree():
    model = tiny_model()
    text, codes = text_ids(model.config), image_codes(model.config)
    with torch.no_grad():
        sdpa = model(text, image_ids=codes, use_cache=False).logits
        model.set_attn_implementation("eager")
        eager = model(text, image_ids=codes, use_cache=False).logits
    assert model.config._attn_implementation == "eager"
    assert max_abs_diff(sdpa, eager) <= 1e-5


def test_gradient_checkpointing_matches_plain_backward():
    """Gradient checkpointing is the memory-equivalent of dalle-pytorch's reversible layers."""
    model = tiny_model(reversible=True).train()
    text, codes = text_ids(model.config), image_codes(model.config)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(text, image_ids=codes, return_loss=True, use_cache=False).loss.backward()
        grads.append(model.layers[0].attn.q_proj.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    assert max_abs_diff(grads[0], grads[1]) <= 1e-6


def test_any_to_any_pipeline_returns_images(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, pipeline

    model = tiny_model()
    words = ["[PAD]", "a", "red", "cat", "blue", "dog"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[PAD]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]")
    processor = DalleProcessor(tokenizer, text_seq_len=model.config.text_seq_len)
    assert processor("a red cat")["input_ids"].tolist() == [[1, 2, 3, 0, 0]]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    pipe = pipeline("any-to-any", model=str(tmp_path))  # AutoModelForMultimodalLM + AutoProcessor
    assert isinstance(pipe.processor, DalleProcessor) and pipe.processor.text_seq_len == model.config.text_seq_len
    out = pipe(text="a blue dog", generation_mode="image", generate_kwargs=dict(do_sample=False))
    size = model.config.vae_config.image_size
    assert out[0]["generated_image"].size == (size, size)
    expected = model.generate_images(processor("a blue dog")["input_ids"], do_sample=False).images[0]
    assert out[0]["generated_image"].tobytes() == expected.tobytes()
    # the pipeline's default mode is text: refused (it used to decode the image codes as words)
    with pytest.raises(ValueError, match="generation_mode='image'"):
        pipe(text="a blue dog", generate_kwargs=dict(do_sample=False))


def test_bad_input_raises_value_errors_naming_the_argument():
    model = tiny_model()
    config = model.config
    text = text_ids(config)
    too_long = torch.cat((text, torch.ones(2, 1, dtype=torch.long)), dim=1)
    with pytest.raises(ValueError, match="text_seq_len"):
        model(too_long, use_cache=False)
    with pytest.raises(ValueError, match="input_ids"):
        model(text[:, :-1], use_cache=False)
    bad_ids = text.clone()
    bad_ids[0, 0] = config.num_text_tokens
    with pytest.raises(ValueError, match="num_text_tokens"):
        model(bad_ids, use_cache=False)
    with pytest.raises(ValueError, match="image_ids"):
        model(text, image_ids=torch.full((2, 3), config.vae_config.num_tokens), use_cache=False)
    with pytest.raises(ValueError, match="pixel_values"):
        model(text, pixel_values=torch.rand(2, 3, 16, 16), use_cache=False)
    with pytest.raises(ValueError, match="pixel_values has batch size 3 but input_ids has 2"):
        model(text, pixel_values=pixels(config.vae_config, batch=3), use_cache=False)
    with pytest.raises(ValueError, match="image_ids has batch size 3 but input_ids has 2"):
        model(text, image_ids=image_codes(config, batch=3), use_cache=False)
    with pytest.raises(ValueError, match="cond_scale must be a finite float .* got inf"):
        model(text, cond_scale=float("inf"), use_cache=False)
    with pytest.raises(ValueError, match="attention_mask"):
        model(text, attention_mask=(text != 0).long(), use_cache=False)
    with pytest.raises(ValueError, match="return_loss"):
        model(text, return_loss=True, use_cache=False)


@pytest.mark.parametrize("fields, match", [
    (dict(conv_kernel_size=4), "conv_kernel_size"),
    (dict(attn_types=["full", "axial_row", "axial_col"], num_hidden_layers=2), "attn_types"),
    (dict(attn_types=["full", "banded"]), "attn_types"),
    (dict(attn_types=["full", "axial_row"], num_hidden_layers=2, shared_attn_ids=[0, 0]), "shared_attn_ids"),
    (dict(hidden_size=30), "hidden_size"),
])
def test_bad_config_raises(fields, match):
    with pytest.raises(ValueError, match=match):
        DalleConfig(vae_config=VAE_CONFIGS["3layers-plain"], **fields)


def test_bad_vae_config_raises():
    with pytest.raises(ValueError, match="image_size"):
        DiscreteVAEConfig(image_size=24)
    with pytest.raises(ValueError, match="normalization"):
        DiscreteVAEConfig(channels=3, normalization=((0.5,), (0.5,)))
    for field in ("num_tokens", "codebook_dim", "hidden_dim"):
        with pytest.raises(ValueError, match=f"{field} must be an integer >= 1, got 0"):
            DiscreteVAEConfig(**{field: 0})
    for temperature in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be a float > 0"):
            DiscreteVAEConfig(temperature=temperature)


@pytest.mark.parametrize("temperature, error", [(0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                                ("1", TypeError)])
def test_vae_forward_rejects_bad_temperature(temperature, error):
    vae = DiscreteVAEModel(DiscreteVAEConfig(**VAE_CONFIGS["2layers-resblock"])).eval()
    with pytest.raises(error, match="temperature must be a float > 0"):
        vae(pixels(vae.config), temperature=temperature)
    assert torch.isfinite(vae(pixels(vae.config), temperature=1e-3).reconstructions).all()


def test_guided_generation_leaves_the_callers_text_untouched():
    """dalle-pytorch zeroes the caller's text in place during guidance; hf_mm batches a null copy instead."""
    model = tiny_model()
    text = text_ids(model.config)
    before = text.clone()
    model.generate(text, cond_scale=3.0, do_sample=False)
    assert torch.equal(text, before)


def test_layer_scale_init_depends_on_the_layer_index():
    """dalle-pytorch: 0.1 for layers 1-18, 1e-5 for 19-24, 1e-6 after (1-based, independent of depth)."""
    config = DalleConfig(vae_config=VAE_CONFIGS["3layers-plain"], num_text_tokens=10, text_seq_len=2,
                         hidden_size=8, num_attention_heads=1, head_dim=8, num_hidden_layers=26)
    model = DalleForImageGeneration(config)
    values = [layer.ls1.gamma[0].item() for layer in model.layers]
    assert values == pytest.approx([0.1] * 18 + [1e-5] * 6 + [1e-6] * 2)
    assert all(torch.equal(layer.ls1.gamma, layer.ls2.gamma) for layer in model.layers)


SHARED = dict(share_input_output_emb=True)


@pytest.mark.parametrize("overrides", [{}, SHARED], ids=["own-tables", "shared-with-lm-head"])
def test_input_embedding_module_embeds_the_tokens(overrides):
    """Hooks on `get_input_embeddings()` (enable_input_require_grads, NEFTune) see the token embeddings."""
    model = tiny_model(**overrides)
    text, codes = text_ids(model.config), image_codes(model.config)
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Embedding)
    if overrides:
        assert embeddings.weight is model.lm_head.weight
    seen = []
    handle = embeddings.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    with torch.no_grad():
        model(text, image_ids=codes, use_cache=False)
    handle.remove()
    assert seen
    model.requires_grad_(False)
    model.enable_input_require_grads()
    assert model(text, image_ids=codes, use_cache=False, return_loss=True).loss.requires_grad


def test_set_input_embeddings_replaces_the_text_embedding():
    model = tiny_model()
    text, codes = text_ids(model.config), image_codes(model.config)
    replacement = torch.nn.Embedding(model.config.text_vocab_size, model.config.hidden_size)
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement and model.embed_text is replacement
    with torch.no_grad():
        before = model(text, image_ids=codes, use_cache=False).logits
        replacement.weight.normal_()
        assert max_abs_diff(model(text, image_ids=codes, use_cache=False).logits, before) > 1e-3


def test_shared_embedding_checkpoint_stores_the_table_once(tmp_path):
    from safetensors import safe_open

    model = tiny_model(**SHARED)
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" in keys and not any(k.startswith("embed") for k in keys)
    loaded = DalleForImageGeneration.from_pretrained(tmp_path)
    assert loaded.get_input_embeddings().weight is loaded.lm_head.weight


@pytest.mark.parametrize("overrides", [{}, SHARED], ids=["own-tables", "shared-with-lm-head"])
def test_resize_token_embeddings_explains_why_it_is_unsupported(overrides):
    model = tiny_model(**overrides)
    with pytest.raises(ValueError, match=r"resize_token_embeddings.*\[text \| per-position pads \| image codes\]"):
        model.resize_token_embeddings(model.config.num_text_tokens + 4)
    assert model.resize_token_embeddings() is model.get_input_embeddings()  # transformers: no size -> the module


def test_return_dict_false_returns_tuples():
    model = tiny_model()
    text, codes = text_ids(model.config), image_codes(model.config)
    with torch.no_grad():
        expected = model(text, image_ids=codes, use_cache=False, return_loss=True)
        loss, logits = model(text, image_ids=codes, use_cache=False, return_loss=True, return_dict=False)
        assert torch.equal(loss, expected.loss) and torch.equal(logits, expected.logits)
        model.config.return_dict = False
        assert isinstance(model(text, image_ids=codes, use_cache=False), tuple)
        assert model.generate(text, do_sample=False).shape == (2, model.config.image_seq_len)
        vae = model.vae
        images = pixels(vae.config)
        assert isinstance(vae(images, return_dict=False), tuple)
        vae.config.return_dict = False
        assert isinstance(vae(images), tuple)
