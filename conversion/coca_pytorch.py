"""lucidrains' coca-pytorch `CoCa` -> hf_mm `CocaModel`.

    python -m conversion coca_pytorch --checkpoint coca.pt --reference-kwargs coca_args.json --output-dir coca-hf

`--reference-kwargs` (a JSON file or inline JSON) holds the `CoCa(...)` constructor arguments, plus an optional
"vit" entry with vit-pytorch `ViT` arguments for the image encoder (coca-pytorch publishes no configs). The
model is rebuilt with the reference library, loaded with the checkpoint (safetensors or
`torch.load(weights_only=True)`), converted and verified. coca-pytorch has no tokenizer: pass `--tokenizer`
to write processor files.
"""

from __future__ import annotations

import argparse
import math

import torch

from hf_mm.models.coca import CocaConfig, CocaModel

from .common import (
    Conversion, StateDictConverter, adopt_special_token_ids, convert_from_reference, library_version, load_tokenizer,
    max_abs_diff,
    normalisation_note, read_json_argument, square_image_processor,
)
from .lucidrains import convert_bias_free_layernorm, convert_fused_kv_attention, convert_parallel_block
from .vit_pytorch import convert_vit_extractor


def _dims(ref) -> tuple[int, int, int]:
    block = ref.unimodal_layers[0].fn if len(ref.unimodal_layers) else ref.multimodal_layers[0][0].fn
    heads, dim_head, ff_inner = block.heads, block.fused_dims[1], block.fused_dims[3] // 2
    return heads, dim_head, ff_inner


def build_config(ref, vision_config: dict | None = None, **overrides) -> CocaConfig:
    """Read a `CocaConfig` off a coca-pytorch `CoCa` module."""
    heads, dim_head, ff_inner = _dims(ref)
    dim = ref.token_emb.embedding_dim
    cfg = dict(
        text_config=dict(
            vocab_size=ref.token_emb.num_embeddings, hidden_size=dim, num_hidden_layers=len(ref.unimodal_layers),
            num_attention_heads=heads, num_key_value_heads=1, head_dim=dim_head, intermediate_size=ff_inner,
            hidden_act="silu", gated_mlp=True, parallel_blocks=True, norm_bias=False, attention_bias=False,
            attention_out_bias=False, mlp_bias=False, position_embedding_type="rotary",
            max_position_embeddings=overrides.pop("max_position_embeddings", 1024),
            padding_mask_style="coca_pytorch", pad_token_id=ref.pad_id, tie_word_embeddings=True,
            bos_token_id=overrides.pop("bos_token_id", None), eos_token_id=overrides.pop("eos_token_id", None),
        ),
        multimodal_config=dict(num_hidden_layers=len(ref.multimodal_layers), parallel_cross_attention=True,
                               norm_context=False, cross_attention_num_key_value_heads=1),
        vision_config=vision_config,
        image_embed_dim=ref.img_attn_pool.to_kv.weight.shape[1],
        attn_pooler_queries=ref.img_queries.shape[0], attn_pooler_heads=heads, attn_pooler_head_dim=dim_head,
        attn_pooler_num_key_value_heads=1, attn_pooler_bias=False, attn_pooler_dim=dim,
        projection_dim=ref.img_to_latents.to_latents.out_features,
        logit_scale_init_value=math.e, logit_scale_max=None,  # coca-pytorch never clamps its temperature
        caption_loss_weight=ref.caption_loss_weight, contrastive_loss_weight=ref.contrastive_loss_weight,
    )
    cfg.update(overrides)
    return CocaConfig(**cfg)


def convert(reference_model, **config_overrides) -> CocaModel:
    """coca-pytorch `CoCa` (with an `Extractor(ViT)` image encoder, or none) -> `CocaModel` in eval mode."""
    ref = reference_model
    conv = StateDictConverter(ref.state_dict())
    heads, dim_head, _ = _dims(ref)
    vision = None
    if ref.img_encoder is not None:
        vision = convert_vit_extractor(conv, "img_encoder", "vision_model", ref.img_encoder)
    config = build_config(ref, vision, **config_overrides)

    conv.move("text_cls_token", "text_model.cls_embedding")
    conv.move("img_queries", "attn_pool.query")
    conv.move("temperature", "logit_scale.logit_scale", lambda t: t.reshape(()))
    conv.move("token_emb.weight", "text_model.embed_tokens.weight")
    conv.alias("to_logits.1.weight", "token_emb.weight")  # tied
    convert_bias_free_layernorm(conv, "img_attn_pool.norm", "attn_pool.norm_query")
    convert_bias_free_layernorm(conv, "img_attn_pool.context_norm", "attn_pool.norm_context")
    convert_fused_kv_attention(conv, "img_attn_pool", "attn_pool.attn")
    convert_bias_free_layernorm(conv, "img_attn_pool_norm", "pooler_norm")
    convert_bias_free_layernorm(conv, "text_cls_norm", "text_model.cls_norm")
    conv.move("img_to_latents.to_latents.weight", "visual_projection.weight")
    conv.move("text_to_latents.to_latents.weight", "text_projection.weight")
    for i in range(len(ref.unimodal_layers)):
        convert_parallel_block(conv, f"unimodal_layers.{i}.fn", f"text_model.layers.{i}", heads, dim_head)
    for i in range(len(ref.multimodal_layers)):
        convert_parallel_block(conv, f"multimodal_layers.{i}.0.fn", f"decoder_layers.{i}.self_block", heads, dim_head)
        src, dst = f"multimodal_layers.{i}.1.fn", f"decoder_layers.{i}.cross_block"
        convert_bias_free_layernorm(conv, f"{src}.norm", f"{dst}.norm1")
        convert_fused_kv_attention(conv, src, f"{dst}.attn")
        conv.move(f"{src}.ff.0.weight", f"{dst}.mlp.fc1.weight")
        conv.move(f"{src}.ff.2.weight", f"{dst}.mlp.fc2.weight")
    convert_bias_free_layernorm(conv, "to_logits.0", "decoder_norm")
    return conv.finish(CocaModel(config))


