"""Convert flamingo-pytorch's `FlamingoPaLM` (with a vit-pytorch `ViT` in an `Extractor`) to
`FlamingoForConditionalGeneration`.

    python -m conversion.flamingo_pytorch --checkpoint flamingo.pt --arch arch.json --output-dir out/

`arch.json` holds the `FlamingoPaLM(...)` keyword arguments and, under "vit", those of vit-pytorch's `ViT`
(the reference stores no config). Every source tensor is accounted for: zero LayerNorm betas and rotary
`inv_freq` are checked, the tied `to_logits.1.weight` must equal `token_emb.weight`, the ViT classification
head is dropped.
"""

from __future__ import annotations

import argparse
import json

import torch

from hf_mm.models.flamingo import FlamingoConfig, FlamingoForConditionalGeneration

from .common import StateDictConverter, load_checkpoint, render_model_card, save_converted
from .lucidrains import convert_bias_free_layernorm, convert_parallel_block
from .vit_pytorch import convert_vit_pytorch


def config_from_reference(ref, vision_kwargs: dict) -> FlamingoConfig:
    """Read the architecture of a `FlamingoPaLM` instance."""
    block = ref.layers[0][0].fn
    heads, dim_head = block.heads, block.fused_dims[1]
    xattn_ids = [i for i, (_, xattn) in enumerate(ref.layers) if xattn is not None]
    every = xattn_ids[1] - xattn_ids[0] if len(xattn_ids) > 1 else len(ref.layers)
    perceiver = ref.perceiver_resampler
    frames = ref.video_frame_pos_emb.shape[0] if ref.video_frame_pos_emb is not None else 0
    dim = ref.token_emb.embedding_dim
    return FlamingoConfig(
        vision_config=vision_kwargs,
        perceiver_config=dict(
            num_latents=perceiver.latents.shape[0], num_hidden_layers=len(perceiver.layers),
            num_attention_heads=heads, head_dim=dim_head, intermediate_size=perceiver.layers[0][1][1].out_features,
            max_num_media=perceiver.media_pos_emb.shape[0], max_video_frames=frames,
        ),
        text_config=dict(
            vocab_size=ref.token_emb.num_embeddings, hidden_size=dim, num_hidden_layers=len(ref.layers),
            num_attention_heads=heads, num_key_value_heads=1, head_dim=dim_head,
            intermediate_size=block.fused_dims[3] // 2,
        ),
        media_token_id=ref.media_token_id,
        cross_attn_every=every,
        cross_attn_intermediate_size=ref.layers[0][1].ff[1].out_features,
        only_attend_immediate_media=ref.layers[0][1].attn.only_attend_immediate_media,
    )


def _split_kv(conv: StateDictConverter, src: str, dst: str) -> None:
    k, v = conv.take(f"{src}.to_kv.weight").chunk(2, dim=0)
    conv.move(f"{src}.to_q.weight", f"{dst}.q_proj.weight")
    conv.put(f"{dst}.k_proj.weight", k)
    conv.put(f"{dst}.v_proj.weight", v)
    conv.move(f"{src}.to_out.weight", f"{dst}.o_proj.weight")


def _move_layernorm(conv, src, dst):
    conv.move(f"{src}.weight", f"{dst}.weight")
    conv.move(f"{src}.bias", f"{dst}.bias")


