"""Convert dalle-pytorch (1.6.6) `DALLE` (with its `DiscreteVAE`) and standalone `DiscreteVAE` checkpoints.

The reference's key nesting depends on its options (`shift_tokens`, `reversible`, sandwich norm, NonCached /
CachedAs wrappers); `normalise_layer_key` reduces every layer key to `(layer, branch, suffix)` first.

CLI (a dalle-pytorch training checkpoint `{"hparams", "vae_params", "weights"}`, loaded with weights_only):
    python -m conversion.dalle_pytorch --checkpoint dalle.pt --output converted/
    python -m conversion.dalle_pytorch --checkpoint vae.pt --vae-only --output converted_vae/
"""

from __future__ import annotations

import argparse
import re

import torch

from hf_mm.models.dalle import DalleConfig, DalleForImageGeneration, DiscreteVAEConfig, DiscreteVAEModel

from .common import StateDictConverter, render_model_card, save_converted

VAE_KWARGS = {  # dalle-pytorch DiscreteVAE argument -> DiscreteVAEConfig field (same names)
    "image_size", "num_tokens", "codebook_dim", "num_layers", "num_resnet_blocks", "hidden_dim", "channels",
    "smooth_l1_loss", "temperature", "straight_through", "reinmax", "kl_div_loss_weight", "normalization",
}
DALLE_RENAMES = {
    "dim": "hidden_size", "depth": "num_hidden_layers", "heads": "num_attention_heads", "dim_head": "head_dim",
    "attn_dropout": "attention_dropout", "ff_dropout": "ff_dropout", "num_text_tokens": "num_text_tokens",
    "text_seq_len": "text_seq_len", "attn_types": "attn_types", "loss_img_weight": "loss_img_weight",
    "stable": "stable", "sandwich_norm": "sandwich_norm", "shift_tokens": "shift_tokens",
    "rotary_emb": "rotary_emb", "reversible": "reversible", "shared_attn_ids": "shared_attn_ids",
    "shared_ff_ids": "shared_ff_ids", "share_input_output_emb": "share_input_output_emb",
}
IGNORED_DALLE_KWARGS = {"vae", "sparse_attn", "optimize_for_inference"}  # no-op / same masks in hf_mm

_LAYER_KEY = re.compile(r"transformer\.layers\.(?:layers\.(\d+)\.([01])|blocks\.(\d+)\.([fg])\.net)\.(.+)")
_BRANCH = {"0": 0, "1": 1, "f": 0, "g": 1}
_ATTN_SUFFIX = {"scale": "ls1.gamma", "norm.weight": "norm1.weight", "norm.bias": "norm1.bias",
                "norm_out.weight": "post_norm1.weight", "norm_out.bias": "post_norm1.bias",
                "to_out.0.weight": "attn.o_proj.weight", "to_out.0.bias": "attn.o_proj.bias"}
_FF_SUFFIX = {"scale": "ls2.gamma", "norm.weight": "norm2.weight", "norm.bias": "norm2.bias",
              "norm_out.weight": "post_norm2.weight", "norm_out.bias": "post_norm2.bias",
              "net.0.weight": "mlp.fc1.weight", "net.0.bias": "mlp.fc1.bias",
              "net.3.weight": "mlp.fc2.weight", "net.3.bias": "mlp.fc2.bias"}


def vae_config_from_kwargs(kwargs: dict) -> DiscreteVAEConfig:
    unknown = set(kwargs) - VAE_KWARGS
    if unknown:
        raise ValueError(f"unsupported DiscreteVAE arguments: {sorted(unknown)}")
    kwargs = dict(kwargs)
    if "normalization" in kwargs and kwargs["normalization"] is not None:
        means, stds = kwargs["normalization"]
        kwargs["normalization"] = [list(means), list(stds)]
    return DiscreteVAEConfig(**kwargs)


def dalle_config_from_kwargs(dalle_kwargs: dict, vae_kwargs: dict) -> DalleConfig:
    """dalle-pytorch `DALLE(...)` / `DiscreteVAE(...)` keyword arguments -> `DalleConfig`."""
    unknown = set(dalle_kwargs) - set(DALLE_RENAMES) - IGNORED_DALLE_KWARGS
    if unknown:
        raise ValueError(f"unsupported DALLE arguments: {sorted(unknown)}")
    fields = {DALLE_RENAMES[k]: v for k, v in dalle_kwargs.items() if k in DALLE_RENAMES and v is not None}
    if isinstance(fields.get("attn_types"), str):
        fields["attn_types"] = [fields["attn_types"]]
    return DalleConfig(vae_config=vae_config_from_kwargs(vae_kwargs).to_dict(), **fields)


def normalise_layer_key(key: str) -> tuple[int, int, str] | None:
    """`transformer.layers.layers.3.0.fn.fn.fn.fn.fn.to_qkv.weight` -> `(3, 0, "to_qkv.weight")`;
    reversible `transformer.layers.blocks.3.f.net.fn...` likewise. None for non-layer keys."""
    match = _LAYER_KEY.fullmatch(key)
    if match is None:
        return None
    layer = int(match.group(1) or match.group(3))
    branch = _BRANCH[match.group(2) or match.group(4)]
    suffix = re.sub(r"^(fn\.)+", "", match.group(5))
    return layer, branch, suffix


