"""hf_mm's x-clip CLIP (lucidrains' `x-clip`). `register()` wires it into transformers' Auto classes."""

from .configuration_x_clip import XClipConfig, XClipTextConfig, XClipVisionConfig
from .modeling_x_clip import XClipModel, XClipOutput, XClipPreTrainedModel


def register() -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor, AutoTokenizer

    from .processing_x_clip import XClipProcessor
    from .tokenization_x_clip import XClipBackendTokenizer, XClipTokenizer

    AutoConfig.register(XClipConfig.model_type, XClipConfig, exist_ok=True)
    AutoModel.register(XClipConfig, XClipModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(XClipConfig, XClipModel, exist_ok=True)
    AutoProcessor.register(XClipConfig, XClipProcessor, exist_ok=True)
    # XClipTokenizer for x-clip configs; XClipBackendTokenizer is registered by name only (fast_tokenizer_class),
    # so that a saved `"tokenizer_class": "XClipBackendTokenizer"` loads back as itself
    AutoTokenizer.register(XClipConfig, tokenizer_class=XClipTokenizer, fast_tokenizer_class=XClipBackendTokenizer,
                           exist_ok=True)


__all__ = ["XClipConfig", "XClipModel", "XClipOutput", "XClipPreTrainedModel", "XClipTextConfig",
           "XClipVisionConfig", "register"]
