"""One tiny random model, input batch and processor per hf_mm family, shared by the reliability tests
(hostile inputs, checkpoints, numerics, determinism, thread safety).

Every builder seeds itself, so two calls give identical weights. Models are in eval mode.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPImageProcessorPil, PreTrainedTokenizerFast

import hf_mm  # noqa: F401  (registers the Auto classes)

WORDS = ["[PAD]", "[BOS]", "[EOS]", "<image>", "a", "red", "blue", "circle", "square", "left", "of", "photo"]
FAMILIES = ("coca", "coca_lucidrains", "x_clip", "flamingo", "open_flamingo", "dalle", "dalle_vae")


# -- configs ---------------------------------------------------------------------------------------------
def coca_config(**overrides):
    from hf_mm.models.coca import CocaConfig

    fields = dict(
        text_config=dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=12, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0),
        multimodal_config=dict(num_hidden_layers=1),
        vision_config=dict(image_size=16, patch_size=8, hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
                           intermediate_size=64),
        attn_pooler_queries=5, attn_pooler_heads=2, projection_dim=16,
    )
    fields.update(overrides)
    return CocaConfig(**fields)


def coca_lucidrains_config(**overrides):
    """coca-pytorch style: rotary, multi-query, parallel SwiGLU blocks, tied embeddings, image_embeds input."""
    from hf_mm.models.coca import CocaConfig

    fields = dict(
        text_config=dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=1, head_dim=8, intermediate_size=64, hidden_act="silu", gated_mlp=True,
                         parallel_blocks=True, norm_bias=False, attention_bias=False, attention_out_bias=False,
                         mlp_bias=False, position_embedding_type="rotary", padding_mask_style="coca_pytorch",
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        multimodal_config=dict(num_hidden_layers=1, parallel_cross_attention=True, norm_context=False,
                               cross_attention_num_key_value_heads=1),
        vision_config=None, image_embed_dim=24, attn_pooler_queries=4, attn_pooler_heads=4, attn_pooler_head_dim=8,
        attn_pooler_num_key_value_heads=1, attn_pooler_bias=False,
    )
    fields.update(overrides)
    return CocaConfig(**fields)


def x_clip_config(**overrides):
    from hf_mm.models.x_clip import XClipConfig

    fields = dict(
        text_config=dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16,
                         max_position_embeddings=8),
        vision_config=dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           head_dim=16, patch_dropout=0.0),
        projection_dim=16,
    )
    fields.update(overrides)
    return XClipConfig(**fields)


def flamingo_config(**overrides):
    """The Flamingo family tests' tiny PaLM Flamingo, with at most 2 video frames."""
    from models.flamingo.helpers import tiny_config

    perceiver = dict(num_latents=4, num_hidden_layers=1, num_attention_heads=2, head_dim=16, max_video_frames=2)
    return tiny_config(**{"perceiver_config": perceiver, **overrides})


def open_flamingo_config(**overrides):
    """Flamingo around a transformers causal LM (a tiny Llama), OpenFlamingo layout."""
    from transformers import LlamaConfig

    from hf_mm.models.flamingo import FlamingoConfig

    text = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2)
    fields = dict(
        text_config=text,
        vision_config=dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64),
        perceiver_config=dict(num_latents=4, num_hidden_layers=1, num_attention_heads=2, head_dim=16),
        cross_attn_every_n_layers=1, cross_attn_num_heads=2, cross_attn_head_dim=16, media_token_id=3, eoc_token_id=39,
    )
    fields.update(overrides)
    return FlamingoConfig(**fields)


def dalle_vae_config(**overrides):
    from hf_mm.models.dalle import DiscreteVAEConfig

    fields = dict(image_size=16, num_layers=2, num_tokens=16, codebook_dim=8, hidden_dim=8, num_resnet_blocks=1)
    fields.update(overrides)
    return DiscreteVAEConfig(**fields)


def dalle_config(**overrides):
    from hf_mm.models.dalle import DalleConfig

    fields = dict(vae_config=dalle_vae_config().to_dict(), num_text_tokens=40, text_seq_len=5, hidden_size=32,
                  num_hidden_layers=3, num_attention_heads=2, head_dim=16,
                  attn_types=["full", "axial_row", "conv_like"], conv_kernel_size=3)
    fields.update(overrides)
    return DalleConfig(**fields)


CONFIGS = {
    "coca": coca_config, "coca_lucidrains": coca_lucidrains_config, "x_clip": x_clip_config,
    "flamingo": flamingo_config, "open_flamingo": open_flamingo_config, "dalle": dalle_config,
    "dalle_vae": dalle_vae_config,
}


# -- models ----------------------------------------------------------------------------------------------
def model_class(family: str):
    if family.startswith("coca"):
        from hf_mm.models.coca import CocaModel as cls
    elif family == "x_clip":
        from hf_mm.models.x_clip import XClipModel as cls
    elif family in ("flamingo", "open_flamingo"):
        from hf_mm.models.flamingo import FlamingoForConditionalGeneration as cls
    elif family == "dalle":
        from hf_mm.models.dalle import DalleForImageGeneration as cls
    else:
        from hf_mm.models.dalle import DiscreteVAEModel as cls
    return cls


