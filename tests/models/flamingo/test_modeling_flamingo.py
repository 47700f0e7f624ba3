"""Model API: errors on bad input, Auto classes + safetensors round trip, training features."""

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

import hf_mm  # noqa: F401  (registers the Auto classes)
from hf_mm.models.flamingo import FlamingoForConditionalGeneration, FlamingoModel

from tiny_models import padded_ids, training_step_with_skip

from .helpers import tiny_config, tiny_model


def _ids(length=8, positions=(1, 4)):
    ids = torch.randint(4, 40, (2, length), generator=torch.Generator().manual_seed(0))
    ids[:, list(positions)] = 3
    return ids


def _px(*leading):
    return torch.randn(*leading, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_ids=_ids(positions=(1, 4, 6)), pixel_values=_px(2, 2)), r"media token .* 2 media given"),
        (dict(input_ids=_ids(positions=(1,)), pixel_values=_px(2, 2)), r"media token .* 2 media given"),
        (dict(input_ids=_ids(), pixel_values=_px(2, 2, 4)), "max_video_frames is 3"),
        (dict(input_ids=_ids(), pixel_values=torch.randn(2, 2, 3, 8, 8)), r"pixel_values must have shape"),
        (dict(input_ids=_ids(), pixel_values=torch.randn(2, 3, 16, 16)), r"pixel_values must have shape"),
        (dict(input_ids=_ids() + 40, pixel_values=_px(2, 2)), r"input_ids must lie in \[0, 40\)"),
        (dict(input_ids=_ids(), pixel_values=_px(3, 2)), "batch size 3"),
        (dict(input_ids=_ids(positions=(0, 1, 2, 3, 4)), pixel_values=_px(2, 5)), "max_num_media is 4"),
        (dict(input_ids=_ids(), pixel_values=_px(2, 2), image_embeds=torch.zeros(2, 2, 5, 32)), "at most one"),
        (dict(input_ids=_ids(), image_embeds=torch.zeros(2, 2, 5, 33)), r"image_embeds must have shape .*=32\)"),
        (dict(input_ids=_ids(), image_embeds=torch.zeros(2, 5, 32)), r"image_embeds must have shape"),
        (dict(input_ids=_ids(), image_embeds=torch.full((2, 2, 5, 32), float("nan"))), "image_embeds holds 640 NaN"),
        (dict(input_ids=_ids(), media_latents=torch.zeros(2, 2, 4, 34)), r"media_latents must have shape"),
        (dict(input_ids=_ids(), media_latents=torch.zeros(2, 4, 32)), r"media_latents must have shape"),
        (dict(input_ids=_ids(), media_latents=torch.zeros(2, 2, 5, 32)), "4 latents per medium"),
        (dict(input_ids=_ids(), pixel_values=_px(2, 2), media_time=torch.zeros(2, 3, dtype=torch.long)),
         r"media_time must have shape \(batch, sequence_length\) = \(2, 8\)"),
        (dict(input_ids=_ids(), pixel_values=_px(2, 2), media_time=torch.full((2, 8), 3)),
         r"media_time must lie in \[0, 3\) \(0 = before the first medium"),
        (dict(input_ids=_ids(), pixel_values=_px(2, 2), media_time=torch.full((2, 8), -1)),
         r"media_time must lie in \[0, 3\) \(0 = before the first medium"),
        (dict(inputs_embeds=torch.zeros(2, 8, 35)), r"inputs_embeds must have shape \(batch, sequence_length, 32\)"),
        (dict(input_ids=_ids(), position_ids=torch.zeros(2, 3, dtype=torch.long)), "position_ids must have shape"),
        (dict(input_ids=_ids(), pixel_values=_px(2, 2), labels=_ids()[:, :7]), r"labels must have shape .*\(2, 8\)"),
        (dict(input_ids=_ids(), pixel_values=_px(2, 2), labels=_ids() + 40), r"labels must lie in \[0, 40\)"),
        (dict(input_ids=_ids(), labels=torch.full((2, 8), -5)), r"labels must lie in \[0, 40\) .* or be -100"),
    ],
)
def test_bad_input_raises_value_error(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_ids=_ids(), image_embeds=torch.ones(2, 2, 5, 32, dtype=torch.long)), "image_embeds must be a"),
        (dict(input_ids=_ids(), media_latents=torch.ones(2, 2, 4, 32, dtype=torch.long)), "media_latents must be a"),
        (dict(input_ids=_ids(), pixel_values=_px(2, 2), media_time=torch.zeros(2, 8)), "media_time must be an integer"),
        (dict(input_ids=_ids(), position_ids=torch.zeros(2, 8)), "position_ids must be an integer"),
        (dict(input_ids=_ids(), labels=torch.zeros(2, 8)), "labels must be an integer"),
    ],
)
def test_wrong_input_dtype_raises_type_error(model, kwargs, match):
    with pytest.raises(TypeError, match=match):
        model(**kwargs)


