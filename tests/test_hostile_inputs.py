"""Hostile inputs for every hf_mm model, processor and config: each must fail with a ValueError / TypeError whose
message names the argument and the expected value, or (odd image sizes through a processor) simply work.

Table-driven: `CASES` lists `(id, call, exception type, patterns)`; every regex in `patterns` must occur in the
message. `call` receives the cached tiny models / processors through `M` / `P`.
"""

import re
from functools import lru_cache

import pytest
import torch

import tiny_models as tm


@lru_cache(maxsize=None)
def M(family: str):  # noqa: N802  (a table reads better with one-letter helpers)
    return tm.build(family)


@lru_cache(maxsize=None)
def P(family: str):  # noqa: N802
    return tm.processor(family)


def X(family: str, **changes) -> dict:  # noqa: N802
    """The family's valid batch with `changes` applied (a value of None removes the key)."""
    batch = tm.inputs(family, M(family))
    batch.update(changes)
    return {k: v for k, v in batch.items() if v is not None}


def G(family: str, **changes) -> dict:  # noqa: N802
    batch = tm.generate_inputs(family, M(family))
    batch.update(changes)
    return {k: v for k, v in batch.items() if v is not None}


def forward(family: str, **changes):
    with torch.no_grad():
        return M(family)(**X(family, **changes))


def generate(family: str, gen_kwargs=None, **changes):
    kwargs = dict(do_sample=False) if family == "dalle" else dict(max_new_tokens=2, do_sample=False)
    kwargs.update(gen_kwargs or {})
    return M(family).generate(**G(family, **changes), **kwargs)


def ids(family: str) -> torch.Tensor:
    return tm.inputs(family, M(family))["input_ids"]


def pixels(family: str) -> torch.Tensor:
    return tm.inputs(family, M(family))["pixel_values"]


def with_value(tensor: torch.Tensor, value, index=(0, 0)) -> torch.Tensor:
    out = tensor.clone()
    out[index] = value
    return out


def flamingo_ids(media_positions=(2,), batch: int = 2, length: int = 7) -> torch.Tensor:
    out = torch.full((batch, length), 5)
    out[:, list(media_positions)] = 3
    return out


def config_error(family: str, **overrides):
    """Build the model from a contradictory config (config validation or model construction must refuse it)."""
    return tm.model_class(family)(tm.CONFIGS[family](**overrides))


COCA_TEXT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=12)
COCA_VISION = dict(image_size=16, patch_size=8, hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
                   intermediate_size=64)
GEN_INVALID = "generate"

