"""Convert flamingo-pytorch's `FlamingoPaLM` (with a vit-pytorch `ViT` in an `Extractor`) to
`FlamingoForConditionalGeneration`.

    python -m conversion flamingo_pytorch --checkpoint flamingo.pt --reference-kwargs arch.json --output-dir out/ \
        [--tokenizer tok/ --media-token "<image>"]

`--reference-kwargs` (a JSON file or inline JSON) holds the `FlamingoPaLM(...)` keyword arguments and, under
"vit", those of vit-pytorch's `ViT` (the reference stores no config). Every source tensor is accounted for:
zero LayerNorm betas and rotary `inv_freq` are checked, the tied `to_logits.1.weight` must equal
`token_emb.weight`, the ViT classification head is dropped.
"""

from __future__ import annotations

import argparse

import torch

from hf_mm.models.flamingo import FlamingoConfig, FlamingoForConditionalGeneration

from .common import (
    Conversion, StateDictConverter, convert_from_reference, library_version, load_tokenizer, max_abs_diff,
    normalisation_note, read_json_argument, square_image_processor,
)
from .lucidrains import (
    convert_bias_free_layernorm, convert_gated_cross_attention, convert_parallel_block, convert_perceiver_layers,
)
from .vit_pytorch import check_square_image, convert_vit_extractor


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


def convert_state_dict(conv: StateDictConverter, ref, config: FlamingoConfig) -> None:
    """Map every `FlamingoPaLM` tensor (except the ViT's, see `convert_vit_extractor`) onto hf_mm names."""
    text = config.text_config
    conv.move("token_emb.weight", "model.embed_tokens.weight")
    conv.alias("to_logits.1.weight", "token_emb.weight")
    convert_bias_free_layernorm(conv, "to_logits.0", "model.norm")
    if conv.has("video_frame_pos_emb"):
        conv.move("video_frame_pos_emb", "model.perceiver.frame_position_embedding")
    conv.move("perceiver_resampler.latents", "model.perceiver.latents")
    conv.move("perceiver_resampler.media_pos_emb", "model.perceiver.media_position_embedding", lambda t: t[:, 0])
    convert_perceiver_layers(conv, "perceiver_resampler", "model.perceiver", config.perceiver_config.num_hidden_layers)
    for i in range(text.num_hidden_layers):
        convert_parallel_block(conv, f"layers.{i}.0.fn", f"model.layers.{i}", text.num_attention_heads, text.head_dim)
    for i in config.cross_attention_layer_ids():
        convert_gated_cross_attention(conv, f"layers.{i}.1", f"model.cross_attn_layers.{i}")


def convert(reference_model, state_dict: dict | None = None) -> FlamingoForConditionalGeneration:
    """`FlamingoPaLM` (instance; optionally weights from `state_dict`) -> `FlamingoForConditionalGeneration` (eval)."""
    conv = StateDictConverter(state_dict if state_dict is not None else reference_model.state_dict())
    vision_kwargs = convert_vit_extractor(conv, "img_encoder", "model.vision_model", reference_model.img_encoder)
    config = config_from_reference(reference_model, vision_kwargs)
    convert_state_dict(conv, reference_model, config)
    model = FlamingoForConditionalGeneration(config)
    return conv.finish(model)


def build_reference(arch: dict):
    """Instantiate `FlamingoPaLM` with a vit-pytorch `ViT` encoder from an architecture dict (square images only)."""
    from flamingo_pytorch import FlamingoPaLM
    from vit_pytorch.extractor import Extractor
    from vit_pytorch.vit import ViT

    arch = dict(arch)
    check_square_image(arch["vit"])  # a (32, 8) image has a square number of patches: only the kwargs tell
    vit = Extractor(ViT(**arch.pop("vit")), return_embeddings_only=True)
    return FlamingoPaLM(img_encoder=vit, **arch)


