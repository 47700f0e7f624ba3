"""Cached decoding equals uncached decoding for every attention pattern (logits per step, greedy, seeded
sampling, beam search, classifier-free guidance), and the sampling options behave as dalle-pytorch's."""

import pytest
import torch

from conversion.common import max_abs_diff

from .helpers import image_codes, pixels, text_ids, tiny_model

VARIANTS = {
    "mixed-shift-rotary": {},
    "mixed-reversible-sandwich-stable": dict(reversible=True, sandwich_norm=True, stable=True),
    "mixed-no-shift-axial-positions": dict(shift_tokens=False, rotary_emb=False),
    **{f"only-{t}": dict(attn_types=[t], num_hidden_layers=2)
       for t in ("full", "axial_row", "axial_col", "conv_like", "sparse")},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cached_step_logits_equal_full_forward(variant):
    model = tiny_model(**VARIANTS[variant])
    config = model.config
    text, codes = text_ids(config), image_codes(config)
    with torch.no_grad():
        full = model(text, image_ids=codes, use_cache=False).logits
        out = model(text, image_ids=codes[:, :3], use_cache=True)  # prefill: text + 3 codes
        steps = [out.logits]
        cache = out.past_key_values
        for i in range(3, config.image_seq_len - 1):
            out = model(codes[:, i : i + 1] + config.text_vocab_size, past_key_values=cache, use_cache=True)
            steps.append(out.logits)
    cached = torch.cat(steps, dim=1)
    assert cached.shape == full.shape
    assert max_abs_diff(cached, full) <= 1e-5


def _generate_both(model, **kwargs):
    results = []
    for use_cache in (True, False):
        torch.manual_seed(123)
        results.append(model.generate(text_ids(model.config), use_cache=use_cache, **kwargs))
    return results


@pytest.mark.parametrize("kwargs", [
    dict(do_sample=False), dict(do_sample=True, temperature=0.8), dict(do_sample=True, cond_scale=3.0),
    dict(do_sample=False, num_beams=2), dict(do_sample=False, num_beams=2, cond_scale=2.0),
    dict(do_sample=True, num_return_sequences=2, cond_scale=2.0),
], ids=["greedy", "sampled", "guided", "beam", "beam-guided", "return-sequences-guided"])
def test_generate_cached_equals_uncached(kwargs):
    model = tiny_model()
    cached, uncached = _generate_both(model, **kwargs)
    assert cached.shape == (2 * kwargs.get("num_return_sequences", 1), model.config.image_seq_len)
    assert torch.equal(cached, uncached)
    assert cached.min() >= 0 and cached.max() < model.config.vae_config.num_tokens


def test_sampling_is_seeded_and_varies():
    model = tiny_model()
    a, b = _generate_both(model, do_sample=True, filter_thres=0.0)
    torch.manual_seed(7)
    c = model.generate(text_ids(model.config), filter_thres=0.0)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_filter_thres_keeps_top_k_like_dalle_pytorch():
    """k = max(int((1 - thres) * V), 1): a threshold leaving k = 1 makes sampling greedy."""
    model = tiny_model()
    text = text_ids(model.config)
    greedy = model.generate(text, do_sample=False)
    thres = 1 - 1.5 / model.config.vocab_size
    torch.manual_seed(0)
    assert torch.equal(model.generate(text, filter_thres=thres), greedy)


def test_guidance_logits_are_batched_null_text_combination():
    model = tiny_model()
    config = model.config
    text, codes = text_ids(config), image_codes(config)
    with torch.no_grad():
        guided = model(text, image_ids=codes, cond_scale=2.5, use_cache=False).logits
        cond = model(text, image_ids=codes, use_cache=False).logits
        null = model(torch.zeros_like(text), image_ids=codes, use_cache=False).logits
    assert max_abs_diff(guided, null + (cond - null) * 2.5) <= 1e-4
    assert max_abs_diff(guided, cond) > 1e-3


def test_priming_keeps_the_initial_image_codes():
    model = tiny_model()
    init = pixels(model.config.vae_config)
    primed = model.generate(text_ids(model.config), init_image=init, num_init_img_tokens=10, do_sample=False)
    assert primed.shape == (2, model.config.image_seq_len)
    assert torch.equal(primed[:, :10], model.vae.get_codebook_indices(init)[:, :10])


class StandInReranker(torch.nn.Module):
    """Any model with get_text_features / get_image_features (features from mean brightness)."""

    def get_text_features(self, input_ids):
        return torch.ones(input_ids.shape[0], 2)

    def get_image_features(self, pixel_values):
        brightness = pixel_values.mean(dim=(1, 2, 3))
        return torch.stack((brightness, 1 - brightness), dim=-1)


def test_generate_images_decodes_and_reranks():
    model = tiny_model()
    text = text_ids(model.config, batch=3)
    torch.manual_seed(0)
    plain = model.generate_images(text, filter_thres=0.0)
    torch.manual_seed(0)
    ranked = model.generate_images(text, filter_thres=0.0, reranker=StandInReranker())
    size = model.config.vae_config.image_size
    assert len(plain.images) == 3 and plain.images[0].size == (size, size)
    assert plain.pixel_values.shape == (3, 3, size, size)
    assert torch.equal(ranked.image_ids, plain.image_ids)  # one image per prompt: the prompts keep their order
    reranker = StandInReranker()
    text_features = torch.nn.functional.normalize(reranker.get_text_features(text), dim=-1)
    image_features = torch.nn.functional.normalize(
        reranker.get_image_features(model.vae_to_unit_range(ranked.pixel_values)), dim=-1)
    assert max_abs_diff(ranked.scores, (text_features * image_features).sum(-1)) <= 1e-6


def test_generate_rejects_bad_sampling_arguments():
    model = tiny_model()
    text = text_ids(model.config)
    with pytest.raises(ValueError, match="filter_thres"):
        model.generate(text, filter_thres=1.0)
    with pytest.raises(ValueError, match="filter_thres"):
        model.generate(text, filter_thres=-0.1)
    with pytest.raises(ValueError, match="generation_mode"):
        model.generate(text, generation_mode="text")
    with pytest.raises(ValueError, match="num_init_img_tokens"):
        model.generate(text, init_image=pixels(model.config.vae_config), num_init_img_tokens=model.config.image_seq_len)


def test_generate_rejects_bad_guidance_and_priming_arguments():
    model = tiny_model()
    text, vae = text_ids(model.config), model.config.vae_config
    with pytest.raises(ValueError, match="init_image has batch size 1 but input_ids has 2"):
        model.generate(text, init_image=pixels(vae, batch=1))
    with pytest.raises(ValueError, match=r"init_image must have shape \(batch, 3, 32, 32\)"):
        model.generate(text, init_image=pixels(vae)[0])
    with pytest.raises(ValueError, match="num_init_img_tokens=3 primes with the codes of init_image: pass init_image"):
        model.generate(text, num_init_img_tokens=3)
    with pytest.raises(ValueError, match="cond_scale must be a finite float .* got nan"):
        model.generate(text, cond_scale=float("nan"))
    with pytest.raises(TypeError, match="cond_scale must be a float .* got '2'"):
        model.generate(text, cond_scale="2")
    torch.manual_seed(0)
    expected = model.generate(text, cond_scale=2.0, do_sample=False)
    assert torch.equal(model.generate(text, cond_scale=torch.tensor(2.0), do_sample=False), expected)


def tiny_x_clip_for(model, **overrides):
    """A random tiny x-clip over `model`'s text vocabulary and image size (a reranker)."""
    from hf_mm.models.x_clip import XClipConfig, XClipModel

    tower = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16)
    torch.manual_seed(0)
    return XClipModel(XClipConfig(
        text_config=dict(vocab_size=model.config.num_text_tokens, max_position_embeddings=16, **tower),
        vision_config=dict(image_size=model.config.vae_config.image_size, patch_size=8, patch_dropout=0.0, **tower),
        projection_dim=16, **overrides,
    )).eval()


