"""Weight initialisation of the shared layers' own parameters, for each family's `_init_weights`.

Linear / Embedding / LayerNorm defaults come from `PreTrainedModel._init_weights`; this covers the extra
parameters the layer library defines. transformers' guarded `init` functions leave loaded weights alone.
"""

import math

import torch
from transformers import initialization as init

from .blocks import AttentionalPooler, LayerScale
from .contrastive import LogitScale
from .vision import VisionTransformer


@torch.no_grad()
def init_shared_layer(module, std: float = 0.02) -> None:
    if isinstance(module, LayerScale):
        init.constant_(module.gamma, module.init_value)
    elif isinstance(module, LogitScale):
        init.constant_(module.logit_scale, math.log(module.init_value))
    elif isinstance(module, AttentionalPooler):
        init.normal_(module.query, std=std)
    if isinstance(module, VisionTransformer):
        width = module.config.hidden_size
        if module.class_embedding is not None:
            init.normal_(module.class_embedding, std=width**-0.5)
        if module.config.position_embedding_type == "learned":
            init.normal_(module.position_embedding, std=width**-0.5)
