"""CoCa configuration: a unimodal text tower, an image tower with attentional pooling, and a multimodal decoder.

One config expresses both open_clip's CoCa (serial pre-norm blocks with biases, learned positions,
GELU/QuickGELU, separate decoder output projection) and lucidrains' coca-pytorch (PaLM parallel blocks,
SwiGLU, rotary, multi-query attention, bias-free LayerNorm, tied embedding/logits).
"""

from transformers import PreTrainedConfig

from ...layers.validation import resolve_head_dim
from ...layers.vision import VisionTowerConfig

PADDING_MASK_STYLES = ("open_clip_legacy", "open_clip", "coca_pytorch")


class CocaTextConfig(PreTrainedConfig):
    r"""Text tower (`num_hidden_layers` unimodal layers) and the shared block style of the decoder.

    `padding_mask_style` fixes what padded positions and the appended CLS token attend to (real tokens always
    attend to real tokens only): "open_clip_legacy" reproduces open_clip's shifted CLS mask (its released
    checkpoints), "open_clip" its corrected mask, "coca_pytorch" masks padding for the CLS query only. hf_mm
    deliberately never lets a real token see padding (the references' decoders, coca-pytorch's other text rows and
    open_clip's shifted mask do), so padding never changes a real token's output (batched generation left-pads
    prompts): parity holds for unpadded and right-padded text, as the references are trained; with left padding or
    a pad id inside the text the real tokens after it differ. Without an `attention_mask` the padding is
    `input_ids != pad_token_id`, as in both references.
    `cls_position` (learned positions): "after_text" puts the CLS right after the (padded) text; "end_of_context"
    at position `max_position_embeddings`, seeing the text padded to the context, as open_clip's CLS always is
    after its tokenizer (converted open_clip checkpoints): its embedding then does not depend on the padding.

    Example:
    ```python
    >>> from hf_mm.models.coca import CocaTextConfig
    >>> CocaTextConfig(vocab_size=49408, hidden_size=512, num_hidden_layers=12, max_position_embeddings=76)
    ```
    """

    model_type = "hf_mm_coca_text"
    base_config_key = "text_config"

    vocab_size: int = 49408
    hidden_size: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None  # 1 = multi-query (coca-pytorch)
    head_dim: int | None = None
    intermediate_size: int = 2048
    hidden_act: str = "gelu"
    gated_mlp: bool = False  # SwiGLU / GEGLU feed-forward
    parallel_blocks: bool = False  # PaLM-style attention and feed-forward in parallel
    layer_norm_eps: float = 1e-5
    norm_bias: bool = True
    attention_bias: bool = True
    attention_out_bias: bool = True
    mlp_bias: bool = True
    layer_scale_init: float | None = None
    position_embedding_type: str = "learned"  # "learned" (open_clip) or "rotary" (coca-pytorch)
    max_position_embeddings: int = 76  # the context length, CLS excluded
    rope_theta: float = 10000.0
    padding_mask_style: str = "open_clip_legacy"
    cls_position: str = "after_text"  # or "end_of_context" (open_clip's, see above)
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407
    tie_word_embeddings: bool = False
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        self.head_dim = resolve_head_dim(self.hidden_size, self.num_attention_heads, self.head_dim, "text_config.")
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        super().__post_init__(**kwargs)


class CocaMultimodalConfig(PreTrainedConfig):
    r"""Multimodal decoder: `num_hidden_layers` pairs of (causal self-attention block, cross-attention block).

    Width, heads, feed-forward and norm style follow `text_config`. `parallel_cross_attention` puts the
    feed-forward in parallel with the cross-attention (coca-pytorch); `norm_context` normalises the image
    tokens inside each cross-attention (open_clip's `ln_1_kv`).
    """

    model_type = "hf_mm_coca_multimodal"
    base_config_key = "multimodal_config"

    num_hidden_layers: int = 12
    num_attention_heads: int | None = None  # defaults to text_config's (head_dim = width / heads)
    parallel_cross_attention: bool = False
    norm_context: bool = True
    cross_attention_num_key_value_heads: int | None = None  # defaults to text_config's


