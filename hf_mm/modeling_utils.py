"""`HfMmPreTrainedModel`: the base of every hf_mm model. It adds these guarantees to transformers' PreTrainedModel.

- Strict loading. transformers' `from_pretrained` loads a checkpoint with missing tensors (they are randomly
  initialised and only a warning is logged), ignores unexpected ones, and reports wrong shapes only in the
  log. hf_mm models raise `CheckpointMismatchError` listing every missing, unexpected and mis-shaped tensor
  instead, and a truncated or corrupt safetensors file raises `CheckpointCorruptError` naming the file.
  Tied weights and non-persistent buffers are never reported. `strict=False`
  restores transformers' lenient behaviour, for deliberate partial loads.
- Non-persistent buffers (rotary frequencies, sin-cos positions, normalisation constants) are not in
  checkpoints and `from_pretrained` builds the model on the meta device, so `_init_weights` rebuilds them
  through each module's `reset_buffers()` (`reset_non_persistent_buffers`).
- A loaded model computes exactly what the same model built in memory computes: weights are re-aligned
  after loading (`align_tensors`).
- save -> load -> save writes byte-identical files (sub-configs record their dtype on the first save too).
- Generation arguments are validated (`max_new_tokens`, `num_beams`, `top_p`, `temperature`, ...) before
  `generate()` runs, with errors naming the argument and the expected range.
"""

from __future__ import annotations

import logging

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from .layers.validation import check_generation_config


