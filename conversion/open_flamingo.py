"""OpenFlamingo (open_flamingo 2.0.1 `Flamingo`) -> `FlamingoForConditionalGeneration` around the same causal LM.

    python -m conversion open_flamingo --checkpoint checkpoint.pt --language-model lm_dir/ \
        [--vision-checkpoint open_clip_vit_l_14.pt] [--tokenizer lm_dir/] --output-dir out/

`convert(state_dict, text_config, ...)` maps every tensor of an OpenFlamingo state dict. The state dict repeats
modules under several names: each decoder layer appears as `<layers>.{i}.decoder_layer.*` and as
`old_decoder_blocks.{i}.*`, each gated cross-attention as `<layers>.{i}.gated_cross_attn_layer.*` and as
`gated_cross_attn_layers.{i}.*`, a tied head as both `lm_head` and the input embedding. The first name of each
is converted, the others must hold the very same tensor (checked, then accounted for). The released
`checkpoint.pt` files hold only the trained tensors (perceiver, cross-attention, embeddings); the rest comes from
the language model's own weights (`language_model_state_dict`) and the open_clip vision tower
(`vision_state_dict`), checkpoint tensors taking precedence.

Vision: open_clip's `VisionTransformer`; its patch tokens (class token dropped) feed the perceiver. open_clip
< 2.23, which OpenFlamingo was trained with, returns them before `ln_post`; >= 2.23 after it.
`normalize_patch_tokens=False` (default) reproduces the checkpoints; `ln_post` and the pooled projection `proj`
are then unused (consumed, listed in the report).
"""

from __future__ import annotations

import copy
import re

import torch

from hf_mm.models.flamingo import FlamingoConfig, FlamingoForConditionalGeneration
from hf_mm.models.flamingo.language_model import find_decoder_layers

from .common import StateDictConverter, UnmappedTensorsError, max_abs_diff, move_layernorm
from .lucidrains import convert_gated_cross_attention, convert_perceiver_layers
from .open_clip_blocks import convert_vision_transformer

MEDIA_TOKEN, EOC_TOKEN, PAD_TOKEN = "<image>", "<|endofchunk|>", "<PAD>"
_XATTN_KEY = re.compile(r"lang_encoder\.(?P<path>.+)\.(?P<i>\d+)\.gated_cross_attn_layer\.attn_gate")


def _lm_base_prefix(text_config) -> str:
    from transformers import AutoModelForCausalLM

    lm_class = AutoModelForCausalLM._model_mapping.get(type(text_config), None)
    if lm_class is None:
        raise ValueError(f"text_config ({type(text_config).__name__}) is not a causal LM known to AutoModelForCausalLM")
    return lm_class.base_model_prefix


def read_layout(state_dict: dict, text_config) -> dict:
    """Where the checkpoint keeps things: the LM's decoder-layer list (`model.layers`, `gpt_neox.layers`, ...),
    the layers with a cross-attention block and the `cross_attn_every_n_layers` they imply."""
    found = sorted({(m["path"], int(m["i"])) for k in state_dict if (m := _XATTN_KEY.fullmatch(k))}, key=lambda x: x[1])
    paths = {path for path, _ in found}
    if len(paths) != 1:
        raise UnmappedTensorsError(f"not an OpenFlamingo state dict: gated cross-attention layers found under {paths or 'no'} paths")
    path, ids = paths.pop(), [i for _, i in found]
    every, num_layers = ids[0] + 1, text_config.num_hidden_layers
    if ids != [i for i in range(num_layers) if (i + 1) % every == 0]:
        raise UnmappedTensorsError(f"cross-attention at layers {ids} of {num_layers} is not OpenFlamingo's "
                                   f"every-{every}-layers pattern (text_config.num_hidden_layers={num_layers}?)")
    prefix = _lm_base_prefix(text_config)
    if not path.startswith(prefix + "."):
        raise UnmappedTensorsError(f"decoder layers at lang_encoder.{path}, outside the LM's base model {prefix!r}")
    return dict(layers_path=path, base_prefix=prefix, cross_attn_every=every, layer_ids=ids)


