"""CoCa: contrastive captioners (open_clip and coca-pytorch architectures)."""

from .configuration_coca import CocaConfig, CocaMultimodalConfig, CocaTextConfig
from .modeling_coca import CocaModel, CocaOutput, CocaPreTrainedModel


def register() -> None:
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForImageTextToText,
        AutoModelForZeroShotImageClassification,
    )

    AutoConfig.register(CocaConfig.model_type, CocaConfig, exist_ok=True)
    for auto in (AutoModel, AutoModelForZeroShotImageClassification, AutoModelForImageTextToText):
        auto.register(CocaConfig, CocaModel, exist_ok=True)


__all__ = ["CocaConfig", "CocaModel", "CocaMultimodalConfig", "CocaOutput", "CocaPreTrainedModel",
           "CocaTextConfig", "register"]
