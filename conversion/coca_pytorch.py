"""lucidrains' coca-pytorch `CoCa` -> hf_mm `CocaModel`.

    python -m conversion.coca_pytorch --checkpoint coca.pt --config coca_args.json --output-dir coca-hf

`--config` holds the `CoCa(...)` constructor arguments (plus an optional "vit" entry with vit-pytorch `ViT`
arguments for the image encoder). The model is rebuilt with the reference library, loaded with the checkpoint
(safetensors or `torch.load(weights_only=True)`), converted and verified.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from hf_mm.models.coca import CocaConfig, CocaModel

from .common import StateDictConverter, load_checkpoint, max_abs_diff, render_model_card, save_converted
from .lucidrains import convert_bias_free_layernorm, convert_parallel_block
from .vit_pytorch import convert_vit_pytorch


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


def _convert_cross_attention(conv, src, dst):
    """coca-pytorch `CrossAttention` (multi-query, fused `to_kv`) -> cross-attention `TransformerBlock` parts."""
    conv.move(f"{src}.to_q.weight", f"{dst}.q_proj.weight")
    k, v = conv.take(f"{src}.to_kv.weight").chunk(2, dim=0)
    conv.put(f"{dst}.k_proj.weight", k)
    conv.put(f"{dst}.v_proj.weight", v)
    conv.move(f"{src}.to_out.weight", f"{dst}.o_proj.weight")


def convert(reference_model, **config_overrides) -> CocaModel:
    """coca-pytorch `CoCa` (with an `Extractor(ViT)` image encoder, or none) -> `CocaModel` in eval mode."""
    ref = reference_model
    conv = StateDictConverter(ref.state_dict())
    heads, dim_head, _ = _dims(ref)
    vision = None
    if ref.img_encoder is not None:
        vit = getattr(ref.img_encoder, "vit", None)
        if vit is None or type(vit).__name__ != "ViT":
            raise ValueError(f"only vit-pytorch `ViT` wrapped in `Extractor` is supported as img_encoder, got {type(ref.img_encoder).__name__}")
        vision = convert_vit_pytorch(conv, "img_encoder.vit", "vision_model", vit)
    config = build_config(ref, vision, **config_overrides)

    conv.move("text_cls_token", "text_model.cls_embedding")
    conv.move("img_queries", "attn_pool.query")
    conv.move("temperature", "logit_scale.logit_scale", lambda t: t.reshape(()))
    conv.move("token_emb.weight", "text_model.embed_tokens.weight")
    conv.alias("to_logits.1.weight", "token_emb.weight")  # tied
    convert_bias_free_layernorm(conv, "img_attn_pool.norm", "attn_pool.norm_query")
    convert_bias_free_layernorm(conv, "img_attn_pool.context_norm", "attn_pool.norm_context")
    _convert_cross_attention(conv, "img_attn_pool", "attn_pool.attn")
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
        _convert_cross_attention(conv, src, f"{dst}.attn")
        conv.move(f"{src}.ff.0.weight", f"{dst}.mlp.fc1.weight")
        conv.move(f"{src}.ff.2.weight", f"{dst}.mlp.fc2.weight")
    convert_bias_free_layernorm(conv, "to_logits.0", "decoder_norm")
    return conv.finish(CocaModel(config))


@torch.no_grad()
def verify(reference_model, model: CocaModel, image_size: int | None = None, seed: int = 0) -> dict:
    """Max abs differences of logits and embeddings on random inputs (fp32), reference vs hf_mm."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    text = torch.randint(1, cfg.text_config.vocab_size, (2, 9), generator=g)
    text[1, -2:] = cfg.text_config.pad_token_id
    if image_size is None:
        inputs = dict(image_tokens=torch.randn(2, 16, cfg.image_embed_dim, generator=g))
        ours_inputs = dict(image_embeds=inputs["image_tokens"])
    else:
        inputs = dict(images=torch.randn(2, 3, image_size, image_size, generator=g))
        ours_inputs = dict(pixel_values=inputs["images"])
    reference_model.eval()
    logits = reference_model(text.clone(), **inputs)
    text_embeds, image_embeds = reference_model(text.clone(), **inputs, return_embeddings=True)
    out = model(input_ids=text, attention_mask=(text != cfg.text_config.pad_token_id).long(), **ours_inputs)
    return {
        "caption_logits": max_abs_diff(logits, out.logits),
        "text_latents": max_abs_diff(torch.nn.functional.normalize(reference_model.text_to_latents.to_latents(text_embeds), dim=-1), out.text_embeds),
        "image_latents": max_abs_diff(torch.nn.functional.normalize(reference_model.img_to_latents.to_latents(image_embeds), dim=-1), out.image_embeds),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="coca-pytorch state dict (.safetensors, or .pt loaded weights_only)")
    parser.add_argument("--config", required=True, help="JSON with the CoCa(...) arguments and an optional 'vit' entry")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--push-to-hub")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)

    from coca_pytorch import CoCa  # reference library: conversion-time dependency only

    kwargs = json.loads(open(args.config).read())
    vit_args = kwargs.pop("vit", None)
    image_size = None
    if vit_args is not None:
        from vit_pytorch import ViT
        from vit_pytorch.extractor import Extractor

        kwargs["img_encoder"] = Extractor(ViT(**vit_args), return_embeddings_only=True, detach=False)
        image_size = vit_args["image_size"]
    reference = CoCa(**kwargs)
    reference.load_state_dict(load_checkpoint(args.checkpoint), strict=True)
    model = convert(reference)
    report = verify(reference, model, image_size)
    print("max abs diff vs coca-pytorch:", report)
    card = render_model_card("coca.md", model_name="coca-pytorch CoCa", source="lucidrains/coca-pytorch",
                             parity=report, repo_id=args.push_to_hub or args.output_dir)
    save_converted(model, args.output_dir, None, card, report, args.push_to_hub, args.private)


if __name__ == "__main__":
    main()
