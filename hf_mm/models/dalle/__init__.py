"""DALL-E family: discrete VAE + text-to-image transformer (dalle-pytorch)."""

from .configuration_dalle import DalleConfig, DiscreteVAEConfig
from .generation_dalle import DalleImageGenerationOutput, ImageVocabularyLogitsProcessor
from .modeling_dalle import DalleForImageGeneration, DalleOutput, DallePreTrainedModel
from .modeling_vae import DiscreteVAEModel, DiscreteVAEOutput
from .processing_dalle import DalleProcessor

__all__ = [
    "DalleConfig", "DalleForImageGeneration", "DalleImageGenerationOutput", "DalleOutput", "DallePreTrainedModel",
    "DalleProcessor", "DiscreteVAEConfig", "DiscreteVAEModel", "DiscreteVAEOutput", "ImageVocabularyLogitsProcessor",
    "register",
]


def register():
    """Register the configs and models with transformers' Auto classes (any-to-any pipeline included)."""
    from transformers import AutoConfig, AutoModel, AutoModelForMultimodalLM, AutoProcessor

    AutoConfig.register(DiscreteVAEConfig.model_type, DiscreteVAEConfig, exist_ok=True)
    AutoConfig.register(DalleConfig.model_type, DalleConfig, exist_ok=True)
    AutoModel.register(DiscreteVAEConfig, DiscreteVAEModel, exist_ok=True)
    AutoModel.register(DalleConfig, DalleForImageGeneration, exist_ok=True)
    AutoModelForMultimodalLM.register(DalleConfig, DalleForImageGeneration, exist_ok=True)
    AutoProcessor.register(DalleConfig, DalleProcessor, exist_ok=True)
