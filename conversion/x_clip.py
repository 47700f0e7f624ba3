"""Convert lucidrains' `x_clip.CLIP` (x-clip 0.14.4) into `hf_mm.models.x_clip.XClipModel`.

    python -m conversion x_clip --reference-kwargs clip_kwargs.json --checkpoint clip.pt --output-dir out/ \
        [--tokenizer tok/] [--push-to-hub user/repo [--private]]

Without `--tokenizer`, a model whose vocabulary holds x-clip's own CLIP BPE (49408 tokens) gets a processor that
reproduces x-clip's `tokenizer.tokenize`; a smaller vocabulary gets no processor files.

`--reference-kwargs` (a JSON file or inline JSON) holds the keyword arguments the checkpoint's `x_clip.CLIP`
was built with (x-clip publishes no configs). Every tensor
of the source state dict is consumed: mapped, verified as an alias of the module it duplicates (x-clip
registers its towers again under `mlm.` / `visual_ssl.`), or dropped with a reason (the `*_extra`
projections x-clip always creates, unused unless `extra_latent_projection=True`).
"""

from __future__ import annotations

import argparse
import re

import torch

from hf_mm.clip_bpe import CLIP_BPE_VOCAB_SIZE, OPENAI_CLIP_SPECIAL_TOKENS, clip_tokenizer_from_bpe
from hf_mm.layers.rotary import RotaryEmbedding
from hf_mm.models.x_clip import XClipConfig, XClipModel
from hf_mm.models.x_clip.processing_x_clip import XClipProcessor
from hf_mm.models.x_clip.tokenization_x_clip import XClipTokenizer

from .common import (
    Conversion, StateDictConverter, convert_from_reference, library_version, load_tokenizer, max_abs_diff,
    normalisation_note, read_json_argument, square_image_processor,
)


def _tower_shape(transformer) -> dict:
    """Depth, heads, head_dim and mlp ratio of an x-clip `Transformer`."""
    attn, ff = transformer.layers[0][0].fn, transformer.layers[0][1].fn
    dim = attn.to_out[0].out_features
    return dict(
        hidden_size=dim, num_hidden_layers=len(transformer.layers), num_attention_heads=attn.heads,
        head_dim=attn.to_qkv.out_features // 3 // attn.heads, mlp_ratio=ff.net[0].out_features / 2 / dim,
    )


