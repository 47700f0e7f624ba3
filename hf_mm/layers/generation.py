"""Generation helpers shared by the cross-attending generative models (CoCa, Flamingo)."""

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache


class CrossAttentionCacheMixin:
    """Makes `generate()` use an `EncoderDecoderCache`: self-attention K/V grow per step, cross-attention
    K/V over the image tokens are projected once (on the prefill step) and reused.

    Both halves grow lazily, so the model's layer count needs no `num_hidden_layers` bookkeeping.
    Beam search reorders only the self-attention half: generate() expands the image inputs per beam, so the
    cross-attention K/V of the `num_beams` rows of one input are identical and a reorder that keeps every beam
    within its input (always, in beam search) would copy them onto themselves (~all image K/V per step).
    """

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        if (
            model_kwargs.get("past_key_values") is None
            and generation_config.use_cache is not False
            and generation_config.cache_implementation in (None, "dynamic")
        ):
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            cache.rows_per_input = max(1, generation_config.num_beams or 1)  # rows sharing one image's K/V
            model_kwargs["past_key_values"] = cache
            return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def _reorder_cache(self, past_key_values, beam_idx: torch.LongTensor):
        group = getattr(past_key_values, "rows_per_input", None)
        if not isinstance(past_key_values, EncoderDecoderCache) or not group or len(beam_idx) % group:
            past_key_values.reorder_cache(beam_idx)
            return past_key_values
        rows = torch.arange(len(beam_idx), device=beam_idx.device)
        past_key_values.self_attention_cache.reorder_cache(beam_idx)
        if not bool((beam_idx // group == rows // group).all()):  # a row moved to another input: copy its K/V
            past_key_values.cross_attention_cache.reorder_cache(beam_idx)
        return past_key_values

    @staticmethod
    def new_cache() -> EncoderDecoderCache:
        return EncoderDecoderCache(DynamicCache(), DynamicCache())