logger = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model: lists the missing, unexpected and mis-shaped ones."""


class CheckpointCorruptError(ValueError):
    """A weights file could not be read (truncated, corrupt, or not a safetensors file)."""


def loading_problems(info: dict) -> list[str]:
    """Human-readable problems from transformers' loading info (`output_loading_info=True`)."""
    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing tensors: {sorted(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected tensors: {sorted(info['unexpected_keys'])}")
    if info.get("mismatched_keys"):
        shapes = [f"{key} (checkpoint {tuple(ckpt)} vs model {tuple(model)})"
                  for key, ckpt, model in sorted(info["mismatched_keys"])]
        problems.append(f"wrong shapes: {shapes}")
    if info.get("error_msgs"):
        problems.append(f"errors: {list(info['error_msgs'])}")
    return problems


def align_tensors(model: nn.Module, alignment: int = 64) -> None:
    """If any parameter or buffer is not `alignment`-byte aligned, copy every one of them into fresh memory.

    Memory-mapped safetensors are only 8-byte aligned, and MKL (which `hf_mm.layers.Linear` uses when its native
    kernel is unavailable) sums in an order that depends on the weight's alignment: without this, a loaded model
    and the same model built in memory could differ in the last bits. Copying all tensors (not only the misaligned ones) releases the file
    mapping, so the weights are resident once rather than once in the mapping and once in the copies.
    Tied parameters stay tied (a shared `Parameter` is copied once).
    """
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.numel()]
    if all(t.data_ptr() % alignment == 0 for t in tensors):
        return
    copied = set()
    with torch.no_grad():
        for module in model.modules():
            for param in module._parameters.values():
                if param is not None and id(param) not in copied:
                    param.data = param.data.clone()
                    copied.add(id(param))
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = buffer.clone()


@torch.no_grad()
def reset_non_persistent_buffers(module: nn.Module) -> None:
    """Rebuild `module`'s own non-persistent buffers, if it has any (modules that own some define
    `reset_buffers()`)."""
    reset = getattr(module, "reset_buffers", None)
    if callable(reset):
        reset()


class HfMmPreTrainedModel(PreTrainedModel):
    """PreTrainedModel with strict `from_pretrained` and validated `generate()` arguments (see module doc)."""

    def _init_weights(self, module):
        """transformers' defaults, then the module's non-persistent buffers (families extend this)."""
        super()._init_weights(module)
        reset_non_persistent_buffers(module)

    def generation_defaults(self, generation_config) -> dict:
        """The family's `generation_config` defaults (field -> value), applied where a field is unset (None)."""
        return {}

    def apply_generation_defaults(self) -> None:
        """Fill the unset fields of `self.generation_config` with `generation_defaults()`; values already set (a
        saved generation_config.json, the user's) are kept. Called by the families' `__init__` and after loading."""
        generation_config = self.generation_config
        unset = {k: v for k, v in self.generation_defaults(generation_config).items()
                 if getattr(generation_config, k, None) is None}
        if unset:
            generation_config.update(**unset)
            generation_config._original_object_hash = hash(generation_config)  # the model's default, not an edit

    def adjust_generation_fn(self, *args, **kwargs):
        """`from_pretrained` reads generation_config.json here (or builds one from config.json); fields it leaves
        unset get the family's defaults."""
        super().adjust_generation_fn(*args, **kwargs)
        self.apply_generation_defaults()

    def enable_input_require_grads(self):
        """transformers' hooks on the token embeddings of every PreTrainedModel inside, plus the patch embedding of
        every vision tower (plain modules here, which transformers does not see): with reentrant activation
        checkpointing, trainable weights inside a frozen vision tower (LoRA) would otherwise get no gradient. Hooks
        of an earlier call are removed first, so enabling twice and disabling once leaves none."""
        self.disable_input_require_grads()
        super().enable_input_require_grads()

        def make_output_require_grad(module, inputs, output):
            output.requires_grad_(True)

        towers = [m.patch_embedding for m in self.modules() if isinstance(getattr(m, "patch_embedding", None), nn.Module)]
        self._require_grads_hooks = [*getattr(self, "_require_grads_hooks", []),
                                     *(tower.register_forward_hook(make_output_require_grad) for tower in towers)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, strict: bool = True, **kwargs):
        """transformers' `from_pretrained`; with `strict=True` (default) any missing, unexpected or mis-shaped
        tensor raises `CheckpointMismatchError` (listing them) instead of leaving random weights."""
        if not strict:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
            align_tensors(loaded[0] if isinstance(loaded, tuple) else loaded)
            return loaded
        if kwargs.pop("ignore_mismatched_sizes", False):
            raise ValueError("ignore_mismatched_sizes=True re-initialises the mis-shaped weights at random; "
                             "pass strict=False as well if that is really intended")
        want_info = kwargs.pop("output_loading_info", False)
        try:
            # mismatched sizes are collected (not raised with a message that only points at the log) and reported below
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, ignore_mismatched_sizes=True, output_loading_info=True,
                **kwargs,
            )
        except SafetensorError as err:
            raise CheckpointCorruptError(
                f"cannot read the weights of {pretrained_model_name_or_path}: the safetensors file is truncated "
                f"or corrupt ({err}); re-download or re-convert it"
            ) from err
        align_tensors(model)
        problems = loading_problems(info)
        if problems:
            raise CheckpointMismatchError(
                f"{cls.__name__}.from_pretrained({str(pretrained_model_name_or_path)!r}): the checkpoint does not "
                f"match the model; " + "; ".join(problems)
                + ". Pass strict=False to load it anyway (missing and mis-shaped weights are then random)."
            )
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained`; sub-configs also record the dtype (from_pretrained sets it on them, so
        without this a save -> load -> save round trip would not write an identical config.json)."""
        for value in vars(self.config).values():
            if isinstance(value, PreTrainedConfig) and getattr(value, "dtype", None) is None:
                value.dtype = self.dtype
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _prepare_generation_config(self, generation_config, **kwargs):
        generation_config, model_kwargs = super()._prepare_generation_config(generation_config, **kwargs)
        check_generation_config(generation_config)
        if generation_config.cache_implementation not in (None, "dynamic"):
            raise ValueError(
                f"cache_implementation={generation_config.cache_implementation!r} is not supported by "
                f"{type(self).__name__}: its layers grow a DynamicCache (cross-attention keys/values: once per "
                "image); leave cache_implementation unset"
            )
        if self.training and self.is_activation_checkpointing and generation_config.use_cache is not False:
            # checkpointed blocks drop the cache, while a cached step feeds only the newest token
            logger.warning("generate() in training mode with gradient checkpointing decodes without a cache (the "
                           "checkpointed blocks cannot fill one); call model.eval() first for cached decoding")
            generation_config.use_cache = False
        return generation_config, model_kwargs


__all__ = ["CheckpointCorruptError", "CheckpointMismatchError", "HfMmPreTrainedModel", "loading_problems"]
