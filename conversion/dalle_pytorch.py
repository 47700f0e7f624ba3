"""Convert dalle-pytorch (1.6.6) `DALLE` (with its `DiscreteVAE`) and standalone `DiscreteVAE` checkpoints.

The reference's key nesting depends on its options (`shift_tokens`, `reversible`, sandwich norm, NonCached /
CachedAs wrappers); `normalise_layer_key` reduces every layer key to `(layer, branch, suffix)` first.

CLI: a dalle-pytorch training checkpoint (`train_dalle.py`: `{"hparams", "vae_params", "weights"}`,
`train_vae.py`: `{"hparams", "weights"}`, loaded with weights_only), or a plain state dict with
`--reference-kwargs` (DALLE kwargs plus a "vae" entry; DiscreteVAE kwargs with `--vae-only`):
    python -m conversion dalle_pytorch --checkpoint dalle.pt --output-dir converted/ [--tokenizer tok/]
    python -m conversion dalle_pytorch --checkpoint vae.pt --vae-only --output-dir converted_vae/
The conversion needs no dalle-pytorch; it is verified against dalle-pytorch when that can be imported (the CLI
provides stand-ins for what it imports but does not use: omegaconf, taming, youtokentome, pkg_resources), and the
console and model card say why not otherwise. `--vae-only` folders get their own card (model_cards/dalle_vae.md).
"""

from __future__ import annotations

import argparse
import re

import torch

from hf_mm.models.dalle import DalleConfig, DalleForImageGeneration, DiscreteVAEConfig, DiscreteVAEModel

from .common import (
    Conversion, StateDictConverter, check_against_reference, library_version, load_tokenizer, max_abs_diff,
    read_checkpoint, read_json_argument, reference_import_error, state_dict_from,
)

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
    # dalle-pytorch's default, 4-wide (DiscreteVAEConfig cuts it to `channels`); hf_mm's own default is 3-wide
    kwargs.setdefault("normalization", ((0.5, 0.5, 0.5, 0), (0.5, 0.5, 0.5, 1)))
    if kwargs["normalization"] is not None:
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
    if "attn_types" in fields and "num_hidden_layers" in fields:  # dalle-pytorch: islice(cycle(attn_types), depth)
        fields["attn_types"] = list(fields["attn_types"])[: fields["num_hidden_layers"]]
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


# The text prompt of the DALL-E card's usage snippet (model_cards/dalle.md `{{prompt_ids}}`): with the processor
# files written by --tokenizer, or as token ids of whatever tokenizer the checkpoint was trained with.
PROMPT_WITH_PROCESSOR = """\
processor = AutoProcessor.from_pretrained("{{repo_id}}")
input_ids = processor(text=["a red circle"])["input_ids"]  # (batch, text_seq_len), 0 = padding"""
PROMPT_WITHOUT_PROCESSOR = """\
# no processor files (converted without --tokenizer): the prompt's ids from the tokenizer the checkpoint was trained
# with, (batch, text_seq_len), 0 = padding
input_ids = torch.zeros(1, model.config.text_seq_len, dtype=torch.long)
input_ids[0, :3] = torch.tensor([1, 2, 3])"""


def _read_checkpoint(args) -> tuple[dict, dict, dict | None]:
    """(weights, model kwargs, vae kwargs or None for --vae-only) from a training checkpoint or state dict + JSON."""
    obj = read_checkpoint(args.checkpoint)  # weights_only=True; ValueError (a CLI error) when it refuses
    safetensors = str(args.checkpoint).endswith(".safetensors")
    if not safetensors and isinstance(obj, dict) and "weights" in obj:
        if args.reference_kwargs:
            raise ValueError("--reference-kwargs is not used with a training checkpoint: it holds its own 'hparams'")
        kwargs, weights = dict(obj.get("hparams") or {}), obj["weights"]
        if args.vae_only:
            return weights, kwargs, None
        if obj.get("vae_params") is None:
            raise ValueError(f"{args.checkpoint} has no 'vae_params': only dalle-pytorch's own DiscreteVAE can be "
                             f"converted (got vae_class_name={obj.get('vae_class_name')!r})")
        return weights, kwargs, dict(obj["vae_params"])
    if not args.reference_kwargs:
        raise ValueError(f"{args.checkpoint} is a plain state dict: pass --reference-kwargs with the DALLE (plus "
                         "'vae') or, with --vae-only, the DiscreteVAE constructor arguments")
    kwargs = read_json_argument(args.reference_kwargs, "--reference-kwargs")
    weights = obj if safetensors else state_dict_from(obj, args.checkpoint)
    if args.vae_only:
        return weights, kwargs, None
    if not isinstance(kwargs.get("vae"), dict):
        raise ValueError("--reference-kwargs needs a 'vae' entry with the DiscreteVAE arguments")
    vae_kwargs = kwargs.pop("vae")
    return weights, kwargs, vae_kwargs


def _reference_library():
    """(dalle_pytorch, None) when it imports (verification only), else (None, why not)."""
    why_not = reference_import_error("dalle_pytorch", "dalle-pytorch")
    if why_not is not None:
        return None, why_not
    import dalle_pytorch

    return dalle_pytorch, None


def _as_reference_kwargs(kwargs: dict) -> dict:
    """JSON / checkpoint hparams -> DiscreteVAE / DALLE arguments (dalle-pytorch wants tuples where JSON has lists)."""
    return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
            for k, v in kwargs.items()}


