"""Native generate(): cached == uncached, media encoded once, masks grow with the sequence."""

import pytest
import torch
from transformers import TextIteratorStreamer

import tiny_models

from .helpers import tiny_model

MEDIA = 3


def _ids(batch, length, media_positions, seed=0):
    ids = torch.randint(4, 40, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, list(media_positions)] = MEDIA
    return ids


def _px(*leading, seed=1):
    return torch.randn(*leading, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _gen(model, **kw):
    kw.setdefault("max_new_tokens", 6)
    kw.setdefault("min_new_tokens", 6)
    return model.generate(pad_token_id=0, eos_token_id=None, **kw)


@pytest.mark.parametrize("num_media", [1, 3])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_equals_uncached(model, num_media, num_beams):
    positions = [1, 5, 8][:num_media]
    kw = dict(input_ids=_ids(2, 10, positions), pixel_values=_px(2, num_media), num_beams=num_beams, do_sample=False)
    cached = _gen(model, **kw)
    assert torch.equal(cached, _gen(model, use_cache=False, **kw))


def test_cached_equals_uncached_videos(model):
    kw = dict(input_ids=_ids(2, 9, [0, 4]), pixel_values=_px(2, 2, 3), do_sample=False)
    assert torch.equal(_gen(model, **kw), _gen(model, use_cache=False, **kw))


def test_left_padding_in_a_batch(model):
    long, short = _ids(1, 10, [2, 6], seed=4), _ids(1, 7, [1, 4], seed=5)
    ids = torch.cat((long, torch.cat((torch.zeros(1, 3, dtype=torch.long), short), dim=1)))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    px = _px(2, 2)
    for beams in (1, 2):
        kw = dict(input_ids=ids, attention_mask=mask, pixel_values=px, num_beams=beams, do_sample=False)
        batched = _gen(model, **kw)
        assert torch.equal(batched, _gen(model, use_cache=False, **kw))
    alone = _gen(model, input_ids=short, pixel_values=px[1:], do_sample=False)
    greedy = _gen(model, input_ids=ids, attention_mask=mask, pixel_values=px, do_sample=False)
    assert torch.equal(greedy[1, 10:], alone[0, 7:])


def test_media_encoded_once_per_call(model, monkeypatch):
    calls = []
    original = model.model.get_media_latents

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model.model, "get_media_latents", counting)
    kw = dict(input_ids=_ids(2, 8, [1]), pixel_values=_px(2, 1), do_sample=False)
    _gen(model, **kw)
    _gen(model, use_cache=False, **kw)
    _gen(model, num_beams=2, **kw)
    assert len(calls) == 3


@pytest.mark.parametrize("family", ["flamingo", "open_flamingo"])
def test_beams_share_the_media(family, monkeypatch):
    """generate() encodes each sample's media once for all its beams; the beam rows cross-attend to one K/V entry
    per sample and get the logits of an explicitly expanded batch."""
    model = tiny_models.build(family)
    prompt = tiny_models.generate_inputs(family, model)
    encoded = []
    original = model.model.get_media_latents
    monkeypatch.setattr(model.model, "get_media_latents",
                        lambda px=None, embeds=None: encoded.append(px.shape[0]) or original(px, embeds))
    out = model.generate(**prompt, max_new_tokens=4, min_new_tokens=4, num_beams=3, do_sample=False,
                         eos_token_id=None, return_dict_in_generate=True)
    assert encoded == [2]
    assert torch.equal(out.sequences, model.generate(**prompt, max_new_tokens=4, min_new_tokens=4, num_beams=3,
                                                     do_sample=False, eos_token_id=None, use_cache=False))
    ids, px = out.sequences.repeat_interleave(2, dim=0), prompt["pixel_values"]
    with torch.no_grad():
        grouped = model(input_ids=ids, pixel_values=px, sequences_per_image=2).logits
        expanded = model(input_ids=ids, pixel_values=px.repeat_interleave(2, dim=0)).logits
    assert torch.allclose(grouped, expanded, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="expected 6"):
        model(input_ids=ids, pixel_values=px, sequences_per_image=3)


def test_cross_attention_kv_projected_once(model, monkeypatch):
    calls = []
    attn = model.model.cross_attn_layers["0"].attn
    original = attn.project_key_value
    monkeypatch.setattr(attn, "project_key_value", lambda ctx: (calls.append(ctx.shape), original(ctx))[1])
    _gen(model, input_ids=_ids(2, 8, [1]), pixel_values=_px(2, 1), do_sample=False)
    assert len(calls) == 1