def vision_config_from_state_dict(vision: dict, head_width: int = 64, quick_gelu: bool = True,
                                  normalize_patch_tokens: bool = False) -> dict:
    """`VisionTowerConfig` kwargs of an open_clip `VisionTransformer` from its tensors (`conv1.weight`, ...).

    The tensors fix every size but the head count (`width // head_width`, open_clip's default 64) and the
    activation: `quick_gelu=True` for OpenAI's CLIP weights, which every released OpenFlamingo uses."""
    width, channels, patch, _ = vision["conv1.weight"].shape
    grid = int(round((vision["positional_embedding"].shape[0] - 1) ** 0.5))
    layers = len({k.split(".")[2] for k in vision if k.startswith("transformer.resblocks.")})
    ls = vision.get("transformer.resblocks.0.ls_1.gamma")
    if "attn_pool.query" in vision:
        raise UnmappedTensorsError("open_clip vision towers with an attentional pooler are not used by OpenFlamingo")
    return dict(
        image_size=grid * patch, patch_size=patch, num_channels=channels, hidden_size=width, num_hidden_layers=layers,
        num_attention_heads=width // head_width, intermediate_size=vision["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        hidden_act="quick_gelu" if quick_gelu else "gelu", pre_norm="ln_pre.weight" in vision,
        final_norm=normalize_patch_tokens, layer_scale_init=float(ls.flatten()[0]) if ls is not None else None,
    )


def merge_sources(state_dict: dict, layout: dict, language_model_state_dict: dict | None = None,
                  vision_state_dict: dict | None = None) -> tuple[dict, dict]:
    """One full OpenFlamingo-layout state dict: the LM's own weights (HF `*ForCausalLM` names) and the open_clip
    tower (`visual.*` of a CLIP state dict, or the bare tower) under the checkpoint, which wins. Returns it and the
    number of tensors taken from each source."""
    merged, counts = {}, {}
    if language_model_state_dict is not None:
        layer_key = re.compile(re.escape(layout["layers_path"]) + r"\.(\d+)\.(.+)")
        for key, tensor in language_model_state_dict.items():
            m = layer_key.fullmatch(key)
            merged[f"lang_encoder.{layout['layers_path']}.{m[1]}.decoder_layer.{m[2]}" if m else f"lang_encoder.{key}"] = tensor
    if vision_state_dict is not None:
        visual = {k.removeprefix("visual."): v for k, v in vision_state_dict.items()
                  if k.startswith("visual.") or not any(x.startswith("visual.") for x in vision_state_dict)}
        merged.update({f"vision_encoder.{k}": v for k, v in visual.items()})
    counts["language_model / vision tower"] = len(set(merged) - set(state_dict))
    counts["checkpoint"] = len(state_dict)
    merged.update(state_dict)
    return merged, counts


def fit_vocab_size(state_dict: dict, text_config):
    """`text_config` with the vocab size of the checkpoint's input embeddings (and untied output head):
    open_flamingo resizes them to its tokenizer (`<|endofchunk|>`, `<image>` added), past the LM's config.json."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(copy.deepcopy(text_config))
    names = {module: name for name, module in lm.named_modules()}
    rows = {key: state_dict[key].shape[0] for module in (lm.get_input_embeddings(), lm.get_output_embeddings())
            if module is not None and (key := f"lang_encoder.{names[module]}.weight") in state_dict}
    if len(set(rows.values())) > 1:
        raise ValueError(f"the checkpoint's input embeddings and output head disagree on the vocab size: {rows}")
    if not rows or next(iter(rows.values())) == text_config.vocab_size:
        return text_config
    text_config = copy.deepcopy(text_config)
    text_config.vocab_size = next(iter(rows.values()))
    return text_config


def build_config(state_dict: dict, text_config, media_token_id: int, eoc_token_id: int, head_width: int = 64,
                 quick_gelu: bool = True, normalize_patch_tokens: bool = False) -> FlamingoConfig:
    """The `FlamingoConfig` of a full OpenFlamingo-layout state dict (see `merge_sources`)."""
    layout = read_layout(state_dict, text_config)
    vision = {k.removeprefix("vision_encoder."): v for k, v in state_dict.items() if k.startswith("vision_encoder.")}
    if not vision:
        raise UnmappedTensorsError("no vision_encoder.* tensors: pass the open_clip tower (vision_state_dict)")
    perceiver_depth = len({k.split(".")[2] for k in state_dict if k.startswith("perceiver.layers.")})
    heads_x_dim = state_dict["perceiver.layers.0.0.to_q.weight"].shape[0]
    xattn = f"lang_encoder.{layout['layers_path']}.{layout['layer_ids'][0]}.gated_cross_attn_layer"
    return FlamingoConfig(
        text_config=text_config,
        vision_config=vision_config_from_state_dict(vision, head_width, quick_gelu, normalize_patch_tokens),
        perceiver_config=dict(num_latents=state_dict["perceiver.latents"].shape[0], num_hidden_layers=perceiver_depth,
                              num_attention_heads=heads_x_dim // 64, head_dim=64, max_num_media=0,
                              intermediate_size=state_dict["perceiver.layers.0.1.1.weight"].shape[0]),
        cross_attn_every=layout["cross_attn_every"], cross_attn_placement="before",
        cross_attn_num_heads=state_dict[f"{xattn}.attn.to_q.weight"].shape[0] // 64, cross_attn_head_dim=64,
        cross_attn_intermediate_size=state_dict[f"{xattn}.ff.1.weight"].shape[0],
        decoder_layers_attr_name=layout["layers_path"][len(layout["base_prefix"]) + 1:],
        vision_feature_select_strategy="default", media_token_id=media_token_id, eoc_token_id=eoc_token_id,
    )


def convert_vision(conv: StateDictConverter, config: FlamingoConfig) -> list[str]:
    """open_clip tower -> `model.vision_model`; returns the tensors OpenFlamingo's forward never reads."""
    s, d = "vision_encoder", "model.vision_model"
    convert_vision_transformer(conv, s, d, config.vision_config)
    unused = [f"{s}.proj"] if conv.has(f"{s}.proj") else []  # projects the pooled class token only
    if config.vision_config.final_norm:
        move_layernorm(conv, f"{s}.ln_post", f"{d}.final_norm")
    else:
        unused += [f"{s}.ln_post.weight", f"{s}.ln_post.bias"]
    for key in unused:
        conv.take(key)
    return unused


