"""The layer library every hf_mm family is built from."""

from .attention import Attention, eager_attention_forward
from .blocks import AttentionalPooler, LayerScale, TransformerBlock
from .contrastive import LogitScale, all_gather_with_grad, contrastive_logits, contrastive_loss
from .generation import CrossAttentionCacheMixin
from .initialization import init_shared_layer
from .linear import Linear
from .masks import causal_mask, self_attention_mask
from .mlp import MLP, GatedMLP, get_activation, quick_gelu
from .norms import LayerNorm
from .packing import on_rows, row_indices, rows_needed
from .rotary import RotaryEmbedding, apply_rotary
from .vision import VisionTowerConfig, VisionTransformer

__all__ = [
    "Attention", "AttentionalPooler", "CrossAttentionCacheMixin", "GatedMLP", "LayerNorm", "LayerScale",
    "Linear", "LogitScale", "MLP", "RotaryEmbedding", "TransformerBlock", "VisionTowerConfig", "VisionTransformer",
    "all_gather_with_grad", "apply_rotary", "causal_mask", "contrastive_logits", "contrastive_loss",
    "eager_attention_forward", "get_activation", "init_shared_layer", "on_rows", "quick_gelu", "row_indices",
    "rows_needed", "self_attention_mask",
]