def build(family: str, seed: int = 0, **overrides):
    """A random tiny model of `family` in eval mode, with every zero-initialised gate / scale opened so that
    every parameter influences the output."""
    torch.manual_seed(seed)
    model = model_class(family)(CONFIGS[family](**overrides)).eval()
    with torch.no_grad():
        if family in ("flamingo", "open_flamingo"):
            for block in model.model.cross_attn_layers.values():
                block.attn_gate.fill_(0.8)
                block.ff_gate.fill_(0.6)
        if family == "dalle":
            for layer in model.layers:
                layer.ls1.gamma.fill_(1.0)
                layer.ls2.gamma.fill_(1.0)
    return model


def inputs(family: str, model, batch: int = 2, seed: int = 0) -> dict:
    """A valid forward batch for `model` (padding in row 1 where the family supports an attention_mask)."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    if family.startswith("coca"):
        ids = torch.randint(3, cfg.text_config.vocab_size, (batch, 6), generator=g)
        ids[:, 0] = cfg.text_config.bos_token_id
        mask = torch.ones_like(ids)
        mask[-1, -2:] = 0
        out = dict(input_ids=ids, attention_mask=mask)
        if cfg.vision_config is None:
            out["image_embeds"] = torch.randn(batch, 5, cfg.image_embed_dim, generator=g)
        else:
            out["pixel_values"] = torch.randn(batch, 3, 16, 16, generator=g)
        return out
    if family == "x_clip":
        ids = torch.randint(3, cfg.text_config.vocab_size, (batch, 8), generator=g)
        ids[-1, 6:] = 0
        return dict(input_ids=ids, pixel_values=torch.rand(batch, 3, 16, 16, generator=g))
    if family in ("flamingo", "open_flamingo"):
        ids = torch.randint(4, cfg.text_config.vocab_size - 1, (batch, 7), generator=g)
        ids[:, 2] = cfg.media_token_id
        mask = torch.ones_like(ids)
        ids[-1, :1], mask[-1, :1] = 0, 0  # left padding
        return dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(batch, 1, 3, 16, 16, generator=g))
    if family == "dalle":
        ids = torch.randint(1, cfg.num_text_tokens, (batch, cfg.text_seq_len), generator=g)
        ids[-1, -2:] = 0
        codes = torch.randint(0, cfg.vae_config.num_tokens, (batch, cfg.image_seq_len), generator=g)
        return dict(input_ids=ids, image_ids=codes)
    return dict(pixel_values=torch.rand(batch, cfg.channels, cfg.image_size, cfg.image_size, generator=g))


def generate_inputs(family: str, model, batch: int = 2, seed: int = 0) -> dict:
    """A valid `generate()` prompt (families with a generate(); x-clip and the dVAE have none)."""
    batch_inputs = inputs(family, model, batch, seed)
    if family.startswith("coca"):
        batch_inputs["input_ids"] = batch_inputs["input_ids"][:, :2]
        batch_inputs.pop("attention_mask")
    elif family == "dalle":
        batch_inputs.pop("image_ids")
    return batch_inputs


GENERATIVE = ("coca", "coca_lucidrains", "flamingo", "open_flamingo", "dalle")


def main_output(family: str, out) -> torch.Tensor:
    """The tensor a test compares: logits, or the dVAE's reconstructions."""
    if family == "x_clip":
        return out.logits_per_image
    if family == "dalle_vae":
        return out.reconstructions
    return out.logits


# -- processors ------------------------------------------------------------------------------------------
def word_tokenizer(padding_side: str = "right", max_length: int = 12) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("<image>", behavior="isolated"),
                                                 pre_tokenizers.WhitespaceSplit()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
                                   additional_special_tokens=["<image>"], padding_side=padding_side,
                                   model_max_length=max_length)


def processor(family: str):
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    if family == "coca":
        from hf_mm.models.coca import CocaImageProcessor, CocaProcessor

        image_processor = CocaImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                             image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
        return CocaProcessor(image_processor, word_tokenizer())
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    if family == "x_clip":
        from hf_mm.models.x_clip.processing_x_clip import XClipProcessor

        return XClipProcessor(image_processor, word_tokenizer(max_length=8))
    if family == "flamingo":
        from hf_mm.models.flamingo.processing_flamingo import FlamingoProcessor

        return FlamingoProcessor(image_processor=image_processor, tokenizer=word_tokenizer("left"))
    from hf_mm.models.dalle import DalleProcessor

    return DalleProcessor(word_tokenizer(), text_seq_len=5)


def pil_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = np.random.default_rng(seed).integers(0, 255, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array)


# -- skipping unused positions ---------------------------------------------------------------------------
def padded_ids(low: int, high: int, pads: tuple[int, ...], length: int, side: str, generator):
    """Random ids `(len(pads), length)` in [low, high), row i padded (id 0) with `pads[i]` on `side`; and the mask."""
    ids = torch.randint(low, high, (len(pads), length), generator=generator)
    mask = torch.ones_like(ids)
    for row, count in enumerate(pads):
        if count:
            (mask[row, -count:] if side == "right" else mask[row, :count]).zero_()
    return ids.masked_fill(mask == 0, 0), mask


def training_step_with_skip(model, batch: dict, mlp, skip: bool, **forward_kwargs):
    """One loss forward + backward with `config.skip_unused_positions = skip`.
    Returns `(output, {name: grad}, rows that went through `mlp` on the forward)`."""
    model.config.skip_unused_positions = skip
    rows = []
    hook = mlp.register_forward_hook(lambda m, args, out: rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    try:
        out = model(**batch, **forward_kwargs)
    finally:
        hook.remove()
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out, grads, rows[0]