def test_reranking_with_hf_mm_x_clip():
    model = tiny_model()
    clip = tiny_x_clip_for(model)
    text = text_ids(model.config, batch=3)
    torch.manual_seed(0)
    plain = model.generate_images(text, filter_thres=0.0, num_return_sequences=2)
    torch.manual_seed(0)
    ranked = model.generate_images(text, filter_thres=0.0, num_return_sequences=2, reranker=clip)
    with torch.no_grad():
        images = model.vae_to_unit_range(plain.pixel_values)
        expected = (clip.get_text_features(text.repeat_interleave(2, 0)) * clip.get_image_features(images)).sum(-1)
    order = _per_prompt_order(expected, 2)  # x-clip's features are normalised latents
    assert max_abs_diff(ranked.scores, expected[order]) <= 1e-5
    assert torch.equal(ranked.image_ids, plain.image_ids[order])


class MismatchedReranker(torch.nn.Module):
    """Pooled features of different widths for text and images."""

    def get_text_features(self, input_ids):
        return torch.ones(input_ids.shape[0], 3)

    def get_image_features(self, pixel_values):
        return torch.ones(pixel_values.shape[0], 2)


def test_reranker_with_token_level_features_is_rejected_clearly():
    """x-clip with use_all_token_embeds (FILIP) returns token features (b, n, l) / (b, p, l): the cosine score needs
    one pooled vector per text and per image, so the reranker is refused with a ValueError naming the shapes
    (it used to fail inside the score with a broadcasting RuntimeError)."""
    model = tiny_model()
    filip = tiny_x_clip_for(model, use_all_token_embeds=True)
    text = text_ids(model.config, batch=2)
    with pytest.raises(ValueError, match=r"reranker .*pooled .*get_text_features returned shape \(4, \d+, 16\) "
                                         r"and get_image_features \(4, \d+, 16\).*use_all_token_embeds"):
        model.generate_images(text, filter_thres=0.0, num_return_sequences=2, reranker=filip)
    with pytest.raises(ValueError, match=r"reranker .*shape \(2, 3\) and get_image_features \(2, 2\)"):
        model.generate_images(text, filter_thres=0.0, reranker=MismatchedReranker())


