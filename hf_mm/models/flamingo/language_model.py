"""Gated cross-attention around the decoder layers of any transformers causal LM, without copying its code.

The LM keeps its own module tree (and so its state-dict names, attention kernels, KV cache and gradient
checkpointing). A forward hook on each decoder layer listed by `FlamingoConfig.cross_attention_layer_ids()` runs
the Flamingo block on the layer's input hidden states (`"before"`, OpenFlamingo) or on its output (`"after"`,
lucidrains). The hooks are idle unless `MediaConditioning` is active, which `FlamingoModel.forward` sets for the
duration of one LM call only; a bare LM call (text only) is the plain LM. The active conditioning lives in a
context variable (per thread / asyncio task), never on the model, so one model can serve several threads at once.

Einstein notation: `b` batch, `n` text positions, `t` media, `l` latents per medium, `d` features.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

# OpenFlamingo's table (`factory._infer_decoder_layers_attr_name`) seen from the base model, plus GPT-2 / Falcon /
# Bloom (`h`); tried in this order before falling back to a search.
KNOWN_DECODER_LAYER_PATHS = ("layers", "decoder.layers", "h", "blocks", "transformer.h", "transformer.blocks")


def fit_attention_implementation(text_config) -> None:
    """The composite model hands its attention kernel (sdpa by default) down to `text_config`; an LM class without
    sdpa support (GPT-J) falls back to eager instead of refusing to build."""
    from transformers import AutoModelForCausalLM

    lm_class = AutoModelForCausalLM._model_mapping.get(type(text_config), None)
    if text_config._attn_implementation == "sdpa" and lm_class is not None and not getattr(lm_class, "_supports_sdpa", False):
        text_config._attn_implementation = "eager"


def build_language_model(text_config, with_head: bool) -> tuple[nn.Module, nn.Module | None]:
    """`(base model, output head)` of the causal LM of `text_config`, built through the Auto classes; the head is
    the LM's own (`lm_head`, GPT-NeoX `embed_out`, bias included), None without `with_head`."""
    from transformers import AutoModel, AutoModelForCausalLM

    fit_attention_implementation(text_config)
    if not with_head:
        return AutoModel.from_config(text_config), None
    causal_lm = AutoModelForCausalLM.from_config(text_config)
    return causal_lm.base_model, causal_lm.get_output_embeddings()


def _get_path(module: nn.Module, path: str):
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def find_decoder_layers(language_model: nn.Module, num_layers: int, attr_name: str | None = None) -> tuple[str, nn.ModuleList]:
    """The decoder-layer list of a transformers base model: `attr_name` if given, else the first known name
    (`layers` LLaMA / GPT-NeoX, `decoder.layers` OPT, `h` GPT-2 / GPT-J, `blocks` MPT) holding a `ModuleList`
    of `num_layers` modules, else the only such `ModuleList` anywhere in the model. Returns `(path, layers)`."""
    if attr_name is not None:
        layers = _get_path(language_model, attr_name)
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(
                f"decoder_layers_attr_name {attr_name!r} does not name a ModuleList in {type(language_model).__name__}"
            )
        return attr_name, layers
    for path in KNOWN_DECODER_LAYER_PATHS:
        layers = _get_path(language_model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) == num_layers:
            return path, layers
    found = [(name, m) for name, m in language_model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == num_layers]
    if len(found) != 1:
        raise ValueError(
            f"cannot find the decoder layers of {type(language_model).__name__}: "
            f"{[name for name, _ in found] or 'no'} ModuleList(s) of text_config.num_hidden_layers={num_layers} "
            "modules; set decoder_layers_attr_name in the FlamingoConfig"
        )
    return found[0]


@dataclass
class MediaConditioning:
    """What the cross-attention blocks need during one LM call.

    `media_latents (b, t * l, d_media)` (None once their K/V are cached), `media_mask (b, 1, n, t * l)` and
    `attends (b, n, 1)` from `text_to_media_mask`, and the `EncoderDecoderCache` holding the cross-attention K/V.
    """

    media_latents: torch.Tensor | None
    media_mask: torch.Tensor
    attends: torch.Tensor
    past_key_values: object = None


# {id(model): MediaConditioning} of the wrapped-LM calls in progress in this thread / task
_ACTIVE_CONDITIONING: ContextVar[dict | None] = ContextVar("hf_mm_flamingo_media_conditioning", default=None)


@contextmanager
def conditioning_active(owner: nn.Module, conditioning: MediaConditioning):
    """Makes `conditioning` visible to `owner`'s hooks for the calls made inside the block, in this thread only."""
    token = _ACTIVE_CONDITIONING.set({**(_ACTIVE_CONDITIONING.get() or {}), id(owner): conditioning})
    try:
        yield
    finally:
        _ACTIVE_CONDITIONING.reset(token)


def active_conditioning(owner: nn.Module) -> MediaConditioning | None:
    """The conditioning of `owner`'s call in progress in this thread / task (None outside one)."""
    active = _ACTIVE_CONDITIONING.get()
    return None if active is None else active.get(id(owner))


class CrossAttentionHook:
    """Forward (pre-)hook of decoder layer `layer_idx`: applies `owner.cross_attn_layers[str(layer_idx)]` while
    a conditioning is active for `owner` (`conditioning_active`). Holds the owning model, not the block, so deep copies and module
    replacement (PEFT, FSDP) follow it."""

    def __init__(self, owner: nn.Module, layer_idx: int, before: bool):
        self.owner, self.layer_idx, self.before = owner, layer_idx, before

    def _cross_attend(self, hidden_states: torch.Tensor, cond: MediaConditioning) -> torch.Tensor:
        block = self.owner.cross_attn_layers[str(self.layer_idx)]
        return block(hidden_states, cond.media_latents, cond.media_mask, cond.attends,
                     past_key_values=cond.past_key_values)

    def __call__(self, module, args, kwargs, output=None):
        cond = active_conditioning(self.owner)
        if cond is None:
            return None
        if self.before:  # pre-hook: rewrite the hidden states the layer receives
            if args:
                return (self._cross_attend(args[0], cond), *args[1:]), kwargs
            if "hidden_states" not in kwargs:
                raise TypeError(f"{type(module).__name__} was called without hidden states as its first argument "
                                "or `hidden_states=`; Flamingo cannot find the input to cross-attend from")
            return args, {**kwargs, "hidden_states": self._cross_attend(kwargs["hidden_states"], cond)}
        if isinstance(output, tuple):  # some layers return (hidden_states, attentions, ...)
            return (self._cross_attend(output[0], cond), *output[1:])
        return self._cross_attend(output, cond)


def attach_cross_attention(owner: nn.Module, layers: nn.ModuleList, layer_ids: list[int], before: bool) -> None:
    """Register a `CrossAttentionHook` on `layers[i]` for every `i` in `layer_ids`."""
    for i in layer_ids:
        hook = CrossAttentionHook(owner, i, before)
        if before:
            layers[i].register_forward_pre_hook(hook, with_kwargs=True)
        else:
            layers[i].register_forward_hook(hook, with_kwargs=True)
