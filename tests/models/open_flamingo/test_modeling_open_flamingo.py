"""Flamingo around transformers causal LMs (no reference): the LM untouched, cached generate, save/load, training."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

import hf_mm  # noqa: F401
from hf_mm.models.flamingo import FlamingoConfig, FlamingoForConditionalGeneration

from open_flamingo_helpers import EOC, MEDIA, few_shot_prompt, left_padded, lm_config

KINDS = ["llama", "gpt_neox", "opt", "gptj", "gpt2"]
VISION = dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=64)
PERCEIVER = dict(num_latents=4, num_hidden_layers=1, num_attention_heads=2, head_dim=16)


def tiny(kind, layers=2, every=1, gates=True, **overrides):
    torch.manual_seed(0)
    config = FlamingoConfig(text_config=lm_config(kind, layers), vision_config=VISION, perceiver_config=PERCEIVER,
                            cross_attn_every_n_layers=every, cross_attn_num_heads=2, cross_attn_head_dim=16,
                            media_token_id=MEDIA, eoc_token_id=EOC, **overrides)
    model = FlamingoForConditionalGeneration(config).eval()
    if gates:
        with torch.no_grad():
            for block in model.model.cross_attn_layers.values():
                block.attn_gate.fill_(0.8)
                block.ff_gate.fill_(0.6)
    return model


@pytest.fixture(scope="module", params=KINDS)
def model(request):
    return tiny(request.param, layers=2, every=2 if request.param in ("llama", "opt") else 1)


def _px(batch=2, num_media=2, seed=1):
    return torch.randn(batch, num_media, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _gen(model, **kw):
    return model.generate(max_new_tokens=4, min_new_tokens=4, eos_token_id=None, pad_token_id=0, **kw)


def test_open_flamingo_defaults_and_layer_discovery(model):
    config = model.config
    assert config.cross_attn_placement == "before" and config.vision_feature_select_strategy == "default"
    assert config.perceiver_config.max_num_media == 0 and model.model.perceiver.media_position_embedding is None
    n, k = config.text_config.num_hidden_layers, config.cross_attn_every
    assert sorted(map(int, model.model.cross_attn_layers)) == [i for i in range(n) if (i + 1) % k == 0]
    expected = {"llama": "layers", "gpt_neox": "layers", "opt": "decoder.layers", "gptj": "h", "gpt2": "h"}
    assert model.model.decoder_layers_path == expected[config.text_config.model_type.replace("gpt-j", "gptj")]


@torch.no_grad()
def test_language_model_is_untouched(model):
    """Same weights in a plain `*ForCausalLM`: equal logits for text-only input and with closed gates."""
    lm = AutoModelForCausalLM.from_config(model.config.text_config).eval()
    lm.base_model.load_state_dict(model.model.language_model.state_dict(), strict=True)
    lm.get_output_embeddings().load_state_dict(model.lm_head.state_dict())
    ids = few_shot_prompt()
    text = ids.clone()
    text[text >= EOC] = 5
    torch.testing.assert_close(model(input_ids=text).logits, lm(input_ids=text).logits)
    closed = copy.deepcopy(model)
    for block in closed.model.cross_attn_layers.values():
        block.attn_gate.zero_()
        block.ff_gate.zero_()
    torch.testing.assert_close(closed(input_ids=ids, pixel_values=_px()).logits, lm(input_ids=ids).logits)
    assert not torch.allclose(model(input_ids=ids, pixel_values=_px()).logits, lm(input_ids=ids).logits)
    assert model.model.media_conditioning is None  # cleared after every call


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_generate_equals_uncached_few_shot_left_padded(model, num_beams):
    ids, mask = left_padded(few_shot_prompt())
    kw = dict(input_ids=ids, attention_mask=mask, pixel_values=_px(), num_beams=num_beams, do_sample=False)
    cached = _gen(model, **kw)
    assert torch.equal(cached, _gen(model, use_cache=False, **kw))
    if num_beams == 1:  # a naive full-recompute decode gives the same tokens
        seq, m = ids, mask
        for _ in range(4):
            logits = model(input_ids=seq, attention_mask=m, pixel_values=_px(), use_cache=False,
                           position_ids=(m.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
            logits[:, model.generation_config.suppress_tokens] = -float("inf")  # the default: <image> (and pad)
            seq, m = torch.cat((seq, logits.argmax(-1, keepdim=True)), 1), torch.cat((m, torch.ones_like(m[:, :1])), 1)
        assert torch.equal(cached, seq)


def test_media_encoded_once_and_cross_attention_kv_cached():
    model = tiny("llama", layers=2, every=1)
    calls = []
    model.model.vision_model.register_forward_hook(lambda *a: calls.append(1))
    ids = torch.randint(3, EOC, (2, 14), generator=torch.Generator().manual_seed(5))
    ids[:, [1, 6, 10]], ids[:, [5, 9]] = MEDIA, EOC  # three images, two chunks
    _gen(model, input_ids=ids, pixel_values=_px(num_media=3), do_sample=False)
    assert len(calls) == 1
    out = model(input_ids=ids, pixel_values=_px(num_media=3), use_cache=True)
    assert out.past_key_values.cross_attention_cache.layers[0].keys.shape[2] == 3 * PERCEIVER["num_latents"]


def test_save_load_keeps_language_model_names_and_ties(tmp_path):
    model = tiny("gpt2")
    names = set(model.state_dict())
    assert "model.language_model.h.0.attn.c_attn.weight" in names and "model.cross_attn_layers.0.attn.q_proj.weight" in names
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is FlamingoForConditionalGeneration
    assert loaded.lm_head.weight.data_ptr() == loaded.model.language_model.wte.weight.data_ptr()
    ids, px = few_shot_prompt(), _px()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, pixel_values=px).logits,
                                   model(input_ids=ids, pixel_values=px).logits, atol=0, rtol=0)


def test_base_model_loads_a_checkpoint_with_an_untied_head(tmp_path):
    """AutoModel on a FlamingoForConditionalGeneration folder whose head is untied (saved): the head is ignored, as
    in transformers; the full model still rejects an unexpected head tensor."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    from hf_mm.models.flamingo import FlamingoModel
    from hf_mm.modeling_utils import CheckpointMismatchError

    model = tiny("llama")
    assert not model.config.tie_word_embeddings
    model.save_pretrained(tmp_path)
    ids, px = few_shot_prompt(), _px()
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is FlamingoModel
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=ids, pixel_values=px).last_hidden_state,
                                   model.model(input_ids=ids, pixel_values=px).last_hidden_state, atol=0, rtol=0)
    tensors = load_file(tmp_path / "model.safetensors")
    save_file({**tensors, "lm_head.bias": torch.zeros(tensors["lm_head.weight"].shape[0])},
              tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match=r"unexpected tensors: \['lm_head.bias'\]"):
        FlamingoForConditionalGeneration.from_pretrained(tmp_path)