def test_new_tokens_attend_latest_media(model):
    """Generated tokens must see the last medium: changing only that image changes the continuation logits."""
    ids = _ids(1, 8, [1, 5])
    px = _px(1, 2)
    px2 = px.clone()
    px2[:, 1] = _px(1, 1, seed=9)[:, 0]
    out1 = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=3, do_sample=False,
                          output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    out2 = model.generate(input_ids=ids, pixel_values=px2, max_new_tokens=3, do_sample=False,
                          output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    assert not torch.allclose(out1.logits[1], out2.logits[1])
    # the raw step logits (before the default suppression of <image> / pad) equal a full recompute over the whole
    # sequence (growing media_time, not a stale mask)
    full = model(input_ids=out1.sequences, pixel_values=px).logits
    for step, logits in enumerate(out1.logits):
        torch.testing.assert_close(logits, full[:, 7 + step], atol=1e-5, rtol=1e-5)


def test_text_to_media_mask():
    from hf_mm.models.flamingo.cross_attention import media_time_from_ids, text_to_media_mask

    ids = torch.tensor([[5, 3, 6, 3, 7]])
    time = media_time_from_ids(ids, 3)
    assert time.tolist() == [[0, 1, 1, 2, 2]]
    mask, attends = text_to_media_mask(time, num_media=2, num_latents=2, only_immediate=True)
    assert attends[0, :, 0].tolist() == [False, True, True, True, True]
    assert mask[0, 0].int().tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    mask, _ = text_to_media_mask(time, num_media=2, num_latents=2, only_immediate=False)
    assert mask[0, 0, 3].int().tolist() == [1, 1, 1, 1]


def test_text_before_first_media_attends_nothing_without_nan():
    ids, px = _ids(2, 8, [6]), _px(2, 1)
    for immediate in (True, False):
        model = tiny_model(only_attend_immediate_media=immediate)
        closed = tiny_model(only_attend_immediate_media=immediate)
        for block in closed.model.cross_attn_layers.values():
            block.attn_gate.data.zero_()  # cross-attention output removed, gated feed-forward kept
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values=px).logits
            reference = closed(input_ids=ids, pixel_values=px).logits
        assert torch.isfinite(logits).all()
        # positions before the media token receive nothing from the cross-attention
        torch.testing.assert_close(logits[:, :6], reference[:, :6], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(logits[:, 6:], reference[:, 6:], atol=1e-3)


def test_sampling_cached_equals_uncached(model):
    kw = dict(input_ids=_ids(2, 8, [1, 4]), pixel_values=_px(2, 2), do_sample=True, top_k=10, top_p=0.9,
              temperature=0.8, repetition_penalty=1.3)
    torch.manual_seed(7)
    a = _gen(model, **kw)
    torch.manual_seed(7)
    b = _gen(model, use_cache=False, **kw)
    assert torch.equal(a, b)


def test_repetition_penalty(model):
    kw = dict(input_ids=_ids(1, 8, [1]), pixel_values=_px(1, 1), do_sample=False, max_new_tokens=10,
              min_new_tokens=10)
    plain, penalised = _gen(model, **kw), _gen(model, repetition_penalty=5.0, **kw)
    assert torch.equal(penalised, _gen(model, repetition_penalty=5.0, use_cache=False, **kw))
    repeats = [10 - len(set(seq[0, 8:].tolist())) for seq in (plain, penalised)]
    assert repeats[1] < repeats[0], repeats


def test_streamer_receives_every_token(model):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({f"w{i}": i for i in range(40)},
                                                                                unk_token="w0")))
    streamer = TextIteratorStreamer(tok)
    out = _gen(model, input_ids=_ids(1, 6, [1]), pixel_values=_px(1, 1), do_sample=False, streamer=streamer)
    text = "".join(streamer)
    assert text.split() == [f"w{i}" for i in out[0].tolist()]


def test_text_only_generate(model):
    kw = dict(input_ids=_ids(2, 6, []), do_sample=False)
    assert torch.equal(_gen(model, **kw), _gen(model, use_cache=False, **kw))