def test_float_inputs_of_another_precision_are_cast(model):
    ids, px = _ids(), _px(2, 2)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=px)
        image_embeds = model.model.get_image_features(px)
        embeds = model.get_input_embeddings()(ids)
        time = (ids == 3).long().cumsum(-1)
        for kwargs in (dict(input_ids=ids, image_embeds=image_embeds.double()),
                       dict(input_ids=ids, media_latents=out.media_latents.double()),
                       dict(inputs_embeds=embeds.double(), pixel_values=px, media_time=time)):
            torch.testing.assert_close(model(**kwargs).logits, out.logits)


@pytest.mark.parametrize("family", ["flamingo", "open_flamingo"])
def test_generate_rejects_inputs_embeds(family):
    import tiny_models

    model = tiny_models.build(family)
    prompt = tiny_models.generate_inputs(family, model)
    embeds = model.get_input_embeddings()(prompt["input_ids"])
    with pytest.raises(ValueError, match="generate\\(\\) does not take inputs_embeds: pass the prompt as input_ids"):
        model.generate(inputs_embeds=embeds, max_new_tokens=2)
    with pytest.raises(ValueError, match="does not take inputs_embeds"):
        model.generate(**prompt, inputs_embeds=embeds, max_new_tokens=2)


def test_bad_input_in_generate(model):
    with pytest.raises(ValueError, match="media token"):
        model.generate(input_ids=_ids(positions=(1,)), pixel_values=_px(2, 2), max_new_tokens=2)


def test_bad_config():
    with pytest.raises(ValueError, match="vision_config.hidden_size"):
        FlamingoForConditionalGeneration(tiny_config(vision_config=dict(hidden_size=48, num_attention_heads=2)))


def test_untrained_gates_equal_language_model():
    torch.manual_seed(0)
    model = FlamingoForConditionalGeneration(tiny_config()).eval()
    assert all(not b.attn_gate.any() and not b.ff_gate.any() for b in model.model.cross_attn_layers.values())
    with torch.no_grad():  # closed gates: the images change nothing (media tokens without media are refused)
        torch.testing.assert_close(model(input_ids=_ids(), pixel_values=_px(2, 2)).logits,
                                   model(input_ids=_ids(), pixel_values=torch.zeros_like(_px(2, 2))).logits)


def test_save_and_load_through_auto_classes(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    ids, px = _ids(), _px(2, 2)
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=px).logits
        for auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
            loaded = auto.from_pretrained(tmp_path).eval()
            assert type(loaded) is FlamingoForConditionalGeneration
            assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
            torch.testing.assert_close(loaded(input_ids=ids, pixel_values=px).logits, expected, atol=0, rtol=0)
        base = AutoModel.from_pretrained(tmp_path).eval()
        assert type(base) is FlamingoModel
        torch.testing.assert_close(base(input_ids=ids, pixel_values=px).last_hidden_state,
                                   model.model(input_ids=ids, pixel_values=px).last_hidden_state)


def test_eager_equals_sdpa(model):
    eager = FlamingoForConditionalGeneration(model.config.__class__.from_dict(model.config.to_dict()),
                                             ).eval()
    eager.load_state_dict(model.state_dict())
    eager.set_attn_implementation("eager")
    assert eager.config.text_config._attn_implementation == "eager"
    ids, px = _ids(), _px(2, 2)
    with torch.no_grad():
        torch.testing.assert_close(eager(input_ids=ids, pixel_values=px).logits,
                                   model(input_ids=ids, pixel_values=px).logits, atol=1e-5, rtol=1e-5)