def convert_language_model(conv: StateDictConverter, model: FlamingoForConditionalGeneration, layout: dict) -> None:
    """The LM's tensors, named as in its own `*ForCausalLM`, plus the aliases OpenFlamingo registers."""
    path, prefix = layout["layers_path"], layout["base_prefix"]
    layer_key = re.compile(re.escape(path[len(prefix) + 1:]) + r"\.(\d+)\.(.+)")
    for key in model.model.language_model.state_dict():
        m = layer_key.fullmatch(key)
        src = f"lang_encoder.{path}.{m[1]}.decoder_layer.{m[2]}" if m else f"lang_encoder.{prefix}.{key}"
        conv.move(src, f"model.language_model.{key}")
    lm_keys = {k for k in conv.source if k.startswith("lang_encoder.")}
    head = sorted(k for k in lm_keys if not k.startswith(f"lang_encoder.{prefix}.")
                  and not k.startswith(("lang_encoder.old_decoder_blocks.", "lang_encoder.gated_cross_attn_layers.")))
    tied = {f"lang_encoder.{k.replace('model.language_model.', prefix + '.', 1)}"
            for k in model.all_tied_weights_keys.values()} if model.config.tie_word_embeddings else set()
    for key in head:  # lm_head.weight / embed_out.weight (+ bias): the LM's output head
        name = key.rsplit(".", 1)[1]
        if tied and name == "weight":
            conv.alias(key, tied.pop())
        else:
            conv.move(key, f"lm_head.{name}")
    for key in sorted(lm_keys):  # OpenFlamingo's second names for the same modules
        m = re.fullmatch(r"lang_encoder\.(old_decoder_blocks|gated_cross_attn_layers)\.(\d+)\.(.+)", key)
        if m:
            part = "decoder_layer" if m[1] == "old_decoder_blocks" else "gated_cross_attn_layer"
            conv.alias(key, f"lang_encoder.{path}.{m[2]}.{part}.{m[3]}")