@pytest.mark.parametrize("family", ["flamingo", "open_flamingo"])
def test_media_and_pad_tokens_are_suppressed_by_default(family, tmp_path):
    """A head that strongly prefers `<image>`, then the pad token: by default generate() emits neither (before and
    after save -> from_pretrained, cached == uncached); a user can allow them per call or in the saved config."""
    from transformers import AutoModelForImageTextToText

    model = tiny_models.build(family)
    cfg = model.config
    media, pad = cfg.media_token_id, cfg.text_config.pad_token_id
    assert model.generation_config.suppress_tokens == [media, pad] == cfg.generation_suppressed_token_ids()
    prefer = torch.zeros(cfg.text_config.vocab_size)
    prefer[media], prefer[pad] = 100.0, 50.0

    def generated(m, **kw):
        hook = m.lm_head.register_forward_hook(lambda module, args, logits: logits + prefer)
        try:
            prompt = tiny_models.generate_inputs(family, m)
            return m.generate(**prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False, eos_token_id=None,
                              **kw)[:, prompt["input_ids"].shape[1]:]
        finally:
            hook.remove()

    new = generated(model)
    assert not torch.isin(new, torch.tensor([media, pad])).any()
    assert torch.equal(new, generated(model, use_cache=False))
    assert torch.equal(generated(model, num_beams=2), generated(model, num_beams=2, use_cache=False))
    assert (generated(model, suppress_tokens=[]) == media).all()  # the head's choice, when nothing is suppressed
    assert (generated(model, suppress_tokens=None) == media).all()
    assert (generated(model, suppress_tokens=[media]) == pad).all()

    model.save_pretrained(tmp_path / "default")
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "default").eval()
    assert reloaded.generation_config.suppress_tokens == [media, pad]
    assert torch.equal(generated(reloaded), new)
    (tmp_path / "default" / "generation_config.json").unlink()  # a folder saved without it: the same default
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "default").generation_config.suppress_tokens == [
        media, pad]
    model.generation_config.suppress_tokens = []  # persistently suppress nothing
    model.save_pretrained(tmp_path / "allowed")
    allowed = AutoModelForImageTextToText.from_pretrained(tmp_path / "allowed").eval()
    assert allowed.generation_config.suppress_tokens == [] and (generated(allowed) == media).all()


@pytest.mark.parametrize("family", ["flamingo", "open_flamingo"])
def test_pad_token_that_ends_sequences_is_not_suppressed(family):
    """Suppressing a pad token that is also the eos / `<|endofchunk|>` token would keep generation from ending."""
    cfg = tiny_models.CONFIGS[family]()
    for pad in (cfg.text_config.eos_token_id, cfg.eoc_token_id, None):
        cfg.text_config.pad_token_id = pad
        assert cfg.generation_suppressed_token_ids() == [cfg.media_token_id], pad


@pytest.mark.parametrize("immediate", [True, False])
def test_generated_media_tokens_cached_equals_uncached(immediate):
    """A generated media token has no medium of its own: the tokens after it attend no medium (immediate mode) or
    every given one, cached or not (generate() keeps media_time within forward's [0, num_media])."""
    model = tiny_model(only_attend_immediate_media=immediate)
    prefer = torch.zeros(40)
    prefer[MEDIA] = 100.0
    hook = model.lm_head.register_forward_hook(lambda module, args, logits: logits + prefer)
    try:
        runs = [_gen(model, input_ids=_ids(2, 5, [1]), pixel_values=_px(2, 1), max_new_tokens=4, min_new_tokens=4,
                     suppress_tokens=[], use_cache=cache, return_dict_in_generate=True, output_logits=True)
                for cache in (True, False)]
    finally:
        hook.remove()
    assert (runs[0].sequences[:, 5:] == MEDIA).all() and torch.equal(runs[0].sequences, runs[1].sequences)
    for cached, uncached in zip(runs[0].logits, runs[1].logits):
        torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("assistant", ["itself", "another"])
@pytest.mark.parametrize("family", ["flamingo", "open_flamingo"])
def test_assisted_generation_equals_greedy(family, assistant, monkeypatch):
    """generate(assistant_model=...): transformers runs the assistant's prefill as a non-first iteration, which
    dropped the media the assistant had not encoded yet (it failed with "0 media given ... pass pixel_values").
    The media stay until the cross-attention K/V are cached, and the tokens are plain greedy's (batch 1). Each
    model resamples the media once, although the assistant's generate() runs once per round."""
    model = tiny_models.build(family)
    helper = model if assistant == "itself" else tiny_models.build(family, seed=1)
    prompt = {k: v[:1] for k, v in tiny_models.generate_inputs(family, model).items()}
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, eos_token_id=None)
    plain = model.generate(**prompt, **kw)
    with torch.no_grad():
        embeds = model.model.get_image_features(prompt["pixel_values"])
    text = {k: v for k, v in prompt.items() if k != "pixel_values"}
    encoded = []
    for m in {id(model): model, id(helper): helper}.values():
        original = m.model.get_media_latents
        monkeypatch.setattr(m.model, "get_media_latents",
                            lambda *a, _original=original, **k: encoded.append(1) or _original(*a, **k))
    for media in (dict(prompt), dict(text, image_embeds=embeds)):  # pixels, and precomputed vision tokens
        encoded.clear()
        assert torch.equal(model.generate(**media, assistant_model=helper, **kw), plain)
        assert len(encoded) == 2  # the main model's and the assistant's


def test_assisted_generation_with_several_media_equals_greedy(model):
    ids, px = _ids(1, 10, [1, 5]), _px(1, 2)
    kw = dict(input_ids=ids, pixel_values=px, do_sample=False)
    helper = tiny_model(seed=1)
    plain = _gen(model, **kw)
    assert torch.equal(_gen(model, assistant_model=model, **kw), plain)
    assert torch.equal(_gen(model, assistant_model=helper, **kw), plain)