def config_from_reference(clip) -> XClipConfig:
    """Read the hyper-parameters of a built-in-tower `x_clip.CLIP` from its modules."""
    from x_clip.visual_ssl import SimCLR, SimSiam

    text, vision = clip.text_transformer, clip.visual_transformer
    if type(text).__name__ != "TextTransformer" or type(vision).__name__ != "VisionTransformer":
        raise ValueError("only x-clip's built-in TextTransformer / VisionTransformer can be converted")
    use_mlm = hasattr(clip, "mlm")
    attn = text.transformer.layers[0][0].fn
    text_config = dict(
        _tower_shape(text.transformer), vocab_size=text.token_emb.num_embeddings - int(use_mlm),
        max_position_embeddings=clip.text_seq_len, causal=attn.causal,
        position_embedding_type="rotary" if text.rotary_pos_emb is not None else "absolute",
        pad_token_id=clip.text_pad_id, eos_token_id=clip.text_eos_id,
    )
    if text.rotary_pos_emb is not None:
        text_config["rotary_dim"] = 2 * text.rotary_pos_emb.inv_freq.shape[0]
    patch_dim = vision.to_tokens[1].in_features
    vision_config = dict(
        _tower_shape(vision.transformer), image_size=clip.image_size, num_channels=clip.image_channels,
        patch_size=int(round((patch_dim / clip.image_channels) ** 0.5)), patch_dropout=vision.patch_dropout.prob,
    )
    kwargs = dict(
        text_config=text_config, vision_config=vision_config, projection_dim=clip.dim_latent,
        logit_scale_init_value=float(clip.temperature.detach()),
        # hf_mm clamps the scale to 100 (open_clip); a checkpoint whose scale grew past it keeps x-clip's unclamped one
        logit_scale_max=None if float(clip.temperature.detach().exp()) > 100.0 else 100.0,
        text_has_cls_token=clip.text_has_cls_token, visual_has_cls_token=clip.visual_has_cls_token,
        text_encode_without_mask=clip.text_encode_without_mask, use_all_token_embeds=clip.use_all_token_embeds,
        downsample_image_embeds=isinstance(clip.to_visual_latent, torch.nn.Sequential),
        decoupled_contrastive_learning=clip.decoupled_contrastive_learning,
        extra_latent_projection=clip.extra_latent_projection, use_mlm=use_mlm,
        text_ssl_loss_weight=clip.text_ssl_loss_weight if use_mlm else 0.05,
        multiview_loss_weight=clip.multiview_loss_weight, sim_reg_loss_weight=clip.sim_reg_loss_weight,
    )
    if use_mlm:
        mlm = clip.mlm
        kwargs.update(mlm_mask_prob=mlm.mask_prob, mlm_replace_prob=mlm.replace_prob,
                      mlm_random_token_prob=mlm.random_token_prob, mlm_mask_token_id=mlm.mask_token_id,
                      mlm_pad_token_id=mlm.pad_token_id,  # x-clip's own MLM pad id, independent of text_pad_id
                      mlm_mask_ignore_token_ids=sorted(mlm.mask_ignore_token_ids - {mlm.pad_token_id}))
    if getattr(clip, "use_visual_ssl", False):
        ssl = clip.visual_ssl
        if not isinstance(ssl, (SimSiam, SimCLR)):
            raise ValueError(f"custom visual_ssl modules ({type(ssl).__name__}) cannot be converted")
        wrapper = ssl.online_encoder if isinstance(ssl, SimSiam) else ssl.net
        kwargs.update(
            use_visual_ssl=True, visual_ssl_type="simsiam" if isinstance(ssl, SimSiam) else "simclr",
            visual_ssl_hidden_layer=wrapper.layer, visual_ssl_projection_size=wrapper.projection_size,
            visual_ssl_projection_hidden_size=wrapper.projection_hidden_size,
            image_ssl_loss_weight=clip.image_ssl_loss_weight,
        )
        if isinstance(ssl, SimCLR):
            kwargs.update(simclr_temperature=ssl.temperature, simclr_augment_both=ssl.augment_both)
    return XClipConfig(**kwargs)


def _convert_transformer(conv: StateDictConverter, src: str, dst: str, depth: int) -> None:
    conv.move(f"{src}.norm_in.g", f"{dst}.norm_in.weight")
    conv.move(f"{src}.norm_out.g", f"{dst}.norm_out.weight")
    for i in range(depth):
        s, d = f"{src}.layers.{i}", f"{dst}.layers.{i}"
        conv.move(f"{s}.0.norm.g", f"{d}.norm1.weight")
        for name, part in zip(("q", "k", "v"), conv.take(f"{s}.0.fn.to_qkv.weight").chunk(3, dim=0)):
            conv.put(f"{d}.attn.{name}_proj.weight", part)
        conv.move(f"{s}.0.fn.to_out.0.weight", f"{d}.attn.o_proj.weight")
        conv.move(f"{s}.0.fn.to_out.1.g", f"{d}.attn.o_norm.weight")
        conv.move(f"{s}.1.norm.g", f"{d}.norm2.weight")
        conv.move(f"{s}.1.fn.net.0.weight", f"{d}.mlp.fc1.weight")
        conv.move(f"{s}.1.fn.net.2.g", f"{d}.mlp.inner_norm.weight")
        conv.move(f"{s}.1.fn.net.4.weight", f"{d}.mlp.fc2.weight")


def _convert_visual_latent(conv, src: str, dst: str, downsample: bool) -> None:
    if downsample:
        conv.move(f"{src}.1.weight", f"{dst}.depthwise.weight")
        conv.move(f"{src}.2.weight", f"{dst}.pointwise.weight")
        conv.move(f"{src}.2.bias", f"{dst}.pointwise.bias")
    else:
        conv.move(f"{src}.weight", f"{dst}.weight")


def _convert_mlp(conv, src: str, dst: str, layout: dict[int, str]) -> None:
    """nn.Sequential of Linear / BatchNorm1d -> named modules; BatchNorm buffers move too."""
    for index, name in layout.items():
        for key in conv.keys_matching(re.escape(f"{src}.{index}.") + r"[a-z_]+"):
            conv.move(key, f"{dst}.{name}.{key.rsplit('.', 1)[1]}")


def _alias_tower(conv, prefix: str, tower: str) -> None:
    """x-clip re-registers a tower under another prefix (`mlm.transformer`, `visual_ssl.net`, ...)."""
    for key in conv.keys_matching(re.escape(prefix + ".") + ".*"):
        conv.alias(key, tower + key[len(prefix):])


