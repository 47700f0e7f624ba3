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
    assert torch.all(ranked.scores[:-1] >= ranked.scores[1:])
    assert sorted(plain.image_ids.tolist()) == sorted(ranked.image_ids.tolist())
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


def test_reranking_with_hf_mm_x_clip():
    from hf_mm.models.x_clip import XClipConfig, XClipModel

    model = tiny_model()
    size = model.config.vae_config.image_size
    tower = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16)
    torch.manual_seed(0)
    clip = XClipModel(XClipConfig(
        text_config=dict(vocab_size=model.config.num_text_tokens, max_position_embeddings=16, **tower),
        vision_config=dict(image_size=size, patch_size=8, patch_dropout=0.0, **tower), projection_dim=16,
    )).eval()
    text = text_ids(model.config, batch=3)
    torch.manual_seed(0)
    plain = model.generate_images(text, filter_thres=0.0)
    torch.manual_seed(0)
    ranked = model.generate_images(text, filter_thres=0.0, reranker=clip)
    with torch.no_grad():
        images = model.vae_to_unit_range(plain.pixel_values)
        expected = (clip.get_text_features(text) * clip.get_image_features(images)).sum(-1)  # normalised latents
    order = expected.argsort(descending=True)
    assert max_abs_diff(ranked.scores, expected[order]) <= 1e-5
    assert torch.equal(ranked.image_ids, plain.image_ids[order])