def test_loss_backward_and_gradient_checkpointing():
    model = tiny_model().train()
    ids, px = _ids(), _px(2, 2)
    loss = model(input_ids=ids, pixel_values=px, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    loss2 = model(input_ids=ids, pixel_values=px, labels=ids, use_cache=False).loss
    loss2.backward()
    torch.testing.assert_close(loss2, loss)
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", ["flamingo", "open_flamingo"])
def test_freeze_pretrained_can_keep_the_input_embeddings_trainable(family):
    """OpenFlamingo's recipe: perceiver, gated cross-attention and the LM's input embeddings train; the rest not."""
    import tiny_models

    model = tiny_models.build(family).freeze_pretrained(train_input_embeddings=True)
    embeddings = model.get_input_embeddings().weight
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    expected = {id(p) for m in (model.model.perceiver, model.model.cross_attn_layers) for p in m.parameters()}
    assert trainable == expected | {id(embeddings)}
    assert model.freeze_pretrained() is model and not embeddings.requires_grad  # the default freezes them


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("immediate", [True, False])
def test_training_loss_skips_unused_positions_without_changing_loss_or_gradients(side, immediate):
    """Training with labels runs the built-in decoder's per-token layers only where a loss target reads them:
    same loss and gradients as computing every position, logits equal at the targets and 0 elsewhere."""
    model = tiny_model(only_attend_immediate_media=immediate).train()
    g = torch.Generator().manual_seed(2)
    ids, mask = padded_ids(4, 40, (0, 2, 4), 10, side, g)
    for row in range(3):  # two media per row, on real tokens
        real = mask[row].nonzero().flatten()
        ids[row, real[[0, 3]]] = model.config.media_token_id
    labels = ids.masked_fill((mask == 0) | (ids == model.config.media_token_id), -100)
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels,
                 pixel_values=torch.randn(3, 2, 3, 16, 16, generator=g))

    mlp = model.model.layers[0].mlp
    (full, full_grads, full_rows), (skipped, grads, rows) = (
        training_step_with_skip(model, batch, mlp, skip) for skip in (False, True))
    assert rows < full_rows == ids.numel()
    torch.testing.assert_close(skipped.loss, full.loss, atol=1e-6, rtol=1e-6)
    assert full_grads.keys() == grads.keys() and len(grads) > 20
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], atol=1e-6, rtol=1e-5, msg=name)
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100) != -100
    torch.testing.assert_close(skipped.logits[targets], full.logits[targets], atol=1e-5, rtol=1e-5)
    assert not skipped.logits[~targets].any()


def test_freeze_pretrained_config_flag():
    model = FlamingoForConditionalGeneration(tiny_config(freeze_pretrained=True))
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"perceiver", "cross_attn_layers"}
    expected = sum(p.numel() for p in model.model.perceiver.parameters()) + sum(
        p.numel() for p in model.model.cross_attn_layers.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


@pytest.mark.parametrize("family", ["flamingo", "open_flamingo"])
def test_return_dict_false_returns_a_tuple_and_generate_still_works(family):
    """`return_dict=False` (keyword or config) gives the output's `to_tuple()`; it was ignored (a ModelOutput, whose
    unpacking gave the field names). generate() asks for a ModelOutput itself, so it is unaffected."""
    import tiny_models

    model = tiny_models.build(family)
    batch = tiny_models.inputs(family, model)
    prompt = tiny_models.generate_inputs(family, model)
    with torch.no_grad():
        expected = model(**batch, labels=batch["input_ids"])
        loss, logits, *_ = model(**batch, labels=batch["input_ids"], return_dict=False)
        assert torch.equal(loss, expected.loss) and torch.equal(logits, expected.logits)
        hidden = model.model(**batch, return_dict=False)[0]
        assert torch.equal(hidden, model.model(**batch).last_hidden_state)
        generated = model.generate(**prompt, max_new_tokens=3, do_sample=False)
        model.config.return_dict = False
        assert isinstance(model.model(**batch), tuple)
        assert torch.equal(model(**batch)[0], expected.logits)
        assert torch.equal(model.generate(**prompt, max_new_tokens=3, do_sample=False), generated)


def test_default_config_builds_a_model():
    """`FlamingoConfig()` (what `AutoConfig.for_model` gives) is a valid model: the built-in decoder's unset width
    takes the vision width (PaLM's own default of 512 met the 768-wide default vision tower)."""
    from transformers import AutoConfig

    from hf_mm.models.flamingo import FlamingoConfig

    config = AutoConfig.for_model("hf_mm_flamingo")
    assert config.text_config.hidden_size == config.vision_config.hidden_size == 768
    with torch.device("meta"):
        assert type(AutoModel.from_config(config)) is FlamingoModel
    # only an unset text width follows the vision width; given ones keep their meaning
    assert FlamingoConfig(vision_config=dict(hidden_size=64, num_attention_heads=4)).text_config.hidden_size == 64
    assert FlamingoConfig(text_config=dict(hidden_size=512)).text_config.hidden_size == 512
    with pytest.raises(ValueError, match=r"vision_config.hidden_size \(768\) must equal text_config.hidden_size"):
        FlamingoModel(FlamingoConfig(text_config=dict(hidden_size=512, num_hidden_layers=3)))
    saved = tiny_config().to_dict()
    assert FlamingoConfig.from_dict(saved).to_dict() == saved