def convert(reference_model) -> XClipModel:
    """`x_clip.CLIP` -> `XClipModel` with identical weights (fp32, eval mode)."""
    config = config_from_reference(reference_model)
    model = XClipModel(config)
    conv = StateDictConverter(reference_model.state_dict())
    t_cfg, v_cfg = config.text_config, config.vision_config
    conv.move("temperature", "logit_scale.logit_scale")
    if not t_cfg.causal:
        conv.move("text_transformer.cls_token", "text_model.cls_token")
    conv.move("text_transformer.token_emb.weight", "text_model.embed_tokens.weight")
    if t_cfg.position_embedding_type == "absolute":
        conv.move("text_transformer.abs_pos_emb.weight", "text_model.position_embedding.weight")
    else:
        conv.check_buffer("text_transformer.rotary_pos_emb.inv_freq", RotaryEmbedding.compute_inv_freq(t_cfg.rotary_dim))
    _convert_transformer(conv, "text_transformer.transformer", "text_model.encoder", t_cfg.num_hidden_layers)
    conv.move("visual_transformer.to_tokens.1.weight", "vision_model.patch_embedding.weight")
    conv.move("visual_transformer.to_tokens.1.bias", "vision_model.patch_embedding.bias")
    conv.move("visual_transformer.pos_emb.weight", "vision_model.position_embedding.weight")
    conv.move("visual_transformer.to_cls_tokens.1.weight", "vision_model.cls_projection.weight")
    _convert_transformer(conv, "visual_transformer.transformer", "vision_model.encoder", v_cfg.num_hidden_layers)
    conv.move("to_text_latent.weight", "text_projection.weight")
    _convert_visual_latent(conv, "to_visual_latent", "visual_projection", config.downsample_image_embeds)
    if config.extra_latent_projection:
        conv.move("to_text_latent_extra.weight", "text_projection_extra.weight")
        _convert_visual_latent(conv, "to_visual_latent_extra", "visual_projection_extra", config.downsample_image_embeds)
    else:  # x-clip always creates the CLOOB projections; without the option they are never used
        for key in conv.keys_matching(r"to_(text|visual)_latent_extra\..*"):
            conv.take(key)
    if config.use_mlm:
        conv.move("mlm.to_logits.weight", "mlm.lm_head.weight")
        conv.move("mlm.to_logits.bias", "mlm.lm_head.bias")
        _alias_tower(conv, "mlm.transformer", "text_transformer")
    if config.use_visual_ssl:
        projector = {0: "fc1", 1: "bn1", 3: "fc2", 4: "bn2", 6: "fc3", 7: "bn3"}
        if config.visual_ssl_type == "simsiam":
            _alias_tower(conv, "visual_ssl.net", "visual_transformer")
            _alias_tower(conv, "visual_ssl.online_encoder.net", "visual_transformer")
            _convert_mlp(conv, "visual_ssl.online_encoder.projector", "visual_ssl.projector", projector)
            _convert_mlp(conv, "visual_ssl.online_predictor", "visual_ssl.predictor", {0: "fc1", 1: "bn1", 3: "fc2"})
        else:
            _alias_tower(conv, "visual_ssl.net.net", "visual_transformer")
            _convert_mlp(conv, "visual_ssl.net.projector", "visual_ssl.projector", projector)
    return conv.finish(model)


def _train_without_dropout(module: torch.nn.Module) -> None:
    """Training mode (x-clip computes its loss only there) with dropout and patch dropout switched off."""
    module.train()
    for sub in module.modules():
        if isinstance(sub, torch.nn.Dropout) or type(sub).__name__ == "PatchDropout":
            sub.eval()


