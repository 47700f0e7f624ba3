"""Generation helpers shared by the cross-attending generative models (CoCa, Flamingo)."""

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from .validation import check_same_batch


class CrossAttentionCacheMixin:
    """Makes `generate()` use an `EncoderDecoderCache`: self-attention K/V grow per step, cross-attention
    K/V over the image tokens are projected once (on the prefill step) and reused.

    Beam search and `num_return_sequences` expand every input to `g` rows. The image inputs named in
    `_per_image_generation_inputs` are *not* expanded: the model gets `sequences_per_image=g`, encodes each
    image once, projects its cross-attention K/V once, and the `g` rows of an input cross-attend to them
    together (see `Attention`). Beam search reorders only the self-attention half of the cache: the
    cross-attention half holds one entry per image, and every beam stays within its input.

    Both halves grow lazily, so the model's layer count needs no `num_hidden_layers` bookkeeping.
    """

    _per_image_generation_inputs: tuple[str, ...] = ()

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False,
                                      input_ids=None, **model_kwargs):
        per_image = {k: model_kwargs.pop(k) for k in self._per_image_generation_inputs if k in model_kwargs}
        if input_ids is not None:  # checked before expanding: an error names the batch sizes the user passed
            for name, value in per_image.items():
                if isinstance(value, torch.Tensor):
                    check_same_batch(("input_ids", input_ids), (name, value))
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        model_kwargs.update(per_image)
        if expand_size > 1 and any(v is not None for v in per_image.values()):
            model_kwargs["sequences_per_image"] = expand_size * model_kwargs.get("sequences_per_image", 1)
        return input_ids, model_kwargs

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        if (
            model_kwargs.get("past_key_values") is None
            and generation_config.use_cache is not False
            and generation_config.cache_implementation in (None, "dynamic")
        ):
            model_kwargs["past_key_values"] = self.new_cache()
            return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def _reorder_cache(self, past_key_values, beam_idx: torch.LongTensor):
        if not isinstance(past_key_values, EncoderDecoderCache):
            past_key_values.reorder_cache(beam_idx)
            return past_key_values
        past_key_values.self_attention_cache.reorder_cache(beam_idx)
        cross = past_key_values.cross_attention_cache
        stored = [layer.keys for layer in cross.layers if layer.is_initialized and layer.keys.dim() == 4]
        contexts = stored[0].shape[0] if stored else 0
        if contexts == len(beam_idx):
            cross.reorder_cache(beam_idx)
        elif contexts:  # one entry per image: valid while every row keeps its image
            group = len(beam_idx) // contexts
            rows = torch.arange(len(beam_idx), device=beam_idx.device)
            if not bool((beam_idx // group == rows // group).all()):
                raise ValueError("a beam moved to another input; the per-image cross-attention cache cannot follow it")
        return past_key_values

    @staticmethod
    def new_cache() -> EncoderDecoderCache:
        return EncoderDecoderCache(DynamicCache(), DynamicCache())


def cap_candidates_to_max_length(candidate_generator, max_length: int):
    """Makes `candidate_generator.get_candidates` (assisted / prompt-lookup decoding) propose no token past
    `max_length - 1`, and returns the generator.

    The main model verifies `input + candidates` in one forward and adds one token of its own, so nothing beyond
    `max_length - 1` can be kept (`_assisted_decoding` crops the accepted tokens to `max_length`). transformers'
    `PromptLookupCandidateGenerator` caps an index into the prompt, not the total length, and can propose tokens past
    it: a model with a bounded position table then fails in that forward. Cropping changes no accepted token (the
    logits at earlier positions do not depend on later ones). Candidate logits, when given, are cropped alike.
    """
    get_candidates = candidate_generator.get_candidates

    def capped_get_candidates(input_ids, *args, **kwargs):
        candidate_ids, candidate_logits = get_candidates(input_ids, *args, **kwargs)
        keep = max(max_length - 1, input_ids.shape[1])
        if candidate_ids.shape[1] > keep:
            candidate_ids = candidate_ids[:, :keep]
            if candidate_logits is not None:
                candidate_logits = candidate_logits[:, : keep - input_ids.shape[1]]
        return candidate_ids, candidate_logits

    candidate_generator.get_candidates = capped_get_candidates
    return candidate_generator