CASES = [
    # ---- CoCa: text -----------------------------------------------------------------------------------------
    ("coca-ids-float", lambda: forward("coca", input_ids=ids("coca").float()), TypeError,
     [r"input_ids", r"integer tensor"]),
    ("coca-ids-1d", lambda: forward("coca", input_ids=ids("coca")[0]), ValueError,
     [r"input_ids", r"\(batch, sequence_length\)"]),
    ("coca-ids-empty-batch", lambda: forward("coca", input_ids=ids("coca")[:0], attention_mask=None,
                                             pixel_values=pixels("coca")[:0]), ValueError, [r"input_ids", r"empty"]),
    ("coca-ids-empty-text", lambda: forward("coca", input_ids=ids("coca")[:, :0], attention_mask=None), ValueError,
     [r"input_ids", r"empty", r"at least one token"]),
    ("coca-ids-out-of-vocab", lambda: forward("coca", input_ids=with_value(ids("coca"), 64)), ValueError,
     [r"input_ids", r"\[0, 64\)", r"vocab_size"]),
    ("coca-ids-negative", lambda: forward("coca", input_ids=with_value(ids("coca"), -1)), ValueError,
     [r"input_ids", r"\[0, 64\)"]),
    ("coca-text-over-length", lambda: forward("coca", input_ids=torch.ones(2, 13, dtype=torch.long),
                                              attention_mask=None), ValueError,
     [r"input_ids", r"13 tokens", r"context length 12", r"max_position_embeddings"]),
    ("coca-mask-shape", lambda: forward("coca", attention_mask=torch.ones(2, 3)), ValueError,
     [r"attention_mask", r"\(2, 6\)"]),
    ("coca-mask-values", lambda: forward("coca", attention_mask=torch.full((2, 6), 2)), ValueError,
     [r"attention_mask", r"0 \(padding\) and 1"]),
    ("coca-labels-out-of-vocab", lambda: forward("coca", labels=with_value(ids("coca"), 99, (0, 3))), ValueError,
     [r"labels", r"\[0, 64\)", r"-100"]),
    # ---- CoCa: images ---------------------------------------------------------------------------------------
    ("coca-pixels-rank3", lambda: forward("coca", pixel_values=pixels("coca")[0]), ValueError,
     [r"pixel_values", r"\(batch, 3, 16, 16\)"]),
    ("coca-pixels-1-channel", lambda: forward("coca", pixel_values=pixels("coca")[:, :1]), ValueError,
     [r"pixel_values", r"num_channels=3"]),
    ("coca-pixels-odd-size", lambda: forward("coca", pixel_values=torch.randn(2, 3, 15, 17)), ValueError,
     [r"pixel_values", r"image_size=16"]),
    ("coca-pixels-uint8", lambda: forward("coca", pixel_values=torch.zeros(2, 3, 16, 16, dtype=torch.uint8)),
     TypeError, [r"pixel_values", r"floating-point tensor"]),
    ("coca-pixels-nan", lambda: forward("coca", pixel_values=with_value(pixels("coca"), float("nan"), (1, 2, 3, 4))),
     ValueError, [r"pixel_values", r"1 NaN", r"finite"]),
    ("coca-pixels-inf", lambda: forward("coca", pixel_values=with_value(pixels("coca"), float("inf"), (0, 0, 0, 0))),
     ValueError, [r"pixel_values", r"1 infinite", r"finite"]),
    ("coca-image-embeds-width", lambda: forward("coca_lucidrains", image_embeds=torch.randn(2, 5, 23)), ValueError,
     [r"image_embeds", r"\(batch, num_image_tokens, 24\)", r"image_embed_dim"]),
    ("coca-image-embeds-nan", lambda: forward("coca_lucidrains", image_embeds=torch.full((2, 5, 24), float("nan"))),
     ValueError, [r"image_embeds", r"NaN", r"finite"]),
    ("coca-loss-batch-mismatch", lambda: forward("coca", pixel_values=torch.randn(3, 3, 16, 16), return_loss=True),
     ValueError, [r"pixel_values", r"batch size 3", r"input_ids", r"2"]),
    ("coca-generate-batch-mismatch", lambda: generate("coca", pixel_values=torch.randn(3, 3, 16, 16)), ValueError,
     [r"pixel_values", r"batch size 3", r"input_ids"]),
    ("coca-generate-beams-batch-mismatch",  # the batch sizes the user passed, not the beam-expanded ones
     lambda: generate("coca", dict(num_beams=3), pixel_values=torch.randn(3, 3, 16, 16)), ValueError,
     [r"pixel_values has batch size 3 but input_ids has 2"]),
    ("coca-forward-sequences-per-image", lambda: forward("coca", sequences_per_image=0), ValueError,
     [r"sequences_per_image", r"integer >= 1"]),
    ("coca-loss-with-logits-to-keep", lambda: forward("coca", return_loss=True, logits_to_keep=1), ValueError,
     [r"logits_to_keep=0"]),
    ("flamingo-generate-beams-batch-mismatch",
     lambda: generate("flamingo", dict(num_beams=2), pixel_values=torch.randn(3, 1, 3, 16, 16)), ValueError,
     [r"pixel_values has batch size 3 but input_ids has 2"]),
    # ---- CoCa / Flamingo / DALL-E: generation arguments -----------------------------------------------------
    ("coca-generate-max-new-tokens-0", lambda: generate("coca", dict(max_new_tokens=0)), ValueError,
     [r"max_new_tokens", r"(>= 1|greater than 0)"]),
    ("flamingo-generate-max-new-tokens-negative", lambda: generate("flamingo", dict(max_new_tokens=-3)), ValueError,
     [r"max_new_tokens", r"(>= 1|greater than 0)"]),
    ("coca-generate-num-beams-0", lambda: generate("coca", dict(num_beams=0)), ValueError,
     [r"num_beams", r">= 1"]),
    ("flamingo-generate-num-beams-0", lambda: generate("flamingo", dict(num_beams=0)), ValueError,
     [r"num_beams", r">= 1"]),
    ("dalle-generate-num-beams-0", lambda: generate("dalle", dict(num_beams=0)), ValueError,
     [r"num_beams", r">= 1"]),
    ("coca-generate-top-p-above-1", lambda: generate("coca", dict(do_sample=True, top_p=1.5)), ValueError,
     [r"top_p", r"\(0, 1\]"]),
    ("flamingo-generate-top-p-0", lambda: generate("flamingo", dict(do_sample=True, top_p=0.0)), ValueError,
     [r"top_p", r"\(0, 1\]"]),
    ("coca-generate-top-p-greedy", lambda: generate("coca", dict(top_p=-0.1)), ValueError, [r"top_p", r"\(0, 1\]"]),
    ("coca-generate-temperature-0", lambda: generate("coca", dict(do_sample=True, temperature=0.0)), ValueError,
     [r"temperature", r"(> 0|strictly positive)"]),
    ("dalle-generate-temperature-negative", lambda: generate("dalle", dict(temperature=-1.0)), ValueError,
     [r"temperature", r"(> 0|strictly positive)"]),
    ("flamingo-generate-num-return-sequences-0", lambda: generate("flamingo", dict(num_return_sequences=0)),
     ValueError, [r"num_return_sequences", r">= 1"]),
    ("coca-generate-pixel-values-without-batch-dim",
     lambda: generate("coca", pixel_values=pixels("coca")[0]), ValueError, [r"pixel_values", r"\(batch, 3, 16, 16\)"]),
    ("coca-generate-pixel-values-and-image-embeds",
     lambda: generate("coca", image_embeds=torch.randn(2, 5, 32)), ValueError,
     [r"exactly one of pixel_values .* or image_embeds"]),
    ("coca-position-ids-1d", lambda: forward("coca", position_ids=torch.arange(ids("coca").shape[1])), ValueError,
     [r"position_ids", r"\(batch, sequence_length\) = \(2, \d+\)"]),
    ("coca-position-ids-negative", lambda: forward("coca", position_ids=-torch.ones_like(ids("coca"))), ValueError,
     [r"position_ids", r"\[0, 12\)", r"max_position_embeddings"]),
    ("coca-position-ids-beyond-table", lambda: forward("coca", position_ids=torch.full_like(ids("coca"), 20)),
     ValueError, [r"position_ids", r"\[0, 12\)", r"\[20, 20\]"]),
    ("coca-position-ids-float", lambda: forward("coca", position_ids=ids("coca").float()), TypeError,
     [r"position_ids", r"integer tensor"]),
    ("coca-labels-float", lambda: forward("coca", labels=ids("coca").float()), TypeError,
     [r"labels", r"integer tensor"]),
    ("coca-generate-beyond-context", lambda: generate("coca", dict(max_new_tokens=20)), ValueError,
     [r"max_new_tokens", r"context length 12", r"max_position_embeddings"]),
    ("coca-generate-static-cache", lambda: generate("coca", dict(cache_implementation="static")), ValueError,
     [r"cache_implementation='static'", r"not supported by CocaModel"]),
    ("dalle-generate-max-new-tokens", lambda: generate("dalle", dict(max_new_tokens=3)), ValueError,
     [r"max_new_tokens=3", r"image_seq_len=\d+"]),
    ("dalle-generate-static-cache", lambda: generate("dalle", dict(cache_implementation="static")), ValueError,
     [r"cache_implementation='static'", r"not supported by DalleForImageGeneration"]),
    ("flamingo-generate-output-hidden-states",
     lambda: generate("flamingo", dict(output_hidden_states=True, return_dict_in_generate=True)), ValueError,
     [r"output_hidden_states", r"not supported by Flamingo"]),
    ("dalle-generate-output-attentions",
     lambda: generate("dalle", dict(output_attentions=True, return_dict_in_generate=True)), ValueError,
     [r"output_attentions", r"not supported by DalleForImageGeneration"]),
    ("coca-forward-output-hidden-states", lambda: forward("coca", output_hidden_states=True), ValueError,
     [r"output_hidden_states", r"not supported by CocaModel"]),
    ("coca-generate-output-attentions",
     lambda: generate("coca", dict(output_attentions=True, return_dict_in_generate=True)), ValueError,
     [r"output_attentions", r"not supported by CocaModel"]),
    ("coca-generate-num-beams-fractional", lambda: generate("coca", dict(num_beams=2.5)), TypeError,
     [r"num_beams", r"an integer >= 1", r"2\.5"]),
    ("flamingo-generate-max-new-tokens-fractional", lambda: generate("flamingo", dict(max_new_tokens=2.5)), TypeError,
     [r"max_new_tokens", r"an integer >= 1", r"2\.5"]),
    ("coca-generate-num-return-sequences-fractional",
     lambda: generate("coca", dict(do_sample=True, num_return_sequences=1.5)), TypeError, [r"num_return_sequences", r"integer"]),
    ("dalle-generate-filter-thres-1", lambda: generate("dalle", dict(filter_thres=1.0, do_sample=True)), ValueError,
     [r"filter_thres", r"\[0, 1\)"]),
    # ---- x-clip ---------------------------------------------------------------------------------------------
    ("x_clip-ids-3d", lambda: forward("x_clip", input_ids=ids("x_clip")[None]), ValueError,
     [r"input_ids", r"\(batch, sequence_length\)"]),
    ("x_clip-ids-bool", lambda: forward("x_clip", input_ids=ids("x_clip") > 4), TypeError,
     [r"input_ids", r"integer tensor"]),
    ("x_clip-text-over-length", lambda: forward("x_clip", input_ids=torch.ones(2, 9, dtype=torch.long)), ValueError,
     [r"input_ids", r"9 tokens", r"context length 8", r"text_seq_len"]),
    ("x_clip-ids-out-of-vocab", lambda: forward("x_clip", input_ids=with_value(ids("x_clip"), 50)), ValueError,
     [r"input_ids", r"\[0, 50\)", r"vocab_size"]),
    ("x_clip-pixels-4-channels", lambda: forward("x_clip", pixel_values=torch.rand(2, 4, 16, 16)), ValueError,
     [r"pixel_values", r"num_channels=3"]),
    ("x_clip-pixels-nan", lambda: forward("x_clip", pixel_values=with_value(pixels("x_clip"), float("nan"))),
     ValueError, [r"pixel_values", r"NaN", r"finite"]),
    ("x_clip-pixels-empty-batch", lambda: forward("x_clip", pixel_values=torch.rand(0, 3, 16, 16)), ValueError,
     [r"pixel_values", r"empty", r"at least one image"]),
    ("x_clip-image-features-odd-size", lambda: M("x_clip").get_image_features(torch.rand(1, 3, 17, 16)), ValueError,
     [r"pixel_values", r"\(batch, 3, 16, 16\)"]),
    ("x_clip-loss-batch-mismatch", lambda: forward("x_clip", pixel_values=torch.rand(3, 3, 16, 16), return_loss=True),
     ValueError, [r"input_ids has batch 2", r"pixel_values has batch 3"]),
    ("x_clip-mask-shape", lambda: forward("x_clip", attention_mask=torch.ones(2, 7)), ValueError,
     [r"attention_mask", r"\(2, 8\)"]),
    # ---- Flamingo -------------------------------------------------------------------------------------------
    ("flamingo-more-media-tokens-than-images", lambda: forward("flamingo", input_ids=flamingo_ids((1, 4)),
                                                               attention_mask=None), ValueError,
     [r"input_ids", r"media token \(id 3\)", r"1 media given"]),
    ("flamingo-no-media-token", lambda: forward("flamingo", input_ids=flamingo_ids(()), attention_mask=None),
     ValueError, [r"input_ids", r"media token", r"1 media given"]),
    ("flamingo-generate-media-mismatch", lambda: generate("flamingo", input_ids=flamingo_ids((1, 2)),
                                                          attention_mask=None), ValueError,
     [r"input_ids", r"media token", r"1 media given"]),
    ("flamingo-pixels-without-media-dim", lambda: forward("flamingo", pixel_values=torch.randn(2, 3, 16, 16)),
     ValueError, [r"pixel_values", r"\(batch, num_media, 3, 16, 16\)"]),
    ("flamingo-pixels-batch-mismatch", lambda: forward("flamingo", pixel_values=torch.randn(3, 1, 3, 16, 16)),
     ValueError, [r"pixel_values", r"batch size 3", r"input_ids"]),
    ("flamingo-video-too-many-frames", lambda: forward("flamingo", pixel_values=torch.randn(2, 1, 3, 3, 16, 16)),
     ValueError, [r"pixel_values", r"3 frames", r"max_video_frames is 2"]),
    ("flamingo-too-many-media", lambda: forward("flamingo", input_ids=flamingo_ids((0, 1, 2, 3, 4)),
                                                attention_mask=None, pixel_values=torch.randn(2, 5, 3, 16, 16)),
     ValueError, [r"5 media", r"max_num_media is 4"]),
    ("flamingo-ids-out-of-vocab", lambda: forward("flamingo", input_ids=with_value(ids("flamingo"), 40, (0, 5))),
     ValueError, [r"input_ids", r"\[0, 40\)", r"vocab_size"]),
    ("flamingo-ids-float", lambda: forward("flamingo", input_ids=ids("flamingo").float()), TypeError,
     [r"input_ids", r"integer tensor"]),
    ("flamingo-ids-empty", lambda: forward("flamingo", input_ids=ids("flamingo")[:, :0], attention_mask=None,
                                           pixel_values=None), ValueError, [r"input_ids", r"empty"]),
    ("flamingo-mask-shape", lambda: forward("flamingo", attention_mask=torch.ones(2, 5)), ValueError,
     [r"attention_mask", r"\(2, 7\)"]),
    ("flamingo-pixels-nan", lambda: forward("flamingo", pixel_values=with_value(pixels("flamingo"), float("nan"),
                                                                                (0, 0, 1))), ValueError,
     [r"pixel_values", r"NaN", r"finite"]),
    ("open_flamingo-media-token-mismatch", lambda: forward("open_flamingo", input_ids=flamingo_ids((1, 4)),
                                                           attention_mask=None), ValueError,
     [r"input_ids", r"media token \(id 3\)", r"1 media given"]),
    ("open_flamingo-ids-out-of-vocab", lambda: forward("open_flamingo", input_ids=with_value(ids("open_flamingo"), 40,
                                                                                              (0, 5))), ValueError,
     [r"input_ids", r"\[0, 40\)", r"vocab_size"]),
    ("open_flamingo-generate-top-p", lambda: generate("open_flamingo", dict(do_sample=True, top_p=2.0)), ValueError,
     [r"top_p", r"\(0, 1\]"]),
    # ---- DALL-E and its dVAE --------------------------------------------------------------------------------
    ("dalle-text-too-short", lambda: forward("dalle", input_ids=ids("dalle")[:, :4], image_ids=None), ValueError,
     [r"input_ids", r"text_seq_len=5"]),
    ("dalle-text-out-of-vocab", lambda: forward("dalle", input_ids=with_value(ids("dalle"), 40)), ValueError,
     [r"input_ids", r"\[0, num_text_tokens=40\)"]),
    ("dalle-ids-float", lambda: forward("dalle", input_ids=ids("dalle").float()), TypeError,
     [r"input_ids", r"integer tensor"]),
    ("dalle-image-ids-out-of-range", lambda: forward("dalle", image_ids=torch.full((2, 3), 16)), ValueError,
     [r"image_ids", r"\[0, 16\)"]),
    ("dalle-image-ids-batch-mismatch", lambda: forward("dalle", image_ids=torch.zeros(3, 4, dtype=torch.long)),
     ValueError, [r"image_ids", r"batch size 3", r"input_ids"]),
    ("dalle-image-ids-too-many", lambda: forward("dalle", image_ids=torch.zeros(2, 17, dtype=torch.long)),
     ValueError, [r"image_ids", r"17", r"16"]),
    ("dalle-pixels-wrong-size", lambda: forward("dalle", image_ids=None, pixel_values=torch.rand(2, 3, 32, 32)),
     ValueError, [r"pixel_values", r"\(batch, 3, 16, 16\)"]),
    ("dalle-generate-text-length", lambda: generate("dalle", input_ids=ids("dalle")[:, :3]), ValueError,
     [r"input_ids", r"text_seq_len=5"]),
    ("dalle-generate-init-image-size", lambda: generate("dalle", dict(init_image=torch.rand(2, 3, 8, 8))), ValueError,
     [r"init_image", r"\(batch, 3, 16, 16\)"]),
    ("dalle-vae-pixels-nan", lambda: forward("dalle_vae", pixel_values=with_value(pixels("dalle_vae"), float("nan"))),
     ValueError, [r"pixel_values", r"NaN", r"finite"]),
    ("dalle-vae-pixels-channels", lambda: forward("dalle_vae", pixel_values=torch.rand(2, 1, 16, 16)), ValueError,
     [r"pixel_values", r"\(batch, 3, 16, 16\)"]),
    ("dalle-vae-decode-out-of-range", lambda: M("dalle_vae").decode(torch.full((1, 16), 16)), ValueError,
     [r"indices", r"\[0, 16\)"]),
    ("dalle-vae-decode-wrong-count", lambda: M("dalle_vae").decode(torch.zeros(1, 15, dtype=torch.long)), ValueError,
     [r"indices", r"16 codes"]),
    # ---- processors -----------------------------------------------------------------------------------------
    ("flamingo-processor-count-mismatch",
     lambda: P("flamingo")(text="<image> a <image> b", images=[tm.pil_image(20, 24)]), ValueError,
     [r"prompt 0", r"2 '<image>' tokens", r"1 images"]),
    ("flamingo-processor-ragged-images",
     lambda: P("flamingo")(text=["a", "b"], images=[[tm.pil_image(20, 24)], [tm.pil_image(20, 24)] * 2]),
     ValueError, [r"same number of images", r"\[1, 2\]"]),
    ("flamingo-processor-ungrouped-images",
     lambda: P("flamingo")(text=["a", "b"], images=[tm.pil_image(20, 24)] * 3), ValueError,
     [r"images", r"one list of images per prompt", r"2 prompts", r"got 3"]),
    ("flamingo-processor-no-text", lambda: P("flamingo")(images=[tm.pil_image(20, 24)]), ValueError, [r"text"]),
    ("dalle-processor-images", lambda: P("dalle")(text="a", images=[tm.pil_image(16, 16)]), ValueError,
     [r"images", r"generate\(init_image"]),
    ("dalle-processor-no-text", lambda: P("dalle")(), ValueError, [r"text"]),
    ("coca-processor-empty-text-reaches-model",
     lambda: forward("coca", **dict(P("coca")(text=["", ""], return_tensors="pt"))),
     ValueError, [r"input_ids", r"empty"]),
    # ---- contradictory configs ------------------------------------------------------------------------------
    ("coca-config-text-heads", lambda: config_error("coca", text_config=dict(COCA_TEXT, num_attention_heads=3)),
     ValueError, [r"text_config.num_attention_heads \(3\)", r"hidden_size \(32\)"]),
    ("coca-config-decoder-heads", lambda: config_error("coca", multimodal_config=dict(num_attention_heads=5)),
     ValueError, [r"multimodal_config.num_attention_heads \(5\)", r"hidden_size \(32\)"]),
    ("coca-config-pooler-heads", lambda: config_error("coca", attn_pooler_heads=3), ValueError,
     [r"attn_pooler_heads \(3\)", r"attn_pooler_dim \(32\)"]),
    ("coca-config-kv-heads", lambda: config_error("coca", text_config=dict(COCA_TEXT, num_key_value_heads=3)),
     ValueError, [r"num_attention_heads \(2\)", r"num_key_value_heads \(3\)"]),
    ("coca-config-vision-heads", lambda: config_error("coca", vision_config=dict(COCA_VISION, num_attention_heads=3)),
     ValueError, [r"vision_config.num_attention_heads \(3\)", r"hidden_size \(32\)"]),
    ("coca-config-image-size", lambda: config_error("coca", vision_config=dict(COCA_VISION, image_size=20)),
     ValueError, [r"vision_config.image_size \(20\)", r"patch_size \(8\)"]),
    ("coca-config-image-embed-dim", lambda: config_error("coca", image_embed_dim=48), ValueError,
     [r"image_embed_dim \(48\)", r"vision_config.hidden_size \(32\)"]),
    ("coca-config-cross-kv-heads",
     lambda: config_error("coca", multimodal_config=dict(num_hidden_layers=1, cross_attention_num_key_value_heads=3)),
     ValueError, [r"multimodal_config.cross_attention_num_key_value_heads \(3\)", r"num_attention_heads \(2\)"]),
    ("coca-config-pooler-kv-heads", lambda: config_error("coca", attn_pooler_num_key_value_heads=3), ValueError,
     [r"attn_pooler_num_key_value_heads \(3\)", r"attn_pooler_heads \(2\)"]),
    ("coca-config-projection-dim", lambda: config_error("coca", projection_dim=0), ValueError,
     [r"projection_dim", r">= 1"]),
    ("coca-config-bos-beyond-vocab", lambda: config_error("coca", text_config=dict(COCA_TEXT, bos_token_id=64)),
     ValueError, [r"text_config.bos_token_id \(64\)", r"vocab_size=64"]),
    ("coca-config-cls-position", lambda: config_error("coca", text_config=dict(COCA_TEXT, cls_position="end")),
     ValueError, [r"text_config.cls_position", r"'end_of_context'", r"'end'"]),
    ("coca-config-logit-scale-max", lambda: config_error("coca", logit_scale_max=0.0), ValueError,
     [r"logit_scale_max", r"> 0"]),
    ("x_clip-config-logit-scale-max", lambda: config_error("x_clip", logit_scale_max=-1.0), ValueError,
     [r"logit_scale_max", r"> 0"]),
    ("x_clip-config-image-size", lambda: config_error("x_clip", vision_config=dict(image_size=20, patch_size=8)),
     ValueError, [r"image_size \(20\)", r"patch_size \(8\)"]),
    ("x_clip-config-patch-dropout", lambda: config_error("x_clip", vision_config=dict(patch_dropout=1.0)), ValueError,
     [r"patch_dropout", r"\[0, 1\)"]),
    ("flamingo-config-cross-attn-every-above-depth", lambda: config_error("flamingo", cross_attn_every=4), ValueError,
     [r"cross_attn_every \(4\)", r"num_hidden_layers \(3\)"]),
    ("open_flamingo-config-cross-attn-every-above-depth",
     lambda: config_error("open_flamingo", cross_attn_every_n_layers=3), ValueError,
     [r"cross_attn_every \(3\)", r"num_hidden_layers \(2\)"]),
    ("flamingo-config-cross-attn-every-0", lambda: config_error("flamingo", cross_attn_every=0), ValueError,
     [r"cross_attn_every", r">= 1"]),
    ("flamingo-config-kv-heads", lambda: config_error("flamingo", text_config=dict(
        vocab_size=40, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, head_dim=16, num_key_value_heads=3)),
     ValueError, [r"text_config.num_attention_heads \(2\)", r"num_key_value_heads \(3\)"]),
    ("flamingo-config-media-token", lambda: config_error("flamingo", media_token_id=40), ValueError,
     [r"media_token_id", r"\[0, 40\)"]),
    ("flamingo-config-vision-width", lambda: config_error("flamingo", vision_config=dict(hidden_size=48)), ValueError,
     [r"vision_config.hidden_size \(48\)", r"text_config.hidden_size \(32\)"]),
    ("dalle-config-attn-types-above-depth", lambda: config_error("dalle", attn_types=["full"] * 4), ValueError,
     [r"attn_types has 4 entries", r"num_hidden_layers=3"]),
    ("dalle-config-attn-type-unknown", lambda: config_error("dalle", attn_types=["full", "banded"]), ValueError,
     [r"attn_types", r"'banded'", r"axial_row"]),
    ("dalle-config-shift-tokens-width", lambda: config_error("dalle", hidden_size=30), ValueError,
     [r"shift_tokens", r"hidden_size divisible by 4", r"30"]),
    ("dalle-vae-config-image-size", lambda: config_error("dalle_vae", image_size=24), ValueError,
     [r"image_size", r"power of 2", r"24"]),
]