def parity_report(reference_model, model: XClipModel, batch: int = 2, seed: int = 0) -> dict:
    """Max abs differences of latents and similarities on random inputs, and of the training loss (seeded, without
    dropout or patch dropout) unless visual SSL makes it random by design (its augmentations)."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, cfg.text_config.vocab_size, (batch, cfg.text_config.max_position_embeddings), generator=g)
    if cfg.text_config.causal:
        ids[:, -1] = cfg.text_config.eos_token_id
    s = cfg.vision_config.image_size
    pixels = torch.randn(batch, cfg.vision_config.num_channels, s, s, generator=g)
    reference_model.eval()
    model.eval()
    with torch.no_grad():
        ref = reference_model(ids, pixels, return_latents=True)
        ref_sim = reference_model(ids, pixels)
        ours = model(ids, pixels)
    report = {
        "text_embeds": max_abs_diff(ref[0], ours.text_embeds),
        "image_embeds": max_abs_diff(ref[1], ours.image_embeds),
    }
    if ref_sim.ndim == 1:  # x-clip returns the per-pair similarity: the diagonal of the full matrix
        report["similarity"] = max_abs_diff(ref_sim, ours.logits_per_text.diagonal())
    if not cfg.use_visual_ssl:
        _train_without_dropout(reference_model)
        _train_without_dropout(model)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            ref_loss = reference_model(ids, pixels, return_loss=True)
            torch.manual_seed(seed + 1)
            loss = model(ids, pixels, return_loss=True).loss
        reference_model.eval()
        model.eval()
        report["loss"] = abs(float(ref_loss) - float(loss))
    return report


def x_clip_processor(config: XClipConfig) -> XClipProcessor:
    """A processor giving the ids of x-clip's own `tokenizer.tokenize` (its CLIP BPE file, no start/end tokens,
    padded with the model's pad id, 0), truncated to the model's `text_seq_len`, and square images of the model's
    size. Its `XClipTokenizer` gives the same ids alone (the zero-shot-image-classification pipeline loads only it)."""
    from x_clip.tokenizer import default_bpe  # reference library: conversion-time dependency only

    text = config.text_config
    tokenizer = clip_tokenizer_from_bpe(default_bpe(), text.max_position_embeddings, OPENAI_CLIP_SPECIAL_TOKENS,
                                        XClipTokenizer, text_pad_id=text.pad_token_id or 0)
    return XClipProcessor(square_image_processor(config.vision_config.image_size), tokenizer)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference-kwargs", "--reference-config", dest="reference_kwargs", required=True,
                        help="JSON (file or inline) of x_clip.CLIP keyword arguments")


def run(args, progress) -> Conversion:
    """Rebuild the x-clip reference, load the checkpoint, convert, verify; called by `python -m conversion`."""
    from x_clip import CLIP  # reference library: conversion-time dependency only

    reference_kwargs = read_json_argument(args.reference_kwargs, "--reference-kwargs")
    _, model, report = convert_from_reference(progress, lambda: CLIP(**reference_kwargs), args.checkpoint, convert,
                                              parity_report)
    cfg, processor, notes = model.config, None, []
    if args.tokenizer:
        processor = XClipProcessor(square_image_processor(cfg.vision_config.image_size),
                                   load_tokenizer(args.tokenizer, cfg.text_config.vocab_size))
        notes.append(normalisation_note("x-clip"))
    elif cfg.text_config.vocab_size >= CLIP_BPE_VOCAB_SIZE:
        processor = x_clip_processor(cfg)
        notes += [f"no --tokenizer given: the processor uses x-clip's own tokenizer (OpenAI's CLIP BPE, "
                  f"{CLIP_BPE_VOCAB_SIZE} tokens, no start/end tokens, padded with id 0, "
                  f"{cfg.text_config.max_position_embeddings} tokens at most); pass --tokenizer if the checkpoint "
                  "was trained with another.", normalisation_note("x-clip")]
    else:
        notes.append(f"no --tokenizer given and the model's vocabulary ({cfg.text_config.vocab_size} tokens) is "
                     f"smaller than that of x-clip's own CLIP BPE tokenizer ({CLIP_BPE_VOCAB_SIZE}): no processor "
                     "files are written; pass --tokenizer with the tokenizer the checkpoint was trained with.")
    if cfg.use_visual_ssl:
        notes.append("the training loss is not compared: the visual SSL augmentations draw random numbers "
                     "differently from x-clip's torchvision ones.")
    options = ", ".join(f"`{k}`" for k, v in reference_kwargs.items() if v is True) or "none"
    return Conversion(
        model=model, family="x_clip", source=f"x-clip {library_version('x-clip')}", checkpoint=args.checkpoint,
        parity=report, processor=processor, card_fields=dict(options=options), notes=notes,
    )


def main(argv=None):
    """`python -m conversion.x_clip ...` = `python -m conversion x_clip ...`."""
    from .__main__ import source_main

    return source_main("x_clip", argv)


if __name__ == "__main__":
    main()