def test_gradient_checkpointing_same_loss_and_grads():
    model = tiny("llama").train()
    ids, px = few_shot_prompt(), _px()
    model(input_ids=ids, pixel_values=px, labels=ids).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("model.cross_attn_layers.") for n in grads)
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(input_ids=ids, pixel_values=px, labels=ids, use_cache=False).loss.backward()
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-5)


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="decoder_layers_attr_name 'nope'"):
        tiny("llama", decoder_layers_attr_name="nope")
    with pytest.raises(ValueError, match="cross_attn_placement"):
        tiny("opt", cross_attn_placement="inside")
    with pytest.raises(ValueError, match="eoc_token_id must be in"):
        FlamingoConfig(text_config=lm_config("llama"), cross_attn_every=1, eoc_token_id=500).validate_architecture()
    model = tiny("llama")
    with pytest.raises(ValueError, match="media token"):
        model(input_ids=few_shot_prompt(), pixel_values=_px(num_media=3))
    six_d = _px()[:, :, None]  # OpenFlamingo's (b, T_img, F=1, C, H, W)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=few_shot_prompt(), pixel_values=six_d).logits,
                                   model(input_ids=few_shot_prompt(), pixel_values=_px()).logits)


def test_assisted_generation_equals_greedy(model):
    """generate(assistant_model=...) around every wrapped LM kind: the assistant gets the media on its own first
    forward (it failed there), and the tokens are plain greedy's (batch 1, as transformers requires)."""
    ids = few_shot_prompt(batch=1)
    kw = dict(input_ids=ids, pixel_values=_px(batch=1), do_sample=False, max_new_tokens=6, min_new_tokens=6,
              eos_token_id=None, pad_token_id=0)
    plain = model.generate(**kw)
    assert torch.equal(model.generate(assistant_model=model, **kw), plain)
    assert torch.equal(model.generate(prompt_lookup_num_tokens=3, **kw), plain)
