"""Flamingo configuration: vision tower, perceiver resampler and language model (built-in PaLM or any causal LM)."""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

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

    `max_num_media` bounds the media-position embedding (lucidrains: 4; 0 = no such embedding and any number of
    media, as OpenFlamingo), `max_video_frames` the video-frame time embedding (0 = no video support).

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


# OpenFlamingo's hard-coded choices (open_flamingo 2.0.1 `Flamingo` / `PerceiverResampler` /
# `GatedCrossAttentionBlock`), the defaults whenever the language model is not the built-in PaLM.
OPEN_FLAMINGO_PERCEIVER = dict(num_latents=64, num_hidden_layers=6, num_attention_heads=8, head_dim=64, max_num_media=0)
OPEN_FLAMINGO_CROSS_ATTENTION = dict(cross_attn_num_heads=8, cross_attn_head_dim=64, cross_attn_layer_norm_eps=1e-5)
# open_clip ViT-L-14 with OpenAI weights (QuickGELU), as every released OpenFlamingo checkpoint uses; `final_norm`
# False: open_clip < 2.23, which OpenFlamingo was trained with, returned the patch tokens before `ln_post`.
OPEN_CLIP_VIT_L_14 = dict(
    image_size=224, patch_size=14, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
    intermediate_size=4096, hidden_act="quick_gelu", final_norm=False,
)


def _is_builtin_text_config(text_config) -> bool:
    if isinstance(text_config, PreTrainedConfig):
        return isinstance(text_config, FlamingoTextConfig)
    return text_config is None or text_config.get("model_type", FlamingoTextConfig.model_type) == FlamingoTextConfig.model_type


def _vision_width(vision_config) -> int:
    """`hidden_size` of a vision config, dict or None (`VisionTowerConfig`'s default when unset)."""
    if isinstance(vision_config, PreTrainedConfig):
        return vision_config.hidden_size
    return (vision_config or {}).get("hidden_size", VisionTowerConfig.hidden_size)