@pytest.mark.parametrize("call, error, patterns", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_hostile_input_raises_naming_argument_and_expectation(call, error, patterns):
    with pytest.raises(error) as excinfo:
        call()
    message = str(excinfo.value)
    missing = [p for p in patterns if not re.search(p, message)]
    assert not missing, f"message {message!r} lacks {missing}"


def test_table_is_large_and_ids_unique():
    assert len(CASES) >= 40
    assert len({case[0] for case in CASES}) == len(CASES)


# ---- odd inputs that must simply work -----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["coca", "x_clip"])
@pytest.mark.parametrize("height, width, mode", [(37, 23, "RGB"), (5, 300, "RGB"), (16, 16, "L"), (31, 18, "RGBA")])
def test_processor_resizes_odd_images_to_the_model_size(family, height, width, mode):
    """Odd sizes, extreme aspect ratios, grayscale and RGBA are resized / converted to (1, 3, 16, 16) and the model
    accepts them."""
    batch = P(family)(text=["a red circle"], images=[tm.pil_image(height, width, mode)], return_tensors="pt")
    assert tuple(batch["pixel_values"].shape) == (1, 3, 16, 16)
    assert torch.isfinite(batch["pixel_values"]).all()
    with torch.no_grad():
        out = M(family)(**dict(batch))
    assert torch.isfinite(out.logits_per_image).all()


def test_flamingo_processor_odd_images_and_left_padding_work():
    images = [[tm.pil_image(7, 40)], [tm.pil_image(50, 9, "L")]]
    batch = P("flamingo")(text=["<image> a red circle", "a"], images=images)
    assert tuple(batch["pixel_values"].shape) == (2, 1, 3, 16, 16)
    assert batch["input_ids"][1, 0] == 0 and batch["attention_mask"][1, 0] == 0  # left padding
    assert ((batch["input_ids"] == 3).sum(-1) == 1).all()  # a media token was prepended to the second prompt
    with torch.no_grad():
        logits = M("flamingo")(**dict(batch)).logits
    assert torch.isfinite(logits).all()


def test_over_length_text_is_truncated_by_the_processors():
    """Processors truncate to the context length the model was built for, so the model never sees too many tokens."""
    long_text = " ".join(["a red circle left of a blue square"] * 4)
    coca = P("coca")(text=[long_text], return_tensors="pt")
    assert coca["input_ids"].shape[1] == 12 == M("coca").config.text_config.max_position_embeddings
    dalle = P("dalle")(text=[long_text, ""])
    assert tuple(dalle["input_ids"].shape) == (2, 5) and dalle["input_ids"][1].eq(0).all()
    codes = M("dalle").generate(**dict(dalle), do_sample=False)
    assert tuple(codes.shape) == (2, 16)
