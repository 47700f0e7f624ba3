"""Flamingo: perceiver resampler + gated cross-attention over a PaLM language model."""

from .configuration_flamingo import FlamingoConfig, FlamingoPerceiverConfig, FlamingoTextConfig
from .modeling_flamingo import FlamingoForConditionalGeneration, FlamingoModel, FlamingoPreTrainedModel

__all__ = [
    "FlamingoConfig", "FlamingoForConditionalGeneration", "FlamingoModel", "FlamingoPerceiverConfig",
    "FlamingoPreTrainedModel", "FlamingoTextConfig", "register",
]


def register() -> None:
    """Register configs, models and the processor with transformers' Auto classes."""
    from transformers import (
        AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
    )

    from .processing_flamingo import FlamingoProcessor

    AutoConfig.register(FlamingoConfig.model_type, FlamingoConfig, exist_ok=True)
    AutoConfig.register(FlamingoTextConfig.model_type, FlamingoTextConfig, exist_ok=True)
    AutoConfig.register(FlamingoPerceiverConfig.model_type, FlamingoPerceiverConfig, exist_ok=True)
    AutoModel.register(FlamingoConfig, FlamingoModel, exist_ok=True)
    AutoModelForCausalLM.register(FlamingoConfig, FlamingoForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(FlamingoConfig, FlamingoForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(FlamingoConfig, FlamingoProcessor, exist_ok=True)