@torch.no_grad()
def verify_dalle(reference, model: DalleForImageGeneration, seed: int = 0) -> dict:
    """Max abs differences of logits (text + image codes, and text only) and of the loss, reference vs hf_mm."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, cfg.num_text_tokens, (2, cfg.text_seq_len), generator=g)
    text[1, cfg.text_seq_len // 2:] = 0
    codes = torch.randint(0, cfg.vae_config.num_tokens, (2, cfg.image_seq_len), generator=g)
    reference.eval()
    out = model(text, image_ids=codes, return_loss=True, use_cache=False)
    return {
        "logits": max_abs_diff(reference(text.clone(), codes), out.logits),
        "loss": abs(float(reference(text.clone(), codes, return_loss=True)) - float(out.loss)),
        "logits_text_only": max_abs_diff(reference(text.clone()), model(text, use_cache=False).logits),
    }


@torch.no_grad()
def verify_vae(reference, model: DiscreteVAEModel, seed: int = 0) -> dict:
    """Codebook indices (max abs index difference: 0 when identical), decoded images and the seeded (gumbel)
    reconstruction loss, reference vs hf_mm."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, cfg.channels, cfg.image_size, cfg.image_size, generator=g)
    codes = torch.randint(0, cfg.num_tokens, (2, cfg.fmap_size ** 2), generator=g)
    reference.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        ref_loss = reference(images, return_loss=True)
        torch.manual_seed(seed + 1)
        loss = model(images, return_loss=True).loss
    return {
        "codebook_indices": max_abs_diff(reference.get_codebook_indices(images), model.get_codebook_indices(images)),
        "decoded_images": max_abs_diff(reference.decode(codes), model.decode(codes)),
        "reconstruction_loss": abs(float(ref_loss) - float(loss)),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae-only", action="store_true", help="the checkpoint is a DiscreteVAE (train_vae.py)")
    parser.add_argument("--reference-kwargs",
                        help="for a plain state dict: JSON (file or inline) of DALLE kwargs plus 'vae' (DiscreteVAE "
                             "kwargs), or of DiscreteVAE kwargs with --vae-only")


def run(args, progress) -> Conversion:
    """Convert (no dalle-pytorch needed), then verify against dalle-pytorch when it imports."""
    with progress.stage("load checkpoint"):
        weights, kwargs, vae_kwargs = _read_checkpoint(args)
    library, why_not = _reference_library()
    with progress.stage("build reference"):
        reference = None
        if library is not None:
            if args.vae_only:
                reference = library.DiscreteVAE(**_as_reference_kwargs(kwargs))
            else:
                vae = library.DiscreteVAE(**_as_reference_kwargs(vae_kwargs))
                reference = library.DALLE(vae=vae, **_as_reference_kwargs(kwargs))
            check_against_reference(reference, weights, f"checkpoint {args.checkpoint}")
            reference.load_state_dict(weights, strict=True)
    with progress.tensors():
        if args.vae_only:
            model = convert_discrete_vae(weights, vae_config_from_kwargs(kwargs))
        else:
            model = convert_dalle(weights, dalle_config_from_kwargs(kwargs, vae_kwargs))
    with progress.stage("verify"):
        report = None
        if reference is not None:
            report = verify_vae(reference, model) if args.vae_only else verify_dalle(reference, model)
    processor, notes, card_fields = None, [], {}
    if args.vae_only:
        vae = model.config
        summary = (f"the discrete VAE of DALL-E on its own (`DiscreteVAEModel`): {vae.image_size}px images <-> "
                   f"{vae.fmap_size}x{vae.fmap_size} codes from a {vae.num_tokens}-entry codebook.")
    else:
        cfg = model.config
        summary = (f"a `DalleForImageGeneration`: a {cfg.num_hidden_layers}-layer decoder-only transformer (hidden "
                   f"size {cfg.hidden_size}) over `[bos, text ({cfg.text_seq_len} tokens) | image codes]`, with its "
                   f"discrete VAE ({cfg.vae_config.image_size}px images) as `model.vae`. Attention pattern of each "
                   f"layer: {', '.join(cfg.layer_attn_types)}.")
        if args.tokenizer:
            from hf_mm.models.dalle.processing_dalle import DalleProcessor

            tokenizer = load_tokenizer(args.tokenizer, cfg.num_text_tokens)
            processor = DalleProcessor(tokenizer, text_seq_len=cfg.text_seq_len)
        else:
            notes.append("no --tokenizer given: no processor files are written (dalle-pytorch checkpoints do not "
                         "record which tokenizer they were trained with).")
        card_fields["prompt_ids"] = PROMPT_WITH_PROCESSOR if processor is not None else PROMPT_WITHOUT_PROCESSOR
    version = library_version("dalle-pytorch")
    return Conversion(
        model=model, family="dalle_vae" if args.vae_only else "dalle",  # model_cards/dalle_vae.md / dalle.md
        source="dalle-pytorch" if version == "unknown" else f"dalle-pytorch {version}",
        checkpoint=args.checkpoint, parity=report, processor=processor, notes=notes, not_verified=why_not,
        card_fields=dict(summary=summary, **card_fields),
    )


def main(argv=None):
    """`python -m conversion.dalle_pytorch ...` = `python -m conversion dalle_pytorch ...`."""
    from .__main__ import source_main

    return source_main("dalle_pytorch", argv)


if __name__ == "__main__":
    main()
