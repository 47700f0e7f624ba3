"""Generation helpers shared by the cross-attending generative models (CoCa, Flamingo)."""

from transformers.cache_utils import DynamicCache, EncoderDecoderCache


class CrossAttentionCacheMixin:
    """Makes `generate()` use an `EncoderDecoderCache`: self-attention K/V grow per step, cross-attention
    K/V over the image tokens are projected once (on the prefill step) and reused.

    Both halves grow lazily, so the model's layer count needs no `num_hidden_layers` bookkeeping.
    """

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        if (
            model_kwargs.get("past_key_values") is None
            and generation_config.use_cache is not False
            and generation_config.cache_implementation in (None, "dynamic")
        ):
            model_kwargs["past_key_values"] = EncoderDecoderCache(DynamicCache(), DynamicCache())
            return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    @staticmethod
    def new_cache() -> EncoderDecoderCache:
        return EncoderDecoderCache(DynamicCache(), DynamicCache())