def convert(state_dict: dict, text_config, *, media_token_id: int, eoc_token_id: int,
            language_model_state_dict: dict | None = None, vision_state_dict: dict | None = None,
            vision_head_width: int = 64, quick_gelu: bool = True, normalize_patch_tokens: bool = False,
            report: dict | None = None) -> FlamingoForConditionalGeneration:
    """OpenFlamingo state dict (full, or a released `checkpoint.pt` completed by `language_model_state_dict` and
    `vision_state_dict`) + the LM's config -> `FlamingoForConditionalGeneration` in eval mode. The vocab size is
    the checkpoint's embeddings' (`fit_vocab_size`).

    Every tensor is accounted for exactly once (aliases are checked to be the same tensor). `report`, when given,
    receives the tensor counts per source and the unused vision tensors.
    """
    layout = read_layout(state_dict, text_config)
    source, counts = merge_sources(state_dict, layout, language_model_state_dict, vision_state_dict)
    text_config = fit_vocab_size(source, text_config)
    config = build_config(source, text_config, media_token_id, eoc_token_id, vision_head_width, quick_gelu,
                          normalize_patch_tokens)
    model = FlamingoForConditionalGeneration(config)
    conv = StateDictConverter(source)
    unused = convert_vision(conv, config)
    conv.move("perceiver.latents", "model.perceiver.latents")
    convert_perceiver_layers(conv, "perceiver", "model.perceiver", config.perceiver_config.num_hidden_layers)
    for i in layout["layer_ids"]:
        convert_gated_cross_attention(conv, f"lang_encoder.{layout['layers_path']}.{i}.gated_cross_attn_layer",
                                      f"model.cross_attn_layers.{i}")
    convert_language_model(conv, model, layout)
    model = conv.finish(model)
    model.generation_config.eos_token_id = eoc_token_id  # OpenFlamingo's generate() stops at <|endofchunk|>
    if report is not None:
        report.update(tensors=counts, unused_vision_tensors=unused, layers_path=layout["layers_path"],
                      cross_attn_every_n_layers=layout["cross_attn_every"])
    return model


