"""CocaModel behaviour: save/load in a fresh process, dtypes, attention backends, checkpointing, bad input."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hf_mm.models.coca import CocaConfig, CocaModel

from tiny_models import padded_ids, training_step_with_skip

from .references import tiny_coca_config

ROOT = Path(__file__).resolve().parents[3]

LUCIDRAINS_STYLE = dict(
    text_config=dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                     head_dim=8, intermediate_size=64, hidden_act="silu", gated_mlp=True, parallel_blocks=True,
                     norm_bias=False, attention_bias=False, attention_out_bias=False, mlp_bias=False,
                     position_embedding_type="rotary", padding_mask_style="coca_pytorch", tie_word_embeddings=True,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
    multimodal_config=dict(num_hidden_layers=1, parallel_cross_attention=True, norm_context=False,
                           cross_attention_num_key_value_heads=1),
    vision_config=None, image_embed_dim=24, attn_pooler_queries=4, attn_pooler_heads=4, attn_pooler_head_dim=8,
    attn_pooler_num_key_value_heads=1, attn_pooler_bias=False, logit_scale_max=None,
)


def _batch(seed=0, n=2, image=True, cfg=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (n, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    out = dict(input_ids=ids, attention_mask=mask)
    if cfg is not None and cfg.vision_config is None:
        out["image_embeds"] = torch.randn(n, 5, cfg.image_embed_dim, generator=g)
    elif image:
        out["pixel_values"] = torch.randn(n, 3, 16, 16, generator=g)
    return out


@pytest.mark.parametrize("style", ["open_clip", "coca_pytorch"])
def test_save_and_load_in_a_fresh_process(tmp_path, style):
    torch.manual_seed(0)
    config = tiny_coca_config() if style == "open_clip" else CocaConfig(**LUCIDRAINS_STYLE)
    model = CocaModel(config).eval()
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").exists()
    batch = _batch(cfg=config)
    torch.save(batch, tmp_path / "batch.pt")
    with torch.no_grad():
        expected = model(**batch)
    script = textwrap.dedent(f"""
        import torch, hf_mm
        from transformers import AutoModel, AutoModelForImageTextToText
        model = AutoModel.from_pretrained({str(tmp_path / 'model')!r}).eval()
        assert type(AutoModelForImageTextToText.from_pretrained({str(tmp_path / 'model')!r})).__name__ == "CocaModel"
        batch = torch.load({str(tmp_path / 'batch.pt')!r}, weights_only=True)
        with torch.no_grad():
            out = model(**batch)
        gen = model.generate(**{{k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}},
                             max_new_tokens=4, do_sample=False)
        torch.save(dict(logits=out.logits, per_image=out.logits_per_image, gen=gen), {str(tmp_path / 'out.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.equal(got["logits"], expected.logits)
    assert torch.equal(got["per_image"], expected.logits_per_image)
    gen_inputs = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    assert torch.equal(got["gen"], model.generate(**gen_inputs, max_new_tokens=4, do_sample=False))


def test_processor_round_trips_through_auto_processor_in_a_fresh_process(tmp_path):
    from PIL import Image

    from hf_mm.models.coca import CocaProcessor

    processor = CocaProcessor.from_open_clip(image_size=16, context_length=24)
    CocaModel(tiny_coca_config()).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    image = Image.fromarray((torch.arange(30 * 21 * 3) % 251).reshape(30, 21, 3).to(torch.uint8).numpy())
    image.save(tmp_path / "image.png")
    texts = ["a red circle", "a small blue square left of a circle!"]
    expected = processor(images=image, text=texts, return_tensors="pt")
    assert expected["input_ids"][0, -1] == 0  # open_clip pads with id 0
    script = textwrap.dedent(f"""
        import torch, hf_mm
        from PIL import Image
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(tmp_path)!r})
        out = processor(images=Image.open({str(tmp_path / 'image.png')!r}), text={texts!r}, return_tensors="pt")
        torch.save(dict(out), {str(tmp_path / 'processed.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
    got = torch.load(tmp_path / "processed.pt", weights_only=True)
    for key in ("pixel_values", "input_ids", "attention_mask"):
        assert torch.equal(got[key], expected[key]), key


def test_model_type_and_tied_weights_in_config(tmp_path):
    model = CocaModel(CocaConfig(**LUCIDRAINS_STYLE))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "hf_mm_coca"
    reloaded = CocaModel.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.text_model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("how", ["constructor", "attribute"])
@pytest.mark.parametrize("tie", [True, False])
def test_top_level_tie_word_embeddings_is_honoured_and_round_trips(tmp_path, how, tie):
    """The top-level flag (what transformers users set) used to be overwritten by text_config's, and setting it
    after construction saved a folder that failed to load (lm_head.weight missing)."""
    base = dict(LUCIDRAINS_STYLE) if not tie else dict(text_config=tiny_coca_config().text_config.to_dict(),
                                                       vision_config=tiny_coca_config().vision_config.to_dict())
    config = CocaConfig(**base, **({"tie_word_embeddings": tie} if how == "constructor" else {}))
    if how == "attribute":
        config.tie_word_embeddings = tie
    model = CocaModel(config).eval()
    assert (model.lm_head.weight is model.text_model.embed_tokens.weight) == tie
    model.save_pretrained(tmp_path)
    reloaded = CocaModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.tie_word_embeddings == reloaded.config.text_config.tie_word_embeddings == tie
    assert (reloaded.lm_head.weight.data_ptr() == reloaded.text_model.embed_tokens.weight.data_ptr()) == tie
    batch = _batch(cfg=config)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


@pytest.mark.parametrize("style", ["open_clip", "coca_pytorch"])
def test_sdpa_equals_eager(style):
    torch.manual_seed(0)
    config = tiny_coca_config() if style == "open_clip" else CocaConfig(**LUCIDRAINS_STYLE)
    sdpa = CocaModel(config).eval()
    eager = CocaModel(config.__class__(**config.to_dict()), ).eval()
    eager.load_state_dict(sdpa.state_dict())
    eager.set_attn_implementation("eager")
    batch = _batch(cfg=config)
    with torch.no_grad():
        a, b = sdpa(**batch), eager(**batch)
    assert (a.logits - b.logits).abs().max() < 1e-5
    assert (a.logits_per_image - b.logits_per_image).abs().max() < 1e-4


def test_bf16_forward_and_generate_are_finite():
    torch.manual_seed(0)
    model = CocaModel(tiny_coca_config()).to(torch.bfloat16).eval()
    batch = _batch()
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    out = model(**batch, return_loss=True)
    assert out.logits.dtype == torch.bfloat16
    assert all(torch.isfinite(t.float()).all() for t in (out.loss, out.logits, out.logits_per_image))
    assert model.generate(pixel_values=batch["pixel_values"], max_new_tokens=3).shape == (2, 4)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(reentrant):
    """Reentrant checkpointing failed ("backward through the graph a second time"): the image context reached the
    checkpointed cross-attention blocks as a keyword, which it does not track."""
    torch.manual_seed(0)
    model = CocaModel(tiny_coca_config()).train()
    batch = _batch()
    model(**batch, return_loss=True).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    assert model.is_activation_checkpointing
    model(**batch, return_loss=True).loss.backward()
    # reentrant backward sums the image context's gradient over the layers in another order: equal up to float
    # rounding, measured against the largest gradient (a key bias's gradient, e.g., is rounding noise around 0)
    scale = max(float(g.abs().max()) for g in grads.values())
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6 * scale, msg=name)
    assert len(grads) > 40


def test_loss_weights_and_padding_are_honoured():
    torch.manual_seed(0)
    model = CocaModel(tiny_coca_config(caption_loss_weight=3.0, contrastive_loss_weight=0.5)).eval()
    batch = _batch()
    out = model(**batch, return_loss=True)
    assert torch.allclose(out.loss, 3.0 * out.caption_loss + 0.5 * out.contrastive_loss)
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][1, -2:] = 9  # padded positions: their content must not change the caption loss
    assert torch.allclose(model(**changed, return_loss=True).caption_loss, out.caption_loss)


PADDED_CAPTIONS = [  # (config overrides, padding side)
    (dict(), "right"),
    (dict(text_config=dict(tiny_coca_config().text_config.to_dict(), padding_mask_style="open_clip")), "right"),
    (LUCIDRAINS_STYLE, "right"),
    (dict(), "left"),
]


@pytest.mark.parametrize("overrides, side", PADDED_CAPTIONS)
def test_training_loss_skips_unused_positions_without_changing_loss_or_gradients(overrides, side):
    """Training with the caption loss computes the per-token layers only where the loss / CLS read them:
    same loss and gradients as computing every position, logits equal at the targets and 0 elsewhere, and
    fewer rows through the MLPs."""
    torch.manual_seed(0)
    cfg = CocaConfig(**{**tiny_coca_config().to_dict(), **overrides}) if overrides else tiny_coca_config()
    model = CocaModel(cfg).train()
    g = torch.Generator().manual_seed(1)
    ids, mask = padded_ids(3, 64, (0, 3, 6), 9, side, g)
    labels = ids.masked_fill(torch.rand(ids.shape, generator=g) < 0.15, -100)
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels)
    batch.update({k: v for k, v in _batch(n=3, cfg=cfg).items() if k not in ("input_ids", "attention_mask")})

    mlp = model.decoder_layers[0].self_block.mlp
    (full, full_grads, full_rows), (skipped, grads, rows) = (
        training_step_with_skip(model, batch, mlp, skip, return_loss=True) for skip in (False, True))
    assert rows < full_rows == ids.numel()
    torch.testing.assert_close(skipped.loss, full.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(skipped.text_embeds, full.text_embeds, atol=1e-6, rtol=1e-6)
    assert full_grads.keys() == grads.keys() and len(grads) > 30
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], atol=1e-6, rtol=1e-5, msg=name)
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100).masked_fill(
        torch.nn.functional.pad(mask[:, 1:], (0, 1)) == 0, -100) != -100
    torch.testing.assert_close(skipped.logits[targets], full.logits[targets], atol=1e-5, rtol=1e-5)
    assert not skipped.logits[~targets].any()
    model.eval()  # evaluation computes every position
    assert torch.equal(model(**batch, return_loss=True).logits, model(**batch, return_loss=True).logits)
    assert model(**batch, return_loss=True).logits[~targets].abs().sum() > 0


def test_zero_shot_batch_mismatch_gives_logits_only():
    torch.manual_seed(0)
    model = CocaModel(tiny_coca_config()).eval()
    out = model(input_ids=torch.randint(3, 64, (4, 6)), pixel_values=torch.randn(1, 3, 16, 16))
    assert out.logits_per_image.shape == (1, 4) and out.logits is None


BAD_INPUTS = [
    (dict(), "exactly one of pixel_values"),
    (dict(both=True), "exactly one of pixel_values"),
    (dict(pixel_values=torch.randn(2, 3, 20, 20)), r"pixel_values must have shape \(batch, 3, 16, 16\)"),
    (dict(pixel_values=torch.randn(2, 1, 16, 16)), "num_channels=3"),
    (dict(input_ids=torch.randint(3, 64, (2, 30))), "context length"),
    (dict(input_ids=torch.tensor([[1, 64, 3]])), r"input_ids must lie in \[0, 64\)"),
    (dict(input_ids=torch.tensor([[1, -1, 3]])), r"input_ids must lie in \[0, 64\)"),
    (dict(pixel_values=torch.randn(3, 3, 16, 16), return_loss=True), "pixel_values has batch size 3"),
    (dict(attention_mask=torch.ones(2, 3)), "attention_mask must have shape"),
    (dict(input_ids=torch.zeros(2, 0, dtype=torch.long)), "input_ids is empty"),
    (dict(input_ids=torch.rand(2, 4)), "input_ids must be an integer tensor"),
]


@pytest.mark.parametrize("kwargs,message", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(kwargs, message):
    torch.manual_seed(0)
    model = CocaModel(tiny_coca_config()).eval()
    batch = dict(input_ids=torch.randint(3, 64, (2, 5)), pixel_values=torch.randn(2, 3, 16, 16))
    if not kwargs:
        batch.pop("pixel_values")
    if kwargs.pop("both", False):
        batch["image_embeds"] = torch.randn(2, 4, 32)
    batch.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        model(**batch)


def test_bad_config_raises_naming_the_field():
    with pytest.raises(ValueError, match="num_attention_heads"):
        tiny_coca_config(text_config=dict(hidden_size=30, num_attention_heads=4))
    with pytest.raises(ValueError, match="padding_mask_style"):
        CocaModel(tiny_coca_config(text_config=dict(padding_mask_style="weird")))
    with pytest.raises(ValueError, match="image_size"):
        CocaModel(tiny_coca_config(vision_config=dict(image_size=17, patch_size=8)))


def test_padding_id_does_not_change_outputs_and_processor_pads_alike_for_every_tensor_type():
    """open_clip's shifted CLS mask lets the CLS see the first padded position, so the id there mattered: the
    model now embeds every padded position as `pad_token_id`, and the processor writes 0 there for torch, numpy
    and list outputs alike (it used to only for torch)."""
    from hf_mm.models.coca import CocaProcessor

    torch.manual_seed(0)
    model = CocaModel(tiny_coca_config()).eval()
    assert model.config.text_config.padding_mask_style == "open_clip_legacy"
    batch = _batch(cfg=model.config)
    other_pad = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 7)
    with torch.no_grad():
        a = model(**batch)
        b = model(**{**batch, "input_ids": other_pad})
    assert torch.equal(a.text_embeds, b.text_embeds) and torch.equal(a.logits, b.logits)

    processor = CocaProcessor.from_open_clip(image_size=16, context_length=24)
    texts = ["a red circle", "a small blue square left of a circle!"]
    expected = processor(text=texts, return_tensors="pt")["input_ids"]
    assert expected[0, -1] == 0
    assert torch.equal(torch.as_tensor(processor(text=texts, return_tensors="np")["input_ids"]), expected)
    assert torch.equal(torch.tensor(processor(text=texts)["input_ids"]), expected)


def test_return_dict_false_gives_the_output_tuple():
    torch.manual_seed(0)
    model = CocaModel(tiny_coca_config()).eval()
    batch = _batch(cfg=model.config)
    with torch.no_grad():
        out, tup = model(**batch), model(**batch, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == len(out.to_tuple())
    assert all(torch.equal(a, b) for a, b in zip(out.to_tuple(), tup) if isinstance(a, torch.Tensor))


def test_config_return_dict_false_gives_the_output_tuple():
    torch.manual_seed(0)
    model = CocaModel(tiny_coca_config()).eval()
    batch = _batch(cfg=model.config)
    with torch.no_grad():
        out = model(**batch)
        model.config.return_dict = False
        tup = model(**batch)
        assert isinstance(model(**batch, return_dict=True), type(out))  # the keyword wins, as generate() passes it
    assert isinstance(tup, tuple) and torch.equal(tup[0], out.to_tuple()[0])


def test_outputs_come_in_declared_order_loss_first():
    """Trainer (and `outputs[0]` users) read the loss as the first field, also from return_dict=False's tuple."""
    torch.manual_seed(0)
    model = CocaModel(tiny_coca_config()).eval()
    batch = _batch(cfg=model.config)
    with torch.no_grad():
        out = model(**batch, return_loss=True)
        tup = model(**batch, return_loss=True, return_dict=False)
    assert list(out.keys()) == [k for k in type(out).__dataclass_fields__ if out.get(k) is not None]
    assert list(out.keys())[:4] == ["loss", "contrastive_loss", "caption_loss", "logits"]
    assert torch.equal(out[0], out.loss) and torch.equal(tup[0], out.loss) and tup[0].ndim == 0


def test_the_default_config_builds_the_vit_b_32_model_and_embeds_only_configs_stay_embeds_only(tmp_path):
    """transformers convention: `CocaConfig()` is a buildable default (AutoModel.from_config(AutoConfig.for_model))."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model("hf_mm_coca")
    assert config.vision_config.hidden_size == 768 and config.image_embed_dim == 768
    with torch.device("meta"):
        assert AutoModel.from_config(config).vision_model is not None
    embeds_only = CocaConfig(**LUCIDRAINS_STYLE)
    embeds_only.save_pretrained(tmp_path)
    reloaded = CocaConfig.from_pretrained(tmp_path)
    assert embeds_only.vision_config is None and reloaded.vision_config is None and reloaded.image_embed_dim == 24


def test_processor_drops_token_type_ids_of_bert_style_tokenizers(tmp_path):
    """generate(**processor(...)) would refuse them as unused model kwargs."""
    from transformers import BertTokenizerFast

    import tiny_models as tm
    from hf_mm.models.coca import CocaProcessor

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[CLS]", "[SEP]", "a", "red", "circle", "[UNK]", "[MASK]"]))
    tokenizer = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    assert "token_type_ids" in tokenizer("a red circle")
    processor = CocaProcessor(tm.processor("coca").image_processor, tokenizer)
    inputs = processor(images=tm.pil_image(20, 24), text="a red circle", return_tensors="pt")
    assert set(inputs) == {"pixel_values", "input_ids", "attention_mask"}
    torch.manual_seed(0)
    model = CocaModel(tiny_coca_config()).eval()
    assert model.generate(**inputs, max_new_tokens=2).shape == (1, inputs["input_ids"].shape[1] + 2)


def _docstring_example(cls) -> str:
    lines = [line.strip() for line in cls.__doc__.splitlines()]
    return "\n".join(line[4:] for line in lines if line.startswith((">>> ", "... ")))


@pytest.mark.parametrize("path", ["hf_mm.models.coca.CocaConfig", "hf_mm.models.coca.CocaTextConfig",
                                  "hf_mm.models.x_clip.XClipConfig"])
def test_config_docstring_example_runs_as_pasted(path):
    """The `>>>` example runs in a fresh namespace, as a user pastes it (it imported CocaConfig from `hf_mm`, which
    does not export it; XClipConfig's used XClipModel without importing it)."""
    import importlib

    module, name = path.rsplit(".", 1)
    code = _docstring_example(getattr(importlib.import_module(module), name))
    assert code
    with torch.device("meta"):  # CocaConfig() is ViT-B/32 sized
        exec(compile(code, path, "exec"), {})