class CocaConfig(PreTrainedConfig):
    r"""Configuration of `CocaModel`.

    Args:
        text_config / multimodal_config / vision_config: sub-configs (dicts or instances). `vision_config=None`
            with an `image_embed_dim` builds no image tower: the model then takes precomputed
            `image_embeds (b, m, image_embed_dim)`; without either, the default tower (ViT-B/32) is built.
        image_embed_dim: width of the image tokens entering the pooler (defaults to the vision tower's width).
        attn_pooler_queries: learned queries of the attentional pooler; query 0 gives the contrastive image
            embedding, the others are the decoder's image tokens. 0 disables the pooler (open_clip `coca_base`):
            the tower's class token is the embedding and its patch tokens feed the decoder.
        projection_dim: size of the contrastive embeddings.
        logit_scale_init_value / logit_scale_max: initial and maximal contrastive scale (exp of the learned log).

    Example:
    ```python
    >>> from hf_mm.models.coca import CocaConfig, CocaModel
    >>> model = CocaModel(CocaConfig())  # open_clip coca_ViT-B-32 sizes
    ```
    """

    model_type = "hf_mm_coca"
    sub_configs = {
        "text_config": CocaTextConfig,
        "multimodal_config": CocaMultimodalConfig,
        "vision_config": VisionTowerConfig,
    }
    keys_to_ignore_at_inference = [
        "past_key_values", "image_hidden_states", "text_embeds", "image_embeds",
        "logits_per_image", "logits_per_text", "text_hidden_states",
    ]

    text_config: dict | CocaTextConfig | None = None
    multimodal_config: dict | CocaMultimodalConfig | None = None
    vision_config: dict | VisionTowerConfig | None = None
    image_embed_dim: int | None = None
    attn_pooler_queries: int = 256
    attn_pooler_heads: int = 8
    attn_pooler_head_dim: int | None = None
    attn_pooler_num_key_value_heads: int | None = None
    attn_pooler_bias: bool = True
    attn_pooler_dim: int | None = None  # width of the pooled tokens (open_clip: embed_dim); default text width
    projection_dim: int = 512
    logit_scale_init_value: float = 1 / 0.07
    logit_scale_max: float | None = 100.0
    caption_loss_weight: float = 2.0
    contrastive_loss_weight: float = 1.0
    # training with the caption loss: the text tower, decoder and head skip the positions that neither the loss
    # nor the CLS embedding reads (padding); the returned logits there are 0. False: compute every position.
    skip_unused_positions: bool = True
    tie_word_embeddings: bool | None = None  # None: text_config's; True / False: sets text_config's
    use_cache: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.text_config is None:
            self.text_config = CocaTextConfig()
        elif isinstance(self.text_config, dict):
            self.text_config = CocaTextConfig(**self.text_config)
        if self.multimodal_config is None:
            self.multimodal_config = CocaMultimodalConfig()
        elif isinstance(self.multimodal_config, dict):
            self.multimodal_config = CocaMultimodalConfig(**self.multimodal_config)
        if self.vision_config is None and self.image_embed_dim is None:  # neither a tower nor embeds: the default
            self.vision_config = VisionTowerConfig()
        elif isinstance(self.vision_config, dict):
            self.vision_config = VisionTowerConfig(**self.vision_config)
        if self.image_embed_dim is None:
            self.image_embed_dim = self.vision_config.hidden_size if self.vision_config is not None else None
        self.attn_pooler_dim = self.attn_pooler_dim or self.text_config.hidden_size
        if self.attn_pooler_head_dim is None:
            if self.attn_pooler_heads < 1 or self.attn_pooler_dim % self.attn_pooler_heads:
                raise ValueError(
                    f"attn_pooler_heads ({self.attn_pooler_heads}) must divide attn_pooler_dim ({self.attn_pooler_dim}), "
                    "or set attn_pooler_head_dim"
                )
            self.attn_pooler_head_dim = self.attn_pooler_dim // self.attn_pooler_heads
        self.attn_pooler_num_key_value_heads = self.attn_pooler_num_key_value_heads or self.attn_pooler_heads
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            kwargs.setdefault(name, getattr(self.text_config, name))
        if self.tie_word_embeddings is not None:
            self.text_config.tie_word_embeddings = bool(self.tie_word_embeddings)
        super().__post_init__(**kwargs)
        self.tie_word_embeddings = self.text_config.tie_word_embeddings

    def validate_architecture(self) -> None:
        """Raise a ValueError naming the field when the model could not be built as configured."""
        t = self.text_config
        if t.padding_mask_style not in PADDING_MASK_STYLES:
            raise ValueError(f"text_config.padding_mask_style must be one of {PADDING_MASK_STYLES}, got {t.padding_mask_style!r}")
        if t.cls_position not in ("after_text", "end_of_context") or (
                t.cls_position == "end_of_context" and t.position_embedding_type != "learned"):
            raise ValueError("text_config.cls_position must be 'after_text' or (with learned positions) "
                             f"'end_of_context', got {t.cls_position!r} with {t.position_embedding_type!r} positions")
        if t.position_embedding_type not in ("learned", "rotary"):
            raise ValueError(f"text_config.position_embedding_type must be 'learned' or 'rotary', got {t.position_embedding_type!r}")
        if t.num_attention_heads < 1 or t.num_attention_heads % t.num_key_value_heads:
            raise ValueError(
                f"text_config.num_attention_heads ({t.num_attention_heads}) must be a positive multiple of "
                f"num_key_value_heads ({t.num_key_value_heads})"
            )
        mm_heads = self.multimodal_config.num_attention_heads
        if mm_heads is not None and (mm_heads < 1 or t.hidden_size % mm_heads):
            raise ValueError(
                f"multimodal_config.num_attention_heads ({mm_heads}) must divide text_config.hidden_size "
                f"({t.hidden_size}) (the decoder's width)"
            )
        decoder_heads, cross_kv = mm_heads or t.num_attention_heads, self.multimodal_config.cross_attention_num_key_value_heads
        for field, kv in (("text_config.num_key_value_heads", t.num_key_value_heads),
                          ("multimodal_config.cross_attention_num_key_value_heads", cross_kv)):
            kv = decoder_heads if kv == t.num_attention_heads else kv  # no grouping: the decoder's own heads
            if kv is not None and (kv < 1 or decoder_heads % kv):
                raise ValueError(f"{field} ({kv}) must divide the decoder's num_attention_heads ({decoder_heads})")
        if self.attn_pooler_queries and (self.attn_pooler_num_key_value_heads < 1
                                         or self.attn_pooler_heads % self.attn_pooler_num_key_value_heads):
            raise ValueError(f"attn_pooler_num_key_value_heads ({self.attn_pooler_num_key_value_heads}) must divide "
                             f"attn_pooler_heads ({self.attn_pooler_heads})")
        for name, value in (("projection_dim", self.projection_dim),
                            ("text_config.max_position_embeddings", t.max_position_embeddings)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("bos_token_id", "pad_token_id"):  # both are embedded (eos is only compared with)
            value = getattr(t, name)
            if value is not None and not 0 <= value < t.vocab_size:
                raise ValueError(f"text_config.{name} ({value}) must lie in [0, text_config.vocab_size={t.vocab_size})")
        if self.vision_config is not None and self.image_embed_dim != self.vision_config.hidden_size:
            raise ValueError(
                f"image_embed_dim ({self.image_embed_dim}) must equal vision_config.hidden_size "
                f"({self.vision_config.hidden_size}): the vision tower's tokens feed the pooler"
            )
        if self.logit_scale_max is not None and not self.logit_scale_max > 0:
            raise ValueError(f"logit_scale_max must be > 0 (or None for no clamp), got {self.logit_scale_max}")
        if self.attn_pooler_queries < 0 or self.attn_pooler_queries == 1:
            raise ValueError(
                "attn_pooler_queries must be 0 (no pooler) or >= 2 (one contrastive query plus decoder queries), "
                f"got {self.attn_pooler_queries}"
            )
        if not self.attn_pooler_queries and self.image_embed_dim != t.hidden_size:
            raise ValueError(
                f"without a pooler (attn_pooler_queries=0) the image tokens feed the decoder directly: image_embed_dim "
                f"({self.image_embed_dim}) must equal text_config.hidden_size ({t.hidden_size})"
            )
        if self.vision_config is not None:
            self.vision_config.validate_architecture()