def _greedy(model, text):
    return model.generate(text, do_sample=False)


def test_generation_config_holds_the_sampling_defaults_and_is_honoured(tmp_path):
    """transformers' precedence: kwargs > `generation_config=` argument > `model.generation_config`."""
    from transformers import GenerationConfig

    model = tiny_model()
    text = text_ids(model.config)
    greedy = _greedy(model, text)
    assert model.generation_config.do_sample is True
    assert model.generation_config.top_k == int(0.5 * model.config.vocab_size)  # dalle-pytorch's filter_thres=0.5
    for seed in (0, 1):  # a passed greedy config wins over the model's sampling default
        torch.manual_seed(seed)
        assert torch.equal(model.generate(text, generation_config=GenerationConfig(do_sample=False)), greedy)
    torch.manual_seed(0)  # ... and a kwarg wins over the passed config (filter_thres=0 -> top_k = V: sampling)
    sampled = model.generate(text, generation_config=GenerationConfig(do_sample=False), do_sample=True,
                             filter_thres=0.0)
    assert not torch.equal(sampled, greedy)
    model.generation_config.top_k = 1  # the model's own config is read, not replaced
    torch.manual_seed(0)
    assert torch.equal(model.generate(text), greedy)
    model.generation_config.update(do_sample=False, top_k=None)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.generation_config.do_sample is False and loaded.generation_config.top_k is None
    torch.manual_seed(0)
    assert torch.equal(loaded.generate(text), greedy)


def test_filter_thres_is_an_explicit_top_k():
    model = tiny_model()
    text = text_ids(model.config)
    model.generation_config.top_k = 1  # filter_thres overrides it only when given
    torch.manual_seed(0)
    assert not torch.equal(model.generate(text, filter_thres=0.0), _greedy(model, text))
    with pytest.raises(ValueError, match="filter_thres or top_k"):
        model.generate(text, filter_thres=0.5, top_k=3)


