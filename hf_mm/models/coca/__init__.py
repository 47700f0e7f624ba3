"""CoCa: contrastive captioners (open_clip and coca-pytorch architectures)."""

from .configuration_coca import CocaConfig, CocaMultimodalConfig, CocaTextConfig
from .modeling_coca import CocaModel, CocaOutput, CocaPreTrainedModel
from .processing_coca import CocaImageProcessor, CocaProcessor


def register() -> None:
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoProcessor,
        AutoModelForImageTextToText,
        AutoModelForZeroShotImageClassification,
    )

    AutoConfig.register(CocaConfig.model_type, CocaConfig, exist_ok=True)
    for auto in (AutoModel, AutoModelForZeroShotImageClassification, AutoModelForImageTextToText):
        auto.register(CocaConfig, CocaModel, exist_ok=True)
    AutoProcessor.register(CocaConfig, CocaProcessor, exist_ok=True)
    AutoImageProcessor.register(CocaConfig, image_processor_classes={"pil": CocaImageProcessor}, exist_ok=True)


__all__ = ["CocaConfig", "CocaImageProcessor", "CocaModel", "CocaProcessor", "CocaMultimodalConfig", "CocaOutput", "CocaPreTrainedModel",
           "CocaTextConfig", "register"]