@torch.no_grad()
def verify(reference_model, model: FlamingoForConditionalGeneration, seed: int = 0) -> dict:
    """Max abs logit differences on random prompts (fp32), reference vs hf_mm: with two images, with a video
    (when the reference has video frame embeddings) and text only. Prompts start with a medium: before the first
    one, lucidrains' "all media" mode attends uniformly to every latent, hf_mm to none (documented)."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    vocab, media, size = cfg.text_config.vocab_size, cfg.media_token_id, cfg.vision_config.image_size
    ids = torch.randint(0, vocab, (2, 12), generator=g)
    ids[ids == media] = (media + 1) % vocab
    text_only = ids.clone()
    ids[:, [0, 6]] = media
    images = torch.randn(2, 2, 3, size, size, generator=g)
    reference_model.eval()
    report = {
        "logits_images": max_abs_diff(reference_model(ids, images=images),
                                      model(input_ids=ids, pixel_values=images).logits),
        "logits_text_only": max_abs_diff(reference_model(text_only), model(input_ids=text_only).logits),
    }
    frames = cfg.perceiver_config.max_video_frames
    if frames:
        video = torch.randn(2, 2, frames, 3, size, size, generator=g)
        report["logits_video"] = max_abs_diff(reference_model(ids, videos=video),
                                              model(input_ids=ids, pixel_values=video).logits)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference-kwargs", "--arch", dest="reference_kwargs", required=True,
                        help="JSON (file or inline): FlamingoPaLM kwargs plus 'vit' (vit-pytorch ViT kwargs)")
    parser.add_argument("--media-token", default="<image>",
                        help="the tokenizer's media token, whose id must be the model's media_token_id")


def run(args, progress) -> Conversion:
    """Rebuild the flamingo-pytorch reference, load the checkpoint, convert, verify (`python -m conversion`)."""
    arch = read_json_argument(args.reference_kwargs, "--reference-kwargs")
    if not isinstance(arch.get("vit"), dict):
        raise ValueError("--reference-kwargs needs a 'vit' entry with the vit-pytorch ViT arguments")
    _, model, report = convert_from_reference(progress, lambda: build_reference(arch), args.checkpoint, convert, verify)
    cfg, processor = model.config, None
    notes = ["Text before the first medium: in lucidrains' `only_attend_immediate_media=False` mode it attends "
             "uniformly to every latent, in hf_mm to none (the verification prompts start with a medium).",
             "flamingo-pytorch has no generation loop and no attention mask; hf_mm adds both."]
    if args.tokenizer:
        from hf_mm.models.flamingo.processing_flamingo import FlamingoProcessor

        tokenizer = load_tokenizer(args.tokenizer, cfg.text_config.vocab_size)
        processor = FlamingoProcessor(square_image_processor(cfg.vision_config.image_size), tokenizer,
                                      media_token=args.media_token)
        if processor.media_token_id != cfg.media_token_id:
            raise ValueError(f"--media-token {args.media_token!r} has id {processor.media_token_id} in --tokenizer, "
                             f"but the model's media_token_id is {cfg.media_token_id}")
        notes.append(normalisation_note("flamingo-pytorch"))
    else:
        notes.append("flamingo-pytorch has no tokenizer and none was given (--tokenizer): no processor files.")
    return Conversion(
        model=model, family="flamingo", source=f"flamingo-pytorch {library_version('flamingo-pytorch')}",
        checkpoint=args.checkpoint, parity=report, processor=processor,
        card_fields=dict(architecture_name="lucidrains flamingo-pytorch `FlamingoPaLM` (PaLM language model: parallel "
                                           "attention + SwiGLU blocks, multi-query attention, rotary positions) with "
                                           "a vit-pytorch `ViT`",
                         media_token_id=cfg.media_token_id), notes=notes,
    )


def main(argv=None):
    """`python -m conversion.flamingo_pytorch ...` = `python -m conversion flamingo_pytorch ...`."""
    from .__main__ import source_main

    return source_main("flamingo_pytorch", argv)


if __name__ == "__main__":
    main()