class FlamingoConfig(PreTrainedConfig):
    r"""Flamingo (Alayrac et al. 2022): vision tower -> perceiver resampler (latents per medium) -> tanh-gated
    cross-attention blocks interleaved with the decoder layers of a language model.

    The language model is either the built-in PaLM decoder (`text_config` a `FlamingoTextConfig` or a dict
    without `model_type`: lucidrains' `FlamingoPaLM`) or **any transformers causal LM** (`text_config` of its own
    `model_type`, e.g. a `LlamaConfig`; built with the Auto classes, its code is not copied: OpenFlamingo).
    Unset fields (also keys missing from a sub-config dict) default to lucidrains' choices for the built-in decoder
    and to OpenFlamingo's otherwise:

    | field | built-in PaLM (lucidrains) | any other LM (OpenFlamingo) |
    |---|---|---|
    | `cross_attn_placement` | `"after"` layers `0, k, 2k, ...` | `"before"` layers `k-1, 2k-1, ...` |
    | `cross_attn_num_heads` / `_head_dim` / `_layer_norm_eps` | the text config's | 8 / 64 / 1e-5 |
    | `perceiver_config` | `FlamingoPerceiverConfig()` | 64 latents, 6 layers, 8 x 64 heads, no media embedding |
    | `vision_config` | `VisionTowerConfig()` | open_clip ViT-L/14 (QuickGELU, patch tokens not layer-normed) |
    | `text_config.hidden_size` | `vision_config.hidden_size` (they must be equal) | the LM config's own |
    | `vision_feature_select_strategy` | `"full"` (class token kept) | `"default"` (patch tokens only) |

    `k = cross_attn_every` (alias `cross_attn_every_n_layers`). Text at a position attends to the latents of the
    most recent media token (`only_attend_immediate_media=True`) or of all media so far; text before the first
    media token attends to nothing. `media_token_id` marks `<image>`, `eoc_token_id` `<|endofchunk|>`.

    Example:
    ```python
    >>> config = FlamingoConfig(  # built-in PaLM decoder
    ...     vision_config=dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=1, num_attention_heads=4),
    ...     perceiver_config=dict(num_latents=8, num_hidden_layers=1, num_attention_heads=4, head_dim=16),
    ...     text_config=dict(vocab_size=100, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, head_dim=16),
    ...     cross_attn_every=2,
    ... )
    >>> from transformers import LlamaConfig
    >>> config = FlamingoConfig(  # OpenFlamingo around a LLaMA
    ...     text_config=LlamaConfig(vocab_size=32003, hidden_size=4096, num_hidden_layers=32),
    ...     cross_attn_every_n_layers=4, media_token_id=32001, eoc_token_id=32000,
    ... )
    ```
    """

    model_type = "hf_mm_flamingo"
    attribute_map = {"cross_attn_every_n_layers": "cross_attn_every"}
    sub_configs_defaults = {
        "vision_config": VisionTowerConfig,
        "perceiver_config": FlamingoPerceiverConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type=FlamingoTextConfig.model_type),
    }

    vision_config: dict | VisionTowerConfig | None = None
    perceiver_config: dict | FlamingoPerceiverConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    media_token_id: int = 3
    eoc_token_id: int | None = None  # `<|endofchunk|>`: ends each image-text chunk of a few-shot prompt
    cross_attn_every: int = 3
    cross_attn_placement: str | None = None  # "after" / "before" the decoder layers listed by cross_attention_layer_ids
    cross_attn_num_heads: int | None = None
    cross_attn_head_dim: int | None = None
    cross_attn_intermediate_size: int | None = None  # gated feed-forward width; default 4 * hidden_size
    cross_attn_layer_norm_eps: float | None = None
    only_attend_immediate_media: bool = True
    vision_feature_select_strategy: str | None = None  # "full": all vision tokens; "default": drop the class token
    decoder_layers_attr_name: str | None = None  # where the LM keeps its layer list (found when None)
    freeze_pretrained: bool = False  # freeze vision tower + language model at init (paper's training recipe)
    # training with labels (built-in decoder): positions no loss target reads skip the per-token layers; logits 0
    skip_unused_positions: bool = True
    tie_word_embeddings: bool = True
    use_cache: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        builtin = _is_builtin_text_config(self.text_config)
        text = self.text_config
        if builtin and not isinstance(text, PreTrainedConfig) and "hidden_size" not in (text or {}):
            # the built-in decoder runs at the vision width: an unset text width takes it (FlamingoTextConfig's own
            # 512 cannot be built with the default 768-wide VisionTowerConfig)
            self.text_config = {**(text or {}), "hidden_size": _vision_width(self.vision_config)}
        if not builtin:  # unset perceiver / vision fields (None, or missing from a dict) take OpenFlamingo's values
            if self.perceiver_config is None or isinstance(self.perceiver_config, dict):
                self.perceiver_config = {**OPEN_FLAMINGO_PERCEIVER, **(self.perceiver_config or {})}
            if self.vision_config is None or isinstance(self.vision_config, dict):
                self.vision_config = {**OPEN_CLIP_VIT_L_14, **(self.vision_config or {})}
        super().__post_init__(**kwargs)  # turns dict / None sub-configs into instances
        text = self.text_config
        defaults = (
            dict(cross_attn_placement="after", vision_feature_select_strategy="full",
                 cross_attn_num_heads=text.num_attention_heads, cross_attn_head_dim=text.head_dim,
                 cross_attn_layer_norm_eps=text.layer_norm_eps)
            if builtin else
            dict(cross_attn_placement="before", vision_feature_select_strategy="default", **OPEN_FLAMINGO_CROSS_ATTENTION)
        )
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        # the perceiver works at the vision width; cross-attention projects its K/V from there
        self.perceiver_config.hidden_size = self.vision_config.hidden_size
        self.cross_attn_intermediate_size = self.cross_attn_intermediate_size or 4 * text.hidden_size
        self.tie_word_embeddings = bool(getattr(text, "tie_word_embeddings", False))

    @property
    def uses_builtin_text_model(self) -> bool:
        """True for the built-in PaLM decoder, False for a transformers causal LM built through the Auto classes."""
        return isinstance(self.text_config, FlamingoTextConfig)

    def validate_architecture(self):
        """Raise a ValueError naming the field when the model cannot be built."""
        text, vision = self.text_config, self.vision_config
        if self.uses_builtin_text_model and vision.hidden_size != text.hidden_size:
            raise ValueError(
                f"vision_config.hidden_size ({vision.hidden_size}) must equal text_config.hidden_size "
                f"({text.hidden_size}): Flamingo resamples vision tokens without a projection"
            )
        if self.cross_attn_every < 1:
            raise ValueError(f"cross_attn_every must be >= 1, got {self.cross_attn_every}")
        depth = getattr(text, "num_hidden_layers", None)
        if depth is not None and self.cross_attn_every > depth:
            raise ValueError(
                f"cross_attn_every ({self.cross_attn_every}) must be <= text_config.num_hidden_layers ({depth}): "
                "a larger interval leaves the language model with at most one cross-attention block"
            )
        if self.uses_builtin_text_model and (
            text.num_attention_heads < 1 or text.num_attention_heads % text.num_key_value_heads
        ):
            raise ValueError(
                f"text_config.num_attention_heads ({text.num_attention_heads}) must be a positive multiple of "
                f"num_key_value_heads ({text.num_key_value_heads})"
            )
        if self.cross_attn_placement not in ("after", "before"):
            raise ValueError(f"cross_attn_placement must be 'after' or 'before', got {self.cross_attn_placement!r}")
        if self.vision_feature_select_strategy not in ("full", "default"):
            raise ValueError(
                "vision_feature_select_strategy must be 'full' (every vision token) or 'default' (drop the class "
                f"token), got {self.vision_feature_select_strategy!r}"
            )
        if self.vision_feature_select_strategy == "default" and not vision.class_token:
            raise ValueError("vision_feature_select_strategy='default' drops the class token, but "
                             "vision_config.class_token is False")
        for name in ("media_token_id", "eoc_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < text.vocab_size:
                raise ValueError(f"{name} must be in [0, {text.vocab_size}) (text_config.vocab_size), got {value}")
        vision.validate_architecture()

    def generation_suppressed_token_ids(self) -> list[int]:
        """Token ids `generate()` never emits unless told otherwise (the default `generation_config.suppress_tokens`):
        the media token, which would attend to no image (a generated `<image>` gets none in hf_mm; OpenFlamingo points
        it at the first image), and the text pad token, which training never predicts, unless it also ends a
        sequence (`eos_token_id` / `eoc_token_id`)."""
        eos, pad = self.text_config.eos_token_id, self.text_config.pad_token_id
        keep_pad = {None, self.media_token_id, self.eoc_token_id, *(eos if isinstance(eos, list) else [eos])}
        return [self.media_token_id] + ([] if pad in keep_pad else [pad])

    def cross_attention_layer_ids(self) -> list[int]:
        """Decoder layers with a gated cross-attention block: after `0, k, 2k, ...` (lucidrains) or before
        `k-1, 2k-1, ...` (OpenFlamingo: `(i + 1) % k == 0`)."""
        n, k = self.text_config.num_hidden_layers, self.cross_attn_every
        if self.cross_attn_placement == "after":
            return list(range(0, n, k))
        return [i for i in range(n) if (i + 1) % k == 0]