def convert_state_dict(conv: StateDictConverter, ref, config: FlamingoConfig) -> None:
    """Map every `FlamingoPaLM` tensor (except the ViT's, see `convert_vit_pytorch`) onto hf_mm names."""
    text = config.text_config
    conv.move("token_emb.weight", "model.embed_tokens.weight")
    conv.alias("to_logits.1.weight", "token_emb.weight")
    convert_bias_free_layernorm(conv, "to_logits.0", "model.norm")
    if conv.has("video_frame_pos_emb"):
        conv.move("video_frame_pos_emb", "model.perceiver.frame_position_embedding")
    conv.move("perceiver_resampler.latents", "model.perceiver.latents")
    conv.move("perceiver_resampler.media_pos_emb", "model.perceiver.media_position_embedding", lambda t: t[:, 0])
    _move_layernorm(conv, "perceiver_resampler.norm", "model.perceiver.norm")
    for i in range(config.perceiver_config.num_hidden_layers):
        src, dst = f"perceiver_resampler.layers.{i}", f"model.perceiver.layers.{i}"
        _move_layernorm(conv, f"{src}.0.norm_media", f"{dst}.norm_media")
        _move_layernorm(conv, f"{src}.0.norm_latents", f"{dst}.norm_latents")
        _split_kv(conv, f"{src}.0", f"{dst}.attn")
        _move_layernorm(conv, f"{src}.1.0", f"{dst}.norm_ff")
        conv.move(f"{src}.1.1.weight", f"{dst}.mlp.fc1.weight")
        conv.move(f"{src}.1.3.weight", f"{dst}.mlp.fc2.weight")
    for i in range(text.num_hidden_layers):
        convert_parallel_block(conv, f"layers.{i}.0.fn", f"model.layers.{i}", text.num_attention_heads, text.head_dim)
    for i in config.cross_attention_layer_ids():
        src, dst = f"layers.{i}.1", f"model.cross_attn_layers.{i}"
        conv.move(f"{src}.attn_gate", f"{dst}.attn_gate")
        conv.move(f"{src}.ff_gate", f"{dst}.ff_gate")
        _move_layernorm(conv, f"{src}.attn.norm", f"{dst}.norm1")
        _split_kv(conv, f"{src}.attn", f"{dst}.attn")
        _move_layernorm(conv, f"{src}.ff.0", f"{dst}.norm2")
        conv.move(f"{src}.ff.1.weight", f"{dst}.mlp.fc1.weight")
        conv.move(f"{src}.ff.3.weight", f"{dst}.mlp.fc2.weight")


def convert(reference_model, state_dict: dict | None = None) -> FlamingoForConditionalGeneration:
    """`FlamingoPaLM` (instance; optionally weights from `state_dict`) -> `FlamingoForConditionalGeneration` (eval)."""
    conv = StateDictConverter(state_dict if state_dict is not None else reference_model.state_dict())
    vit = getattr(reference_model.img_encoder, "vit", reference_model.img_encoder)
    vision_kwargs = convert_vit_pytorch(conv, "img_encoder.vit", "model.vision_model", vit)
    config = config_from_reference(reference_model, vision_kwargs)
    convert_state_dict(conv, reference_model, config)
    model = FlamingoForConditionalGeneration(config)
    return conv.finish(model)


def build_reference(arch: dict):
    """Instantiate `FlamingoPaLM` with a vit-pytorch `ViT` encoder from an architecture dict."""
    from flamingo_pytorch import FlamingoPaLM
    from vit_pytorch.extractor import Extractor
    from vit_pytorch.vit import ViT

    arch = dict(arch)
    vit = Extractor(ViT(**arch.pop("vit")), return_embeddings_only=True)
    return FlamingoPaLM(img_encoder=vit, **arch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="FlamingoPaLM state dict (.pt or .safetensors)")
    parser.add_argument("--arch", required=True, help="JSON file: FlamingoPaLM kwargs plus 'vit' (ViT kwargs)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--push-to-hub", default=None)
    args = parser.parse_args(argv)
    with open(args.arch) as f:
        arch = json.load(f)
    reference = build_reference(arch)
    state_dict = load_checkpoint(args.checkpoint)
    reference.load_state_dict(state_dict)
    model = convert(reference.eval(), state_dict)
    n_params = sum(p.numel() for p in model.parameters())
    card = render_model_card(
        "flamingo.md", source="flamingo-pytorch 0.1.2 `FlamingoPaLM`", checkpoint=args.checkpoint,
        num_parameters=f"{n_params:,}", hidden_size=model.config.text_config.hidden_size,
        num_layers=model.config.text_config.num_hidden_layers, media_token_id=model.config.media_token_id,
    )
    save_converted(model, args.output_dir, card=card, report={"source": args.checkpoint, "parameters": n_params},
                   push_to_hub=args.push_to_hub)
    print(f"saved to {args.output_dir}")


if __name__ == "__main__":
    main()