@torch.no_grad()
def verify(reference_model, model: CocaModel, image_size: int | None = None, seed: int = 0) -> dict:
    """Max abs differences of logits, latents and the weighted caption + contrastive loss on random inputs
    (fp32), reference vs hf_mm."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    pad = cfg.text_config.pad_token_id
    text = torch.randint(1, cfg.text_config.vocab_size, (2, 9), generator=g)
    text[1, -2:] = pad
    if image_size is None:
        inputs = dict(image_tokens=torch.randn(2, 16, cfg.image_embed_dim, generator=g))
        ours_inputs = dict(image_embeds=inputs["image_tokens"])
    else:
        inputs = dict(images=torch.randn(2, 3, image_size, image_size, generator=g))
        ours_inputs = dict(pixel_values=inputs["images"])
    reference_model.eval()
    logits = reference_model(text.clone(), **inputs)
    text_embeds, image_embeds = reference_model(text.clone(), **inputs, return_embeddings=True)
    # coca-pytorch's labels are given per position (no shift); hf_mm shifts like a causal LM
    labels = torch.cat((text[:, 1:], torch.full_like(text[:, :1], pad)), dim=1)
    loss = reference_model(text.clone(), **inputs, labels=labels, return_loss=True)
    out = model(input_ids=text, attention_mask=(text != pad).long(), labels=text, **ours_inputs)
    normalize = torch.nn.functional.normalize
    return {
        "caption_logits": max_abs_diff(logits, out.logits),
        "text_latents": max_abs_diff(normalize(reference_model.text_to_latents.to_latents(text_embeds), dim=-1),
                                     out.text_embeds),
        "image_latents": max_abs_diff(normalize(reference_model.img_to_latents.to_latents(image_embeds), dim=-1),
                                      out.image_embeds),
        "loss": abs(float(loss) - float(out.loss)),
    }


def build_reference(kwargs: dict):
    """coca-pytorch `CoCa(**kwargs)`; a "vit" entry becomes an `Extractor(ViT(**vit))` image encoder."""
    from coca_pytorch import CoCa  # reference library: conversion-time dependency only

    kwargs = dict(kwargs)
    vit_args = kwargs.pop("vit", None)
    if vit_args is not None:
        from vit_pytorch import ViT
        from vit_pytorch.extractor import Extractor

        kwargs["img_encoder"] = Extractor(ViT(**vit_args), return_embeddings_only=True, detach=False)
    return CoCa(**kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference-kwargs", "--config", dest="reference_kwargs", required=True,
                        help="JSON (file or inline): CoCa(...) arguments and an optional 'vit' entry (ViT arguments)")


def run(args, progress) -> Conversion:
    """Rebuild the coca-pytorch reference, load the checkpoint, convert, verify; called by `python -m conversion`."""
    kwargs = read_json_argument(args.reference_kwargs, "--reference-kwargs")
    image_size = kwargs["vit"]["image_size"] if isinstance(kwargs.get("vit"), dict) else None
    _, model, report = convert_from_reference(progress, lambda: build_reference(kwargs), args.checkpoint, convert,
                                              lambda ref, model: verify(ref, model, image_size))
    cfg = model.config
    processor, notes = None, [normalisation_note("coca-pytorch")]
    if image_size is None:
        notes = ["coca-pytorch was used without an image encoder: the model takes precomputed `image_embeds` "
                 f"of width {cfg.image_embed_dim}, so no processor is written."]
    elif args.tokenizer:
        from hf_mm.models.coca.processing_coca import CocaImageProcessor, CocaProcessor

        processor = CocaProcessor(square_image_processor(image_size, CocaImageProcessor),
                                  load_tokenizer(args.tokenizer, cfg.text_config.vocab_size),
                                  text_pad_id=cfg.text_config.pad_token_id)
        adopt_special_token_ids(model, processor.tokenizer)
    else:
        notes = ["coca-pytorch has no tokenizer and none was given (--tokenizer): no processor files are written."]
    return Conversion(
        model=model, family="coca", source=f"coca-pytorch {library_version('CoCa-pytorch')}",
        checkpoint=args.checkpoint, parity=report, processor=processor,
        card_fields=dict(architecture_name="lucidrains coca-pytorch `CoCa`"), notes=notes,
    )


def main(argv=None):
    """`python -m conversion.coca_pytorch ...` = `python -m conversion coca_pytorch ...`."""
    from .__main__ import source_main

    return source_main("coca_pytorch", argv)


if __name__ == "__main__":
    main()
