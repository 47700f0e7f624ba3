"""CoCa generate(): exact against a naive decode over the reference, cached == uncached, image encoded once."""

import pytest
import torch
from conversion.coca_pytorch import convert as convert_coca_pytorch
from conversion.open_clip_coca import convert as convert_open_clip
from transformers import TextIteratorStreamer

from hf_mm.models.coca import CocaModel

from .references import coca_pytorch_reference, open_clip_reference, tiny_coca_config


@torch.no_grad()
def naive_greedy(step_logits, start, steps):
    """Full-prefix recompute each step: what open_clip's generate() does (it has no cache)."""
    out = start
    for _ in range(steps):
        next_token = step_logits(out)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat((out, next_token), dim=1)
    return out


@pytest.mark.parametrize("name", ["attn_pool", "quick_gelu_layer_scale"])
def test_greedy_equals_naive_decode_over_open_clip(name):
    ref, image_size, vocab, ctx = open_clip_reference(name)
    model = convert_open_clip(ref, bos_token_id=1, eos_token_id=vocab + 5)  # eos never sampled: full length
    images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    start = torch.ones(2, 1, dtype=torch.long)
    steps = ctx - 2
    expected = naive_greedy(lambda t: ref(images, t, output_labels=False)["logits"], start, steps)
    with torch.no_grad():
        image_latent, image_embs = ref._encode_image(images)
    ours = model.generate(pixel_values=images, max_new_tokens=steps, do_sample=False)
    assert torch.equal(ours, expected)
    assert image_embs.shape[1] > 0


def test_greedy_equals_naive_decode_over_coca_pytorch():
    ref, _ = coca_pytorch_reference("encoder_free")
    model = convert_coca_pytorch(ref, bos_token_id=3, eos_token_id=1000)
    tokens = torch.randn(2, 7, model.config.image_embed_dim, generator=torch.Generator().manual_seed(0))
    start = torch.full((2, 1), 3, dtype=torch.long)
    expected = naive_greedy(lambda t: ref(t, image_tokens=tokens), start, 8)
    assert torch.equal(model.generate(image_embeds=tokens, max_new_tokens=8, do_sample=False), expected)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CocaModel(tiny_coca_config()).eval()