def convert_vae_into(conv: StateDictConverter, src_prefix: str, dst_prefix: str) -> None:
    """The dVAE's module tree is mirrored exactly (`codebook`, `encoder.*`, `decoder.*`)."""
    for key in conv.keys_matching(re.escape(src_prefix) + r"(codebook|encoder|decoder)\..+"):
        conv.move(key, dst_prefix + key[len(src_prefix):])


def convert_discrete_vae(state_dict: dict, config: DiscreteVAEConfig) -> DiscreteVAEModel:
    conv = StateDictConverter(state_dict)
    convert_vae_into(conv, "", "")
    return conv.finish(DiscreteVAEModel(config))


def _convert_layers(conv: StateDictConverter, config: DalleConfig) -> None:
    by_layer: dict[tuple[int, int], dict[str, str]] = {}
    for key in conv.keys_matching(r"transformer\.layers\..+"):
        parsed = normalise_layer_key(key)
        if parsed is None:
            raise ValueError(f"unrecognised dalle-pytorch layer key {key!r}")
        layer, branch, suffix = parsed
        by_layer.setdefault((layer, branch), {})[suffix] = key
    inner = config.num_attention_heads * config.head_dim
    attn_owner, ff_owner = {}, {}
    for layer, (attn_id, ff_id) in enumerate(zip(config.attn_layer_ids, config.ff_layer_ids)):
        for branch, table, owner_map, share_id, shared in (
            (0, _ATTN_SUFFIX, attn_owner, attn_id, {"to_qkv.weight", "to_out.0.weight", "to_out.0.bias"}),
            (1, _FF_SUFFIX, ff_owner, ff_id, {"net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias"}),
        ):
            keys = by_layer.get((layer, branch), {})
            owner = owner_map.setdefault(share_id, layer)
            for suffix, src in keys.items():
                if owner != layer and suffix in shared:  # the very module of an earlier layer
                    conv.alias(src, by_layer[(owner, branch)][suffix])
                tensor = conv.take(src)
                if suffix == "to_qkv.weight":
                    for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.split(inner)):
                        conv.put(f"layers.{layer}.attn.{name}.weight", part)
                elif suffix in table:
                    dst = f"layers.{layer}.{table[suffix]}"
                    conv.put(dst, tensor.reshape(-1) if suffix == "scale" else tensor)
                else:
                    raise ValueError(f"unrecognised dalle-pytorch layer key {src!r}")


def convert_dalle(state_dict: dict, config: DalleConfig) -> DalleForImageGeneration:
    """A dalle-pytorch `DALLE.state_dict()` -> `DalleForImageGeneration` (every tensor accounted for)."""
    conv = StateDictConverter(state_dict)
    model = DalleForImageGeneration(config)
    convert_vae_into(conv, "vae.", "vae.")
    if config.rotary_emb:
        positions = torch.arange(config.max_seq_len + 1)
        conv.check_buffer("transformer.pos_emb", model.rotary_emb(positions)[None])
    else:
        conv.move("text_pos_emb.weight", "text_pos_emb.weight")
        conv.move("image_pos_emb.weights.0", "image_pos_emb.row_emb", lambda t: t.reshape(config.image_fmap_size, -1))
        conv.move("image_pos_emb.weights.1", "image_pos_emb.col_emb", lambda t: t.reshape(config.image_fmap_size, -1))
    conv.move("to_logits.0.weight", "norm.weight")
    conv.move("to_logits.0.bias", "norm.bias")
    conv.move("to_logits.1.weight", "lm_head.weight")
    conv.move("to_logits.1.bias", "lm_head.bias")
    if config.share_input_output_emb:
        for emb in ("text_emb", "image_emb"):
            conv.alias(f"{emb}.linear.weight", "to_logits.1.weight")
            conv.alias(f"{emb}.linear.bias", "to_logits.1.bias")
    else:
        conv.move("text_emb.weight", "embed_text.weight")
        conv.move("image_emb.weight", "embed_image.weight")
    _convert_layers(conv, config)
    return conv.finish(model)


def _load_training_checkpoint(path: str) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "weights" not in obj:
        raise ValueError(f"{path} is not a dalle-pytorch training checkpoint with 'weights' (and 'hparams')")
    return obj


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--vae-only", action="store_true", help="the checkpoint is a DiscreteVAE training checkpoint")
    parser.add_argument("--push-to-hub", default=None)
    args = parser.parse_args(argv)
    obj = _load_training_checkpoint(args.checkpoint)
    if args.vae_only:
        model = convert_discrete_vae(obj["weights"], vae_config_from_kwargs(obj["hparams"]))
        card = None
    else:
        config = dalle_config_from_kwargs(obj["hparams"], obj["vae_params"])
        model = convert_dalle(obj["weights"], config)
        card = render_model_card(
            "dalle.md", source=args.checkpoint, num_hidden_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size, attn_types=", ".join(config.layer_attn_types),
            image_size=config.vae_config.image_size, text_seq_len=config.text_seq_len,
        )
    save_converted(model, args.output, card=card, push_to_hub=args.push_to_hub)


if __name__ == "__main__":
    main()
