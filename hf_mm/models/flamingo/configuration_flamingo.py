"""Flamingo configuration: vision tower, perceiver resampler and PaLM language model sub-configs."""

from transformers import PreTrainedConfig

from hf_mm.layers import VisionTowerConfig


class FlamingoTextConfig(PreTrainedConfig):
    r"""The PaLM language model of Flamingo: parallel attention + SwiGLU blocks, multi-query attention, rotary,
    bias-free LayerNorm, tied input/output embeddings.

    Example:
    ```python
    >>> FlamingoTextConfig(vocab_size=100, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, head_dim=16)
    ```
    """

    model_type = "hf_mm_flamingo_text"
    base_config_key = "text_config"

    vocab_size: int = 32000
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 1  # multi-query attention, as PaLM
    head_dim: int = 64
    intermediate_size: int | None = None  # SwiGLU hidden width; default 4 * hidden_size (lucidrains' ff_mult=4)
    hidden_act: str = "silu"
    layer_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    def __post_init__(self, **kwargs):
        self.intermediate_size = self.intermediate_size or 4 * self.hidden_size
        super().__post_init__(**kwargs)


class FlamingoPerceiverConfig(PreTrainedConfig):
    r"""The perceiver resampler: `num_latents` learned queries per medium, `num_hidden_layers` deep.

    `max_num_media` bounds the media-position embedding (lucidrains: 4), `max_video_frames` the video-frame
    time embedding (0 = no video support).

    Example:
    ```python
    >>> FlamingoPerceiverConfig(num_latents=64, num_hidden_layers=2, max_video_frames=8)
    ```
    """

    model_type = "hf_mm_flamingo_perceiver"
    base_config_key = "perceiver_config"

    hidden_size: int = 512
    num_latents: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    head_dim: int = 64
    intermediate_size: int | None = None  # default 4 * hidden_size
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    max_num_media: int = 4
    max_video_frames: int = 0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.intermediate_size = self.intermediate_size or 4 * self.hidden_size
        super().__post_init__(**kwargs)


class FlamingoConfig(PreTrainedConfig):
    r"""Flamingo (Alayrac et al. 2022) as in lucidrains' `FlamingoPaLM`.

    Vision tower -> perceiver resampler (latents per medium) -> gated cross-attention blocks inserted after
    decoder layers `0, k, 2k, ...` (`k = cross_attn_every`) of the PaLM language model. Text at a position
    attends to the latents of the most recent media token (`only_attend_immediate_media=True`) or of all media
    so far; text before the first media token attends to nothing.

    Example:
    ```python
    >>> config = FlamingoConfig(
    ...     vision_config=dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=1),
    ...     perceiver_config=dict(num_latents=8, num_hidden_layers=1, num_attention_heads=4, head_dim=16),
    ...     text_config=dict(vocab_size=100, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, head_dim=16),
    ...     cross_attn_every=2,
    ... )
    ```
    """

    model_type = "hf_mm_flamingo"
    sub_configs_defaults = {
        "vision_config": VisionTowerConfig,
        "perceiver_config": FlamingoPerceiverConfig,
        "text_config": FlamingoTextConfig,
    }

    vision_config: dict | VisionTowerConfig | None = None
    perceiver_config: dict | FlamingoPerceiverConfig | None = None
    text_config: dict | FlamingoTextConfig | None = None
    media_token_id: int = 3
    cross_attn_every: int = 3
    cross_attn_intermediate_size: int | None = None  # gated feed-forward width; default 4 * hidden_size
    only_attend_immediate_media: bool = True
    freeze_pretrained: bool = False  # freeze vision tower + language model at init (paper's training recipe)
    tie_word_embeddings: bool = True
    use_cache: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)  # turns dict / None sub-configs into instances
        text = self.text_config
        self.perceiver_config.hidden_size = text.hidden_size
        self.cross_attn_intermediate_size = self.cross_attn_intermediate_size or 4 * text.hidden_size
        self.tie_word_embeddings = text.tie_word_embeddings

    def validate_architecture(self):
        """Raise a ValueError naming the field when the model cannot be built."""
        text, vision = self.text_config, self.vision_config
        if vision.hidden_size != text.hidden_size:
            raise ValueError(
                f"vision_config.hidden_size ({vision.hidden_size}) must equal text_config.hidden_size "
                f"({text.hidden_size}): Flamingo resamples vision tokens without a projection"
            )
        if self.cross_attn_every < 1:
            raise ValueError(f"cross_attn_every must be >= 1, got {self.cross_attn_every}")
        if not 0 <= self.media_token_id < text.vocab_size:
            raise ValueError(f"media_token_id must be in [0, {text.vocab_size}), got {self.media_token_id}")
        vision.validate_architecture()

    def cross_attention_layer_ids(self) -> list[int]:
        """Decoder layers followed by a gated cross-attention block: `0, k, 2k, ...`."""
        return list(range(0, self.text_config.num_hidden_layers, self.cross_attn_every))