def _images(n=2, seed=0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_cached_equals_uncached_greedy_beam_and_sampling(tiny):
    px = _images()
    kw = dict(pixel_values=px, max_new_tokens=10, min_new_tokens=10)
    assert torch.equal(tiny.generate(**kw, do_sample=False), tiny.generate(**kw, do_sample=False, use_cache=False))
    beam = tiny.generate(**kw, num_beams=3, num_return_sequences=2)
    assert beam.shape == (4, 11)
    assert torch.equal(beam, tiny.generate(**kw, num_beams=3, num_return_sequences=2, use_cache=False))
    sample = dict(do_sample=True, top_k=10, top_p=0.9, temperature=0.7, repetition_penalty=1.3)
    torch.manual_seed(5)
    s1 = tiny.generate(**kw, **sample)
    torch.manual_seed(5)
    s2 = tiny.generate(**kw, **sample, use_cache=False)
    assert torch.equal(s1, s2)


def test_prompted_generation_with_left_padding_matches_unpadded(tiny):
    px = _images(2, seed=1)
    prompts = torch.tensor([[0, 0, 1, 7, 9], [1, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    batched = tiny.generate(input_ids=prompts, attention_mask=mask, pixel_values=px, max_new_tokens=6,
                            min_new_tokens=6, do_sample=False)
    alone = tiny.generate(input_ids=prompts[:1, 2:], pixel_values=px[:1], max_new_tokens=6, min_new_tokens=6,
                          do_sample=False)
    assert torch.equal(batched[0, 5:], alone[0, 3:])
    uncached = tiny.generate(input_ids=prompts, attention_mask=mask, pixel_values=px, max_new_tokens=6,
                             min_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(batched, uncached)


def test_image_is_encoded_once_per_call(tiny, monkeypatch):
    calls = []
    forward = tiny.vision_model.forward
    monkeypatch.setattr(tiny.vision_model, "forward", lambda px: calls.append(px.shape[0]) or forward(px))
    tiny.generate(pixel_values=_images(), max_new_tokens=5, num_beams=2)
    assert calls == [2]  # one call, one row per image: the beams share it
    calls.clear()
    tiny.generate(pixel_values=_images(), max_new_tokens=5, num_return_sequences=3, do_sample=True)
    assert calls == [2]
    calls.clear()
    tiny.generate(pixel_values=_images(), max_new_tokens=5, use_cache=False)
    assert calls == [2]


def test_beams_share_the_image_cross_attention(tiny, monkeypatch):
    """Beam rows cross-attend to one K/V entry per image, and get the logits of an explicitly expanded batch."""
    rows = []
    attn = tiny.decoder_layers[0].cross_block.attn
    project = attn.project_key_value
    monkeypatch.setattr(attn, "project_key_value", lambda ctx: rows.append(ctx.shape[0]) or project(ctx))
    out = tiny.generate(pixel_values=_images(), max_new_tokens=5, min_new_tokens=5, num_beams=3,
                        return_dict_in_generate=True)
    assert rows == [2] and out.past_key_values.cross_attention_cache.layers[attn.layer_idx].keys.shape[0] == 2
    ids = out.sequences.repeat_interleave(2, dim=0)  # 4 rows, 2 per image
    px = _images()
    with torch.no_grad():
        grouped = tiny(input_ids=ids, pixel_values=px, sequences_per_image=2, use_cache=True).logits
        expanded = tiny(input_ids=ids, pixel_values=px.repeat_interleave(2, dim=0), use_cache=True).logits
    assert torch.allclose(grouped, expanded, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_sequences_per_image_is_checked(tiny, bad):
    with pytest.raises(ValueError, match="sequences_per_image must be an integer >= 1"):
        tiny(input_ids=torch.ones(2, 3, dtype=torch.long), pixel_values=_images(), sequences_per_image=bad)
    with pytest.raises(ValueError, match="expected 6"):
        tiny(input_ids=torch.ones(4, 3, dtype=torch.long), pixel_values=_images(), sequences_per_image=3)
    with pytest.raises(ValueError, match="one caption per image"):
        tiny(input_ids=torch.ones(4, 3, dtype=torch.long), pixel_values=_images(), sequences_per_image=2,
             return_loss=True)


def test_cross_attention_kv_projected_once(tiny, monkeypatch):
    calls = []
    attn = tiny.decoder_layers[0].cross_block.attn
    project = attn.project_key_value
    monkeypatch.setattr(attn, "project_key_value", lambda ctx: calls.append(1) or project(ctx))
    tiny.generate(pixel_values=_images(), max_new_tokens=6, min_new_tokens=6)
    assert len(calls) == 1


def test_streamer_and_eos(tiny):
    class Collect:
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.clone())

        def end(self):
            self.chunks.append("end")

    streamer = Collect()
    out = tiny.generate(pixel_values=_images(1), max_new_tokens=4, min_new_tokens=4, streamer=streamer)
    assert streamer.chunks[-1] == "end"
    assert torch.equal(torch.cat([c.reshape(-1) for c in streamer.chunks[:-1]]), out[0])
    assert TextIteratorStreamer is not None
    # forcing the eos id makes generation stop right away
    eos = int(out[0, 1])
    short = tiny.generate(pixel_values=_images(1), max_new_tokens=4, eos_token_id=eos)
    assert short.shape[1] == 2


def test_default_max_length_is_capped_to_the_learned_position_table():
    """Without max_new_tokens, transformers' default max_length (20) exceeds a 12-position table: generation stops
    at the table's end instead of failing there."""
    import tiny_models as tm

    model = tm.build("coca")
    assert model.config.text_config.max_position_embeddings == 12
    batch = tm.generate_inputs("coca", model)
    out = model.generate(**batch, do_sample=False, min_new_tokens=20 - batch["input_ids"].shape[1])
    assert out.shape[1] == 12


def test_prompts_become_caption_prefixes_eos_dropped_and_left_padded():
    """open_clip's tokenizer ends every text (also "") with <end_of_text>, and processors pad on the right: a
    caption must continue each prompt's last real token (it used to continue after the end-of-text token, and
    batched prompts of different lengths continued from padding)."""
    import tiny_models as tm

    model = tm.build("coca")
    bos, eos, pad = 1, 2, 0
    images = tm.inputs("coca", model)["pixel_values"]
    kwargs = dict(do_sample=False, max_new_tokens=4, min_new_tokens=4)

    def new_tokens(out, width):
        return out[:, width:]

    with torch.no_grad():
        alone = [model.generate(pixel_values=images[i:i + 1], input_ids=torch.tensor([p]), **kwargs)
                 for i, p in enumerate(([bos, 5, 6], [bos]))]
        # the same prompts as a tokenizer with EOS and right padding gives them
        ids = torch.tensor([[bos, 5, 6, eos], [bos, eos, pad, pad]])
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
        batched = model.generate(pixel_values=images, input_ids=ids, attention_mask=mask, **kwargs)
    assert batched.shape == (2, 8)  # the prompt keeps its width: out[:, n:] are the new tokens
    assert torch.equal(new_tokens(batched, 4)[0], new_tokens(alone[0], 3)[0])
    assert torch.equal(new_tokens(batched, 4)[1], new_tokens(alone[1], 1)[0])
    ids_, mask_ = model.caption_prompt(ids, mask)
    assert ids_.tolist() == [[pad, bos, 5, 6], [pad, pad, pad, bos]] and mask_.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    plain = torch.tensor([[bos, 5]])
    assert model.caption_prompt(plain)[0] is plain and model.caption_prompt(plain)[1] is None  # nothing to change


def test_without_attention_mask_padding_is_the_pad_token_id(tiny):
    """Like both references and transformers' generate(), a missing `attention_mask` means
    `input_ids != pad_token_id`: every entry point gives what the explicit mask gives, and unpadded text is
    unchanged."""
    px, pad = _images(2, seed=3), tiny.config.text_config.pad_token_id
    ids = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 4, pad, pad]])
    mask = (ids != pad).long()
    with torch.no_grad():
        derived, given = tiny(input_ids=ids, pixel_values=px), tiny(input_ids=ids, pixel_values=px, attention_mask=mask)
        for name in ("logits", "text_embeds", "logits_per_image"):
            assert torch.equal(getattr(derived, name), getattr(given, name)), name
        assert torch.equal(tiny(input_ids=ids, pixel_values=px, labels=ids).loss,
                           tiny(input_ids=ids, pixel_values=px, attention_mask=mask, labels=ids).loss)
        assert torch.equal(tiny.get_text_features(ids), tiny.get_text_features(ids, attention_mask=mask))
        assert torch.equal(tiny(input_ids=ids[:1], pixel_values=px[:1]).logits,
                           tiny(input_ids=ids[:1], pixel_values=px[:1], attention_mask=mask[:1]).logits)
        cached = tiny(input_ids=ids, pixel_values=px, use_cache=True).logits
        assert torch.equal(cached, tiny(input_ids=ids, pixel_values=px, attention_mask=mask, use_cache=True).logits)
    kw = dict(pixel_values=px, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    out = tiny.generate(input_ids=ids, **kw)
    assert torch.equal(out, tiny.generate(input_ids=ids, attention_mask=mask, **kw))
    assert torch.equal(out, tiny.generate(input_ids=ids, use_cache=False, **kw))


def test_no_padding_is_derived_when_the_pad_id_is_also_eos():
    """pad == EOS (as GPT-style vocabularies set it): a text ending with EOS is real text, as in generate()."""
    torch.manual_seed(0)
    config = tiny_coca_config()
    config.text_config.pad_token_id = config.text_config.eos_token_id
    model = CocaModel(config).eval()
    ids = torch.tensor([[1, 5, 6, config.text_config.eos_token_id]])
    with torch.no_grad():
        assert torch.equal(model.get_text_features(ids), model.get_text_features(ids, attention_mask=torch.ones_like(ids)))


class _ForceTokenAt:
    """Logits processor: forces `token` as the token generated at sequence length `length`, forbids it elsewhere."""

    def __init__(self, length, token):
        self.length, self.token = length, token

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        if input_ids.shape[1] == self.length:
            scores.fill_(-1e4)
            scores[:, self.token] = 0.0
        else:
            scores[:, self.token] = -1e4
        return scores


GENERATED_PAD_STRATEGIES = {
    "greedy": dict(do_sample=False),
    "beams": dict(do_sample=False, num_beams=3, num_return_sequences=2),
    "sampling": dict(do_sample=True, top_k=20, temperature=0.8),
    "beam_sampling": dict(do_sample=True, num_beams=3),
}


@pytest.mark.parametrize("strategy", list(GENERATED_PAD_STRATEGIES))
@pytest.mark.parametrize("family", ["coca", "coca_lucidrains"])
def test_generated_pad_id_is_a_real_token_cached_equals_uncached(family, strategy):
    """A generated pad id is a real token (for converted open_clip CoCa, pad id 0 is also the BPE token "!"):
    generate() drops an all-ones attention_mask, so an uncached step must not re-derive padding from the pad id
    (it did, and use_cache=False then diverged from use_cache=True after a generated pad)."""
    import tiny_models as tm
    from transformers import LogitsProcessorList

    model = tm.build(family)
    batch = tm.generate_inputs(family, model)
    pad = model.config.text_config.pad_token_id
    force = LogitsProcessorList([_ForceTokenAt(batch["input_ids"].shape[1] + 1, pad)])  # the 2nd new token
    kw = dict(batch, max_new_tokens=6, min_new_tokens=6, logits_processor=force, return_dict_in_generate=True,
              output_logits=True, **GENERATED_PAD_STRATEGIES[strategy])
    runs = []
    for cache in (True, False):
        torch.manual_seed(7)
        with torch.no_grad():
            runs.append(model.generate(use_cache=cache, **kw))
    cached, uncached = runs
    assert (cached.sequences[:, batch["input_ids"].shape[1] + 1] == pad).all()
    assert torch.equal(cached.sequences, uncached.sequences)
    for step, (a, b) in enumerate(zip(cached.logits, uncached.logits)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, step=step: f"step {step}: {m}")
    if strategy == "greedy":  # and a naive full-recompute decode that treats every token as real agrees
        image = {k: v for k, v in batch.items() if k != "input_ids"}
        seq = batch["input_ids"]
        with torch.no_grad():
            for _ in range(6):
                logits = model(input_ids=seq, attention_mask=torch.ones_like(seq), **image).logits[:, -1]
                seq = torch.cat((seq, force(seq, logits).argmax(-1, keepdim=True)), dim=1)
        assert torch.equal(cached.sequences, seq)


def test_explicit_all_ones_mask_keeps_prompt_pad_ids_as_tokens(tiny):
    """An explicit all-ones attention_mask says every prompt token is real, also one with the pad id ("!" in
    open_clip's vocabulary): generate() drops that mask, which must not turn the pad id into padding (cached or
    not: the same tokens and logits as a naive decode with an explicit all-ones mask)."""
    px, pad = _images(1, seed=4), tiny.config.text_config.pad_token_id
    ids = torch.tensor([[1, pad, 9]])
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=px, max_new_tokens=5,
              min_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_logits=True)
    runs = [tiny.generate(use_cache=cache, **kw) for cache in (True, False)]
    seq, expected = ids, []
    with torch.no_grad():
        for _ in range(5):
            expected.append(tiny(input_ids=seq, pixel_values=px, attention_mask=torch.ones_like(seq)).logits[:, -1])
            seq = torch.cat((seq, expected[-1].argmax(-1, keepdim=True)), dim=1)
    for run in runs:
        assert torch.equal(run.sequences, seq)
        for got, want in zip(run.logits, expected):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("prompt", "max_new_tokens"), [
    ([1, 5, 6, 7, 8, 5, 6, 7, 8, 5], 2),  # the lookup proposes 3 tokens where 1 fits
    ([1, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6], 1),  # room for the model's own token only
    ([1, 5, 6, 5, 6, 5, 6, 5], 4),
])
def test_prompt_lookup_near_the_position_limit_equals_greedy(prompt, max_new_tokens):
    """transformers' prompt-lookup candidates can run past max_length; with a learned position table (12 here) the
    forward over them used to fail with a position error. The candidates are cropped to what can be kept."""
    import tiny_models as tm

    model = tm.build("coca")
    assert model.config.text_config.max_position_embeddings == 12
    ids = torch.tensor([prompt])
    px = tm.generate_inputs("coca", model)["pixel_values"][:1]
    kw = dict(input_ids=ids, pixel_values=px, do_sample=False, max_new_tokens=max_new_tokens,
              min_new_tokens=max_new_tokens)
    plain = model.generate(**kw)
    assert plain.shape[1] == len(prompt) + max_new_tokens
    assert torch.equal(model.generate(prompt_lookup_num_tokens=3, **kw), plain)
    # the default max_length (capped to the table) as well
    kw.pop("max_new_tokens"), kw.pop("min_new_tokens")
    assert torch.equal(model.generate(prompt_lookup_num_tokens=5, **kw), model.generate(**kw))


def test_guidance_scale_is_refused_up_front(tiny):
    """CoCa has no unconditional (image-free) branch for classifier-free guidance: guidance_scale is refused by name
    (it used to fail inside transformers' CFG processor with "pass exactly one of pixel_values ...")."""
    from transformers import GenerationConfig

    with pytest.raises(ValueError, match="guidance_scale"):
        tiny.generate(pixel_values=_images(), max_new_tokens=3, guidance_scale=2.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        tiny.generate(pixel_values=_images(), generation_config=GenerationConfig(guidance_scale=1.5, max_new_tokens=3))
    out = tiny.generate(pixel_values=_images(), max_new_tokens=3, min_new_tokens=3, guidance_scale=1.0)  # no-op
    assert torch.equal(out, tiny.generate(pixel_values=_images(), max_new_tokens=3, min_new_tokens=3))


@pytest.mark.parametrize("force_at", [None, 1, 3])  # the new token that is forced to be the pad id
@pytest.mark.parametrize("family", ["coca", "coca_lucidrains"])
def test_assisted_and_prompt_lookup_generation_equal_greedy_with_a_generated_pad(family, force_at):
    """Assisted generation (batch 1) gives plain greedy's tokens, also after a generated pad id: the assistant's
    generate() gets the running sequence, whose pad id is a real token (it used to be made padding and moved to the
    front as a prompt's padding is, so the candidates were verified on a reordered sequence)."""
    import tiny_models as tm
    from transformers import LogitsProcessorList

    model = tm.build(family)
    batch = {k: v[:1] for k, v in tm.generate_inputs(family, model).items()}
    pad, n = model.config.text_config.pad_token_id, batch["input_ids"].shape[1]
    force = LogitsProcessorList([_ForceTokenAt(n + force_at, pad)] if force_at else [])
    kw = dict(batch, do_sample=False, max_new_tokens=8, min_new_tokens=8, logits_processor=force)
    plain = model.generate(**kw)
    if force_at:
        assert plain[0, n + force_at] == pad
    for helper in (model, tm.build(family, seed=1)):
        assert torch.equal(model.generate(assistant_model=helper, **kw), plain)
    assert torch.equal(model.generate(prompt_lookup_num_tokens=2, **kw), plain)