def test_scores_and_logits_index_the_returned_codes():
    """`sequences`, `scores` and `logits` all index the codebook, so transformers' helpers work on them."""
    model = tiny_model()
    config = model.config
    text = text_ids(config)
    out = model.generate(text, do_sample=False, output_scores=True, output_logits=True, return_dict_in_generate=True)
    assert len(out.scores) == len(out.logits) == config.image_seq_len
    assert out.scores[0].shape == out.logits[0].shape == (2, config.vae_config.num_tokens)
    assert torch.equal(torch.stack(out.scores, 1).argmax(-1), out.sequences)
    transition = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    expected = torch.stack(out.logits, 1).log_softmax(-1).gather(-1, out.sequences[..., None])[..., 0]
    assert torch.isfinite(transition).all() and max_abs_diff(transition, expected) <= 1e-5
    primed = model.generate(text, init_image=pixels(config.vae_config), num_init_img_tokens=10, do_sample=False,
                            output_scores=True, return_dict_in_generate=True)
    assert primed.sequences.shape == (2, config.image_seq_len) and len(primed.scores) == config.image_seq_len - 10
    assert torch.isfinite(model.compute_transition_scores(primed.sequences, primed.scores)).all()
    beams = model.generate(text, do_sample=False, num_beams=2, output_scores=True, return_dict_in_generate=True)
    transition = model.compute_transition_scores(beams.sequences, beams.scores, beams.beam_indices)
    assert max_abs_diff(transition.sum(-1) / config.image_seq_len, beams.sequences_scores) <= 1e-5


class CollectingStreamer:
    def __init__(self):
        self.ids, self.ended = [], False

    def put(self, value):
        self.ids += value.reshape(-1).tolist()

    def end(self):
        self.ended = True


@pytest.mark.parametrize("primed", [False, True], ids=["text-prompt", "primed"])
def test_streamer_receives_the_returned_codes(primed):
    model = tiny_model()
    text = text_ids(model.config, batch=1)
    kwargs = dict(init_image=pixels(model.config.vae_config, batch=1), num_init_img_tokens=10) if primed else {}
    streamer = CollectingStreamer()
    codes = model.generate(text, do_sample=False, streamer=streamer, **kwargs)
    assert streamer.ids == codes[0].tolist() and streamer.ended


class PromptAwareReranker(torch.nn.Module):
    """Features that depend on the prompt (first token parity) and on the image brightness."""

    def get_text_features(self, input_ids):
        return torch.nn.functional.one_hot(input_ids[:, 0] % 2, 2).float() + 0.1

    def get_image_features(self, pixel_values):
        brightness = pixel_values.mean(dim=(1, 2, 3))
        return torch.stack((brightness, 1 - brightness), dim=-1)


def test_rerank_scores_each_image_against_its_prompt_and_sorts_per_prompt():
    model = tiny_model()
    with torch.no_grad():  # images of visibly different brightness (the random tiny dVAE decodes to ~0.5 grey)
        for param in model.vae.decoder.parameters():
            param.mul_(10)
    text = text_ids(model.config, batch=2)
    text[:, 0] = torch.tensor([3, 2])  # the second prompt scores higher: a global sort would put it first
    reranker = PromptAwareReranker()
    torch.manual_seed(0)
    plain = model.generate_images(text, num_return_sequences=3, filter_thres=0.0)
    torch.manual_seed(0)
    ranked = model.generate_images(text, num_return_sequences=3, filter_thres=0.0, reranker=reranker)
    assert len(ranked.images) == 6 and ranked.scores.shape == (6,)
    text_features = torch.nn.functional.normalize(reranker.get_text_features(text.repeat_interleave(3, 0)), dim=-1)
    image_features = torch.nn.functional.normalize(
        reranker.get_image_features(model.vae_to_unit_range(plain.pixel_values)), dim=-1)
    expected = (text_features * image_features).sum(-1)
    order = _per_prompt_order(expected, 3)
    assert not torch.equal(order, expected.argsort(descending=True))  # a global sort would mix the prompts
    assert max_abs_diff(ranked.scores, expected[order]) <= 1e-6
    assert torch.equal(ranked.image_ids, plain.image_ids[order])


def _per_prompt_order(scores, k):
    """Indices sorting each consecutive group of `k` scores best first, groups kept in place."""
    return torch.cat([group.argsort(descending=True) + i * k for i, group in enumerate(scores.split(k))])