def add_special_tokens(tokenizer) -> tuple[int, int]:
    """OpenFlamingo's tokenizer changes, in its order: `<|endofchunk|>`, `<image>`, and `<PAD>` when the LM has no
    pad token. Returns `(media_token_id, eoc_token_id)`."""
    tokenizer.add_special_tokens({"additional_special_tokens": [EOC_TOKEN, MEDIA_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer.convert_tokens_to_ids(MEDIA_TOKEN), tokenizer.convert_tokens_to_ids(EOC_TOKEN)


def build_processor(tokenizer, image_size: int):
    """`FlamingoProcessor`: open_clip's eval preprocessing at `image_size` (OpenAI CLIP mean/std) and the LM's
    tokenizer with the special tokens, padding on the left for batched generation."""
    from hf_mm.models.coca.processing_coca import CocaImageProcessor
    from hf_mm.models.flamingo.processing_flamingo import FlamingoProcessor

    if MEDIA_TOKEN not in tokenizer.get_vocab():
        add_special_tokens(tokenizer)
    tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "left"  # init_kwargs: kept by save_pretrained
    image_processor = CocaImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    return FlamingoProcessor(image_processor=image_processor, tokenizer=tokenizer, media_token=MEDIA_TOKEN)


def open_clip_vision_cfg(config: FlamingoConfig) -> dict:
    """open_clip `vision_cfg` that rebuilds the tower of `config` (for the reference)."""
    v = config.vision_config
    return dict(image_size=v.image_size, patch_size=v.patch_size, width=v.hidden_size, layers=v.num_hidden_layers,
                head_width=v.hidden_size // v.num_attention_heads, mlp_ratio=v.intermediate_size / v.hidden_size,
                ls_init_value=v.layer_scale_init, final_ln_after_pool=not v.final_norm)


def build_reference(text_config, vision_cfg: dict, cross_attn_every_n_layers: int, media_token_id: int,
                    eoc_token_id: int, quick_gelu: bool = True, language_model=None):
    """open_flamingo's `Flamingo` around `language_model` (default: a fresh `AutoModelForCausalLM.from_config(
    text_config)`, changed in place by open_flamingo) and an open_clip tower (test/verification only: imports the reference libraries). `vision_cfg["final_ln_after_pool"]=True`
    gives the token output of open_clip < 2.23 (patch tokens before `ln_post`)."""
    import open_clip
    from open_flamingo import Flamingo
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin
    from open_flamingo.src.utils import extend_instance
    from transformers import AutoModelForCausalLM

    clip = open_clip.CLIP(embed_dim=16, vision_cfg=vision_cfg, quick_gelu=quick_gelu,
                          text_cfg=dict(context_length=4, vocab_size=8, width=16, heads=1, layers=1))
    clip.visual.output_tokens = True
    lm = language_model if language_model is not None else AutoModelForCausalLM.from_config(copy.deepcopy(text_config))
    extend_instance(lm, FlamingoLMMixin)
    layers_path, _ = find_decoder_layers(lm.base_model, text_config.num_hidden_layers)
    lm.set_decoder_layers_attr_name(f"{lm.base_model_prefix}.{layers_path}")
    return Flamingo(clip, lm, eoc_token_id=eoc_token_id, media_token_id=media_token_id, vis_dim=vision_cfg["width"],
                    cross_attn_every_n_layers=cross_attn_every_n_layers)


@torch.no_grad()
def verify(model: FlamingoForConditionalGeneration, source: dict, quick_gelu: bool = True, seed: int = 0) -> dict:
    """Max abs logit difference against open_flamingo's `Flamingo` loaded with the same tensors (OpenFlamingo
    layout `source`, see `merge_sources`), on a random one-shot prompt with left padding (fp32)."""
    cfg = model.config
    ref = build_reference(cfg.text_config, open_clip_vision_cfg(cfg), cfg.cross_attn_every, cfg.media_token_id,
                          cfg.eoc_token_id, quick_gelu=quick_gelu).eval()
    missing, unexpected = ref.load_state_dict(source, strict=False)
    missing = [k for k in missing if not k.startswith(("lang_encoder.old_decoder_blocks.",
                                                       "lang_encoder.gated_cross_attn_layers."))]
    if missing or unexpected:
        raise UnmappedTensorsError(f"reference rebuild: missing {missing}, unexpected {unexpected}")
    g = torch.Generator().manual_seed(seed)
    special = {cfg.media_token_id, cfg.eoc_token_id}
    ids = torch.randint(0, min(cfg.text_config.vocab_size, 1000), (2, 12), generator=g)
    ids[torch.isin(ids, torch.tensor(sorted(special)))] = 0
    ids[:, [0, 6]], ids[:, 5] = cfg.media_token_id, cfg.eoc_token_id
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    size = cfg.vision_config.image_size
    px = torch.randn(2, 2, 1, 3, size, size, generator=g)
    return {"logits": max_abs_diff(ref(px, ids, attention_mask=mask).logits,
                                   model(input_ids=ids, pixel_values=px, attention_mask=mask).logits)}


def reference_unavailable() -> str | None:
    """None when open_flamingo imports (verification), else why not: not installed, or its import error."""
    from .common import reference_import_error

    return reference_import_error("open_flamingo", "open-flamingo")


def convert_checkpoint(checkpoint, language_model, *, vision_checkpoint=None, tokenizer=None, vision_head_width: int = 64,
                       quick_gelu: bool = True, normalize_patch_tokens: bool = False, media_token_id: int | None = None,
                       eoc_token_id: int | None = None, verify_reference: bool = True, progress=None):
    """CLI-friendly conversion from files. Returns `(model, processor or None, report)`.

    checkpoint: OpenFlamingo `checkpoint.pt` (torch.load with weights_only=True) or .safetensors.
    language_model: local folder of the LM (`config.json`, and its weights when the checkpoint holds only the
        trained tensors), or its config (`PreTrainedConfig` / dict with `model_type`) for a full checkpoint.
    vision_checkpoint: open_clip CLIP (or bare visual) weights, when the checkpoint has no `vision_encoder.*`.
    tokenizer: the LM's tokenizer (folder or object; default: the `language_model` folder when it has one);
        OpenFlamingo's special tokens are added. Without it pass `media_token_id` and `eoc_token_id`.
    verify_reference: compare with open_flamingo when it is importable (`report["parity"]`, else None and
        `report["not_verified"]` says why).
    progress: the CLI's `Progress` (its loading / conversion / verification stages), or None.
    """
    import contextlib
    from pathlib import Path

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig

    from .common import load_checkpoint

    def stage(name):
        return progress.stage(name) if progress is not None else contextlib.nullcontext()

    with stage("load checkpoint"):
        state_dict = load_checkpoint(checkpoint)
        lm_state = None
        if isinstance(language_model, PreTrainedConfig):
            text_config = language_model
        elif isinstance(language_model, dict):
            text_config = AutoConfig.for_model(**language_model)
        else:
            folder = Path(language_model)
            text_config = AutoConfig.from_pretrained(folder, local_files_only=True)
            if any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")):
                lm_state = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                                dtype=torch.float32).state_dict()
            if tokenizer is None and (folder / "tokenizer_config.json").exists():
                tokenizer = folder
        if isinstance(tokenizer, (str, Path)):
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
        if tokenizer is not None:
            media_id, eoc_id = add_special_tokens(tokenizer)
            for name, given, found in (("media_token_id", media_token_id, media_id),
                                       ("eoc_token_id", eoc_token_id, eoc_id)):
                if given is not None and given != found:
                    raise ValueError(f"{name}={given} but the tokenizer gives {found}")
            media_token_id, eoc_token_id = media_id, eoc_id
        if media_token_id is None or eoc_token_id is None:
            raise ValueError("pass a tokenizer, or media_token_id and eoc_token_id (ids of <image> and <|endofchunk|>)")
        vision_state = load_checkpoint(vision_checkpoint) if vision_checkpoint is not None else None
    report = {}
    with progress.tensors() if progress is not None else contextlib.nullcontext():
        model = convert(state_dict, text_config, media_token_id=media_token_id, eoc_token_id=eoc_token_id,
                        language_model_state_dict=lm_state, vision_state_dict=vision_state,
                        vision_head_width=vision_head_width, quick_gelu=quick_gelu,
                        normalize_patch_tokens=normalize_patch_tokens, report=report)
    processor = build_processor(tokenizer, model.config.vision_config.image_size) if tokenizer is not None else None
    if processor is not None and len(tokenizer) > model.config.text_config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, the checkpoint's embeddings "
                         f"{model.config.text_config.vocab_size} rows")
    report["parity"] = None
    report["not_verified"] = reference_unavailable() if verify_reference else "verify_reference=False"
    with stage("build reference"), stage("verify"):  # verify() rebuilds the reference around the converted tensors
        if report["not_verified"] is None:
            source, _ = merge_sources(state_dict, read_layout(state_dict, text_config), lm_state, vision_state)
            report["parity"] = verify(model, source, quick_gelu)
    return model, processor, report


def add_arguments(parser) -> None:
    """Options of `python -m conversion open_flamingo` (the common ones: --checkpoint, --output-dir, --tokenizer...)."""
    parser.add_argument("--language-model", required=True,
                        help="local folder of the LM (config.json, + weights for a released checkpoint.pt), "
                             "or a JSON config with model_type")
    parser.add_argument("--vision-checkpoint", help="open_clip CLIP weights (e.g. ViT-L-14 'openai'), when the "
                                                     "checkpoint has no vision_encoder.* tensors")
    parser.add_argument("--vision-head-width", type=int, default=64, help="open_clip head_width (default 64)")
    parser.add_argument("--no-quick-gelu", action="store_true", help="the CLIP tower uses GELU (not OpenAI weights)")
    parser.add_argument("--normalize-patch-tokens", action="store_true",
                        help="layer-norm the patch tokens (open_clip >= 2.23); OpenFlamingo was trained without")


def run(args, progress):
    """`python -m conversion open_flamingo ...` -> `conversion.common.Conversion`."""
    from .common import Conversion, library_version, read_json_argument

    lm = args.language_model
    if lm.lstrip().startswith("{") or lm.endswith(".json"):
        lm = read_json_argument(lm, "--language-model")
    model, processor, report = convert_checkpoint(
        args.checkpoint, lm, vision_checkpoint=args.vision_checkpoint, tokenizer=args.tokenizer,
        vision_head_width=args.vision_head_width, quick_gelu=not args.no_quick_gelu,
        normalize_patch_tokens=args.normalize_patch_tokens, progress=progress,
    )
    cfg = model.config
    notes = [f"Tensors per source: {report['tensors']}.",
             f"Unused by OpenFlamingo's forward (dropped): {report['unused_vision_tensors']}.",
             "Patch tokens are layer-normed" if cfg.vision_config.final_norm else
             "Patch tokens are not layer-normed (open_clip < 2.23, as OpenFlamingo was trained)."]
    return Conversion(
        model=model, family="open_flamingo", source=f"open-flamingo {library_version('open-flamingo')}",
        checkpoint=args.checkpoint, parity=report["parity"], processor=processor, notes=notes,
        not_verified=report["not_verified"],
        card_fields=dict(language_model=cfg.text_config.model_type, cross_attn_every_n_layers=cfg.cross_attn_every,
                         media_token_id=cfg.media_token_id, eoc_token_id=cfg.eoc_token_id),
    )


def main(argv=None):
    """`python -m conversion.open_flamingo ...` = `python -m conversion open_flamingo ...`."""
    from .__main__ import source_main

    return source_main("open_flamingo", argv)


if __name__ == "__main__":
    main()
