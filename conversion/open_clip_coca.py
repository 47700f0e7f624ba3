"""open_clip CoCa -> hf_mm `CocaModel`.

    python -m conversion open_clip_coca --model coca_ViT-B-32 --checkpoint open_clip_model.safetensors \
        --output-dir coca-vit-b-32 [--push-to-hub org/coca-vit-b-32 [--private]]

`--model` names an open_clip architecture; `--model-config my_coca.json` registers an open_clip model config
file (`{"embed_dim", "multimodal_cfg", "text_cfg", "vision_cfg"}`) and uses it instead. The processor uses
the CLIP BPE tokenizer shipped inside open_clip (or `--tokenizer`).

`convert(reference_model)` maps every tensor of an `open_clip.coca_model.CoCa` (nothing is left unused),
`build_config(reference_model)` reads the architecture off the module tree.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hf_mm.models.coca import CocaConfig, CocaModel

from .common import (
    Conversion, StateDictConverter, adopt_special_token_ids, convert_from_reference, library_version, load_tokenizer,
    max_abs_diff,
    move_layernorm,
)
from .open_clip_blocks import convert_multihead_attention, convert_residual_block, convert_vision_transformer


def _act(block) -> str:
    act = block.mlp.gelu
    if type(act).__name__ == "QuickGELU":
        return "quick_gelu"
    if isinstance(act, torch.nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    raise ValueError(f"unsupported open_clip MLP activation {type(act).__name__} (supported: QuickGELU, GELU)")


def _norm_eps(modules, where: str) -> float:
    """The one LayerNorm eps of `modules` (a ValueError when they differ: hf_mm has one eps per tower)."""
    eps = {m.eps for m in modules if isinstance(m, torch.nn.LayerNorm)}
    if len(eps) != 1:
        raise ValueError(f"open_clip {where} LayerNorms use several eps values {sorted(eps)}: unsupported")
    return eps.pop()


def _layer_scale(block) -> float | None:
    ls = getattr(block, "ls_1", None)
    return float(ls.gamma.detach().flatten()[0]) if ls is not None and hasattr(ls, "gamma") else None


def check_supported(ref) -> None:
    """Refuse the open_clip CoCa options hf_mm does not reproduce, instead of converting a model that would
    compute something else."""
    visual, problems = ref.visual, []
    if getattr(visual, "attn_pool_contrastive", None) is not None:
        problems.append("vision attn_pooler_type 'parallel' / 'cascade' (the paper's pooling; open_clip marks it WIP)")
    if getattr(visual, "pool_type", "tok") != "tok":
        problems.append(f"vision pool_type={visual.pool_type!r} (only 'tok')")
    if getattr(visual, "final_ln_after_pool", False):
        problems.append("vision final_ln_after_pool=True")
    text_block, decoder_block = ref.text.transformer.resblocks[0], ref.text_decoder.resblocks[0]
    if ref.text.attn_mask is None:  # use_pad_mask applies only then
        problems.append("text no_causal_mask=True (a bidirectional text tower; hf_mm's is causal)")
    if _act(decoder_block) != _act(text_block):
        problems.append("the decoder's MLP activation differs from the text tower's")
    widths = text_block.mlp.c_fc.out_features, decoder_block.mlp.c_fc.out_features
    if widths[0] != widths[1]:  # open_clip's decoder always has mlp_ratio 4
        problems.append(f"text mlp_ratio: feed-forward width {widths[0]}, the decoder's {widths[1]} (hf_mm's decoder "
                        "shares the text tower's)")
    if (_layer_scale(text_block) is None) != (_layer_scale(decoder_block) is None):
        problems.append("ls_init_value (layer scale) in only one of text_cfg / multimodal_cfg (hf_mm's decoder "
                        "shares the text tower's)")
    if isinstance(ref.text.text_projection, torch.nn.Linear):
        problems.append("text proj_bias=True (a biased text projection)")
    if ref.text.text_projection is None:
        problems.append("text proj_type='none' (no text projection)")
    if problems:
        raise ValueError("cannot convert this open_clip CoCa exactly: " + "; ".join(problems))


def build_config(ref, **overrides) -> CocaConfig:
    """Read a `CocaConfig` off an open_clip CoCa module (refusing options hf_mm does not reproduce)."""
    check_supported(ref)
    text, visual, dec = ref.text, ref.visual, ref.text_decoder
    # hf_mm's text tower, decoder and image pooler (with ln_post after it) share one eps; the vision tower has its own
    pooler = getattr(visual, "attn_pool", None)
    pooler_modules = [*pooler.modules(), visual.ln_post] if pooler is not None else []
    text_eps = _norm_eps([*text.modules(), *dec.modules(), *pooler_modules], "text tower, decoder and image pooler")
    vision_eps = _norm_eps([m for m in visual.modules() if not any(m is p for p in pooler_modules)], "vision tower")
    tb, vb = text.transformer.resblocks[0], visual.transformer.resblocks[0]
    vision = dict(
        image_size=visual.image_size[0], patch_size=visual.patch_size[0], num_channels=visual.conv1.in_channels,
        hidden_size=visual.conv1.out_channels, num_hidden_layers=len(visual.transformer.resblocks),
        num_attention_heads=vb.attn.num_heads, intermediate_size=vb.mlp.c_fc.out_features, hidden_act=_act(vb),
        pre_norm=not isinstance(visual.ln_pre, torch.nn.Identity), final_norm=pooler is None,
        layer_scale_init=_layer_scale(vb), patch_dropout=float(getattr(visual.patch_dropout, "prob", 0.0)),
        layer_norm_eps=vision_eps,
    )
    text_cfg = dict(
        vocab_size=text.vocab_size, hidden_size=text.width, num_hidden_layers=len(text.transformer.resblocks),
        num_attention_heads=tb.attn.num_heads, intermediate_size=tb.mlp.c_fc.out_features, hidden_act=_act(tb),
        layer_scale_init=_layer_scale(tb), max_position_embeddings=text.context_length,
        padding_mask_style="open_clip" if text.correct_cls_mask else "open_clip_legacy", pad_token_id=text.pad_id,
        layer_norm_eps=text_eps, cls_position="end_of_context",  # its tokenizer pads every text to the context
    )
    for key in ("bos_token_id", "eos_token_id"):
        if key in overrides:
            text_cfg[key] = overrides.pop(key)
    cfg = dict(
        text_config=text_cfg,
        multimodal_config=dict(num_hidden_layers=len(dec.resblocks), num_attention_heads=dec.resblocks[0].attn.num_heads),
        vision_config=vision,
        attn_pooler_queries=pooler.query.shape[0] if pooler is not None else 0,
        attn_pooler_heads=pooler.attn.num_heads if pooler is not None else 8,
        attn_pooler_dim=pooler.query.shape[1] if pooler is not None else None,
        projection_dim=text.text_projection.shape[1],
        logit_scale_init_value=float(ref.logit_scale.detach().exp()),
    )
    cfg.update(overrides)
    return CocaConfig(**cfg)


def convert_state_dict(conv: StateDictConverter, config: CocaConfig) -> None:
    t = config.text_config
    conv.move("logit_scale", "logit_scale.logit_scale", lambda x: x.reshape(()))
    # text tower
    conv.move("text.token_embedding.weight", "text_model.embed_tokens.weight")
    conv.move("text.cls_emb", "text_model.cls_embedding")
    conv.move("text.positional_embedding", "text_model.position_embedding")
    for i in range(t.num_hidden_layers):
        convert_residual_block(conv, f"text.transformer.resblocks.{i}", f"text_model.layers.{i}")
    move_layernorm(conv, "text.ln_final", "text_model.cls_norm")
    conv.move("text.text_projection", "text_projection.weight", lambda p: p.t())
    # vision tower
    convert_vision_transformer(conv, "visual", "vision_model", config.vision_config)
    if config.attn_pooler_queries:
        conv.move("visual.attn_pool.query", "attn_pool.query")
        convert_multihead_attention(conv, "visual.attn_pool.attn", "attn_pool.attn",
                                    packed=conv.has("visual.attn_pool.attn.in_proj_weight"))
        move_layernorm(conv, "visual.attn_pool.ln_q", "attn_pool.norm_query")
        move_layernorm(conv, "visual.attn_pool.ln_k", "attn_pool.norm_context")
        move_layernorm(conv, "visual.ln_post", "pooler_norm")
    else:
        move_layernorm(conv, "visual.ln_post", "vision_model.final_norm")
    conv.move("visual.proj", "visual_projection.weight", lambda p: p.t())
    # multimodal decoder
    for i in range(config.multimodal_config.num_hidden_layers):
        convert_residual_block(conv, f"text_decoder.resblocks.{i}", f"decoder_layers.{i}.self_block")
        convert_residual_block(conv, f"text_decoder.cross_attn.{i}", f"decoder_layers.{i}.cross_block")
    move_layernorm(conv, "text_decoder.ln_final", "decoder_norm")
    conv.move("text_decoder.text_projection", "lm_head.weight", lambda p: p.t())


def convert(reference_model, **config_overrides) -> CocaModel:
    """open_clip `CoCa` module -> `CocaModel` in eval mode, every source tensor accounted for."""
    config = build_config(reference_model, **config_overrides)
    conv = StateDictConverter(reference_model.state_dict())
    convert_state_dict(conv, config)
    model = CocaModel(config)
    return conv.finish(model)


@torch.no_grad()
def verify(reference_model, model: CocaModel, image_size: int, vocab_size: int, seed: int = 0) -> dict:
    """Max abs differences of every output on random inputs (fp32), reference vs hf_mm; the losses against
    open_clip's `CoCaLoss` with the converted config's loss weights."""
    from open_clip.loss import CoCaLoss

    g = torch.Generator().manual_seed(seed)
    pad = model.config.text_config.pad_token_id
    images = torch.randn(2, 3, image_size, image_size, generator=g)
    text = torch.randint(1, vocab_size, (2, min(12, model.config.text_config.max_position_embeddings)), generator=g)
    text[1, -3:] = pad
    reference_model.eval()
    ref = reference_model(images, text, output_labels=False)
    ours = model(input_ids=text, pixel_values=images, attention_mask=(text != pad).long(), return_loss=True)
    labelled = reference_model(images, text)  # logits over text[:, :-1], labels text[:, 1:]
    weights = model.config.caption_loss_weight, model.config.contrastive_loss_weight
    clip_loss, caption_loss = CoCaLoss(caption_loss_weight=weights[0], clip_loss_weight=weights[1], pad_id=pad)(
        labelled["image_features"], labelled["text_features"], labelled["logits"], labelled["labels"],
        labelled["logit_scale"])
    return {
        "image_embeds": max_abs_diff(ref["image_features"], ours.image_embeds),
        "text_embeds": max_abs_diff(ref["text_features"], ours.text_embeds),
        "caption_logits": max_abs_diff(ref["logits"], ours.logits),
        "logit_scale": abs(float(ref["logit_scale"]) - float(model.logit_scale())),
        "caption_loss": abs(float(caption_loss) - weights[0] * float(ours.caption_loss)),
        "contrastive_loss": abs(float(clip_loss) - float(ours.contrastive_loss)),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arch = parser.add_mutually_exclusive_group(required=True)
    arch.add_argument("--model", help="open_clip architecture name, e.g. coca_ViT-B-32")
    arch.add_argument("--model-config", help="an open_clip model config JSON file (its name is the file's stem)")


def run(args, progress) -> Conversion:
    """Build the open_clip reference, load the checkpoint, convert, verify; called by `python -m conversion`."""
    import open_clip  # the reference library: a conversion-time dependency only

    name = args.model
    if args.model_config:
        path = Path(args.model_config)
        if not path.is_file():
            raise ValueError(f"--model-config must be an open_clip model config .json file, got {str(path)!r}")
        open_clip.add_model_config(path)
        name = path.stem
    _, model, report = convert_from_reference(
        progress, lambda: open_clip.create_model(name, pretrained=None), args.checkpoint, convert,
        lambda ref, model: verify(ref, model, model.config.vision_config.image_size,
                                  model.config.text_config.vocab_size),
    )
    cfg = model.config
    from hf_mm.models.coca.processing_coca import CocaProcessor

    processor = CocaProcessor.from_open_clip(image_size=cfg.vision_config.image_size,
                                             context_length=cfg.text_config.max_position_embeddings)
    if args.tokenizer:
        processor = CocaProcessor(processor.image_processor, load_tokenizer(args.tokenizer, cfg.text_config.vocab_size),
                                  text_pad_id=cfg.text_config.pad_token_id)
        adopt_special_token_ids(model, processor.tokenizer)
    elif len(processor.tokenizer) > cfg.text_config.vocab_size:
        raise ValueError(f"open_clip's CLIP tokenizer has {len(processor.tokenizer)} tokens but the model's vocabulary "
                         f"has {cfg.text_config.vocab_size}: pass the checkpoint's tokenizer with --tokenizer")
    return Conversion(
        model=model, family="coca", source=f"open_clip {library_version('open_clip_torch')}",
        checkpoint=args.checkpoint, parity=report, processor=processor,
        card_fields=dict(architecture_name=f"open_clip `{name}`"),
        notes=["open_clip's default generation (diverse group beam search) is not reproduced: hf_mm uses "
               "transformers' `generate()`."],
    )


def main(argv=None):
    """`python -m conversion.open_clip_coca ...` = `python -m conversion open_clip_coca ...`."""
    from .__main__ import source_main

    return source_main("open_clip_coca", argv)


if __name__ == "__main__":
    main()