# generate() options that DALL-E's fixed-length image decoding cannot use: each is refused before any forward pass,
# by name and with the reason (they used to fail deep inside, e.g. assistant_model with an error about a
# `max_new_tokens` the caller never passed, guidance_scale / prefill_chunk_size with an input_ids shape error)
UNSUPPORTED_OPTIONS = {
    "assistant_model": (lambda model: model, r"assistant_model is not supported by DalleForImageGeneration\.generate"
                        r"\(\): .*whole image.*codebook indices"),
    "assistant_early_exit": (lambda model: 1, r"assistant_early_exit=1 is not supported .*whole image"),
    "prompt_lookup_num_tokens": (lambda model: 3, r"prompt_lookup_num_tokens=3 is not supported .*image_seq_len"),
    "use_mtp": (lambda model: True, r"use_mtp=True is not supported .*multi-token"),
    "guidance_scale": (lambda model: 3.0, r"guidance_scale=3\.0 is not supported .*use cond_scale"),
    "prefill_chunk_size": (lambda model: 2, r"prefill_chunk_size=2 is not supported .*text prompt .*one piece"),
}


def _count_forward_calls(model):
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_OPTIONS))
@pytest.mark.parametrize("batch", [1, 2])
def test_unsupported_generate_options_are_refused_by_name_up_front(name, batch):
    model = tiny_model()
    value, message = UNSUPPORTED_OPTIONS[name]
    calls = _count_forward_calls(model)
    with pytest.raises(ValueError, match=message) as error:
        model.generate(text_ids(model.config, batch=batch), do_sample=False, **{name: value(model)})
    assert "max_new_tokens" not in str(error.value) and not calls


@pytest.mark.parametrize("source", ["generation_config", "model.generation_config"])
@pytest.mark.parametrize("name,value", [("guidance_scale", 2.0), ("prompt_lookup_num_tokens", 3),
                                        ("prefill_chunk_size", 2)])
def test_unsupported_options_in_a_generation_config_are_refused_too(source, name, value):
    """transformers' precedence holds: kwargs > `generation_config=` > `model.generation_config`."""
    from transformers import GenerationConfig

    model = tiny_model()
    text = text_ids(model.config, batch=1)
    config = GenerationConfig(do_sample=False, **{name: value})
    kwargs = {}
    if source == "generation_config":
        kwargs["generation_config"] = config
    else:
        model.generation_config = config
    with pytest.raises(ValueError, match=rf"{name}={value} is not supported"):
        model.generate(text, **kwargs)
    unset = model.generate(text, **kwargs, **{name: None})  # a kwarg unsets it
    assert torch.equal(unset, _greedy(tiny_model(), text))


def test_options_that_change_nothing_still_run():
    """guidance_scale=1 (no guidance) and cache_implementation='dynamic' (DALL-E's own cache) are accepted."""
    model = tiny_model()
    text = text_ids(model.config)
    greedy = _greedy(model, text)
    assert torch.equal(model.generate(text, do_sample=False, guidance_scale=1.0), greedy)
    assert torch.equal(model.generate(text, do_sample=False, cache_implementation="dynamic"), greedy)


@pytest.mark.parametrize("cache_implementation", ["static", "offloaded"])
def test_static_cache_refusal_describes_dalle_cache(cache_implementation):
    """DALL-E has no cross-attention: the message names what its lazily grown cache holds."""
    model = tiny_model()
    with pytest.raises(ValueError, match=rf"cache_implementation='{cache_implementation}' is not supported by "
                                         r"DalleForImageGeneration.*token-shift history") as error:
        model.generate(text_ids(model.config), cache_implementation=cache_implementation)
    assert "cross-attention" not in str(error.value)


def test_dalle_cannot_be_another_models_assistant():
    """A main model with DALL-E's vocabulary size would draft through DALL-E's generate(): refused by name."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dalle = tiny_model()
    torch.manual_seed(0)
    main = LlamaForCausalLM(LlamaConfig(vocab_size=dalle.config.vocab_size, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()
    with pytest.raises(ValueError, match=r"is_assistant=True is not supported .*cannot be another model's "
                                         r"assistant_model") as error:
        main.generate(torch.tensor([[1, 5, 6, 7, 8]]), assistant_model=dalle, do_sample=False, max_new_tokens=4)
    assert "max_new_tokens" not in str(error.value)
