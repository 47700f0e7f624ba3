"""Configuration of hf_mm's x-clip CLIP (lucidrains' `x-clip`), not transformers' `xclip` video model."""

import math

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

VISUAL_SSL_TYPES = ("simsiam", "simclr")


class XClipTextConfig(PreTrainedConfig):
    r"""Built-in x-clip text tower: token + absolute (or partial rotary) positions, a learned CLS token
    prepended unless causal, a pre-norm transformer with bias-free linears and norms.

    Example:
    ```python
    >>> XClipTextConfig(vocab_size=49408, hidden_size=512, num_hidden_layers=6, max_position_embeddings=256)
    ```
    """

    model_type = "hf_mm_x_clip_text"
    base_config_key = "text_config"

    vocab_size: int = 10000
    hidden_size: int = 512
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    head_dim: int = 64
    mlp_ratio: float = 4.0
    max_position_embeddings: int = 256
    position_embedding_type: str = "absolute"  # "absolute" or "rotary" (partial, also rotating values)
    rotary_dim: int | None = None  # default min(head_dim, 32), as x-clip
    causal: bool = False
    pad_token_id: int | None = 0
    eos_token_id: int | None = None
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.rotary_dim is None:
            self.rotary_dim = min(self.head_dim, 32)
        if self.position_embedding_type not in ("absolute", "rotary"):
            raise ValueError(
                f"text_config.position_embedding_type must be 'absolute' or 'rotary', got {self.position_embedding_type!r}"
            )
        if self.causal and self.eos_token_id is None:
            raise ValueError("text_config.eos_token_id is required when text_config.causal=True (eos pooling)")
        super().__post_init__(**kwargs)

    @property
    def intermediate_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


class XClipVisionConfig(PreTrainedConfig):
    r"""Built-in x-clip vision tower: `(p1 p2 c)` patch vectors -> Linear, learned positions, patch dropout
    (training only), transformer, and a "CLS" made by `Linear(mean(tokens))` prepended after the stack.

    Example:
    ```python
    >>> XClipVisionConfig(image_size=256, patch_size=32, hidden_size=512, patch_dropout=0.5)
    ```
    """

    model_type = "hf_mm_x_clip_vision"
    base_config_key = "vision_config"

    image_size: int = 256
    patch_size: int = 32
    num_channels: int = 3
    hidden_size: int = 512
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    head_dim: int = 64
    mlp_ratio: float = 4.0
    patch_dropout: float = 0.5
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"vision_config.image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})"
            )
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ValueError(f"vision_config.patch_dropout must be in [0, 1), got {self.patch_dropout}")
        super().__post_init__(**kwargs)

    @property
    def intermediate_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


AutoConfig.register(XClipTextConfig.model_type, XClipTextConfig, exist_ok=True)
AutoConfig.register(XClipVisionConfig.model_type, XClipVisionConfig, exist_ok=True)


class XClipConfig(PreTrainedConfig):
    r"""x-clip CLIP with all of its research options.

    `text_config` / `vision_config` are the built-in towers by default; any transformers encoder config
    (e.g. a `CLIPVisionConfig`, `ViTConfig`, `CLIPTextConfig`, given as instance or dict with its
    `model_type`) builds that model instead, and its `last_hidden_state (b, n, d)` is used.

    Example:
    ```python
    >>> from hf_mm.models.x_clip import XClipConfig, XClipModel
    >>> config = XClipConfig(text_config={"vocab_size": 100}, projection_dim=32, use_all_token_embeds=True)
    >>> XClipModel(config)
    ```
    """

    model_type = "hf_mm_x_clip"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type=XClipTextConfig.model_type),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type=XClipVisionConfig.model_type),
    }
    keys_to_ignore_at_inference = ["text_embeds", "image_embeds", "text_model_output", "vision_model_output"]

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = 1.0  # log of the initial scale (x-clip's `temperature`)
    # the scale exp(temperature) is clamped to this (open_clip's 100) so fp16/bf16 logits stay finite; x-clip
    # itself never clamps, so None reproduces it exactly for checkpoints whose scale grew past 100
    logit_scale_max: float | None = 100.0
    text_has_cls_token: bool = True
    visual_has_cls_token: bool = True
    text_encode_without_mask: bool = False
    use_all_token_embeds: bool = False
    downsample_image_embeds: bool = False
    decoupled_contrastive_learning: bool = False
    extra_latent_projection: bool = False
    use_mlm: bool = False
    text_ssl_loss_weight: float = 0.05
    mlm_mask_prob: float = 0.15
    mlm_replace_prob: float = 0.9
    mlm_random_token_prob: float = 0.0
    mlm_mask_token_id: int = 2
    # x-clip's MLM pad id (label fill, ignore_index, never masked), its own `mlm_pad_token_id`; None: text pad id
    mlm_pad_token_id: int | None = None
    mlm_mask_ignore_token_ids: list[int] | None = None
    use_visual_ssl: bool = False
    visual_ssl_type: str = "simsiam"
    visual_ssl_hidden_layer: int = -1
    visual_ssl_projection_size: int | None = None  # SimSiam 256, SimCLR 128 (x-clip's defaults)
    visual_ssl_projection_hidden_size: int = 4096
    visual_ssl_augment: str = "default"  # "default" (torch-only SimCLR augmentations) or "none"
    simclr_temperature: float = 0.1
    simclr_augment_both: bool = True
    image_ssl_loss_weight: float = 0.05
    multiview_loss_weight: float = 0.1
    sim_reg_loss_weight: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.mlm_mask_ignore_token_ids = list(self.mlm_mask_ignore_token_ids or [])
        if self.visual_ssl_type not in VISUAL_SSL_TYPES:
            raise ValueError(f"visual_ssl_type must be one of {VISUAL_SSL_TYPES}, got {self.visual_ssl_type!r}")
        if self.visual_ssl_projection_size is None:
            self.visual_ssl_projection_size = 256 if self.visual_ssl_type == "simsiam" else 128
        if self.visual_ssl_augment not in ("default", "none"):
            raise ValueError(f"visual_ssl_augment must be 'default' or 'none', got {self.visual_ssl_augment!r}")
        if self.visual_ssl_hidden_layer != -1:
            raise ValueError(
                f"visual_ssl_hidden_layer must be -1 (the vision tower's output tokens), got {self.visual_ssl_hidden_layer}"
            )
        if self.downsample_image_embeds and not self.use_all_token_embeds:
            raise ValueError("downsample_image_embeds=True requires use_all_token_embeds=True (it acts on the token grid)")
        if not (self.use_all_token_embeds or self.text_has_cls_token or self.visual_has_cls_token):
            raise ValueError("text_has_cls_token or visual_has_cls_token must be True unless use_all_token_embeds=True")
        if self.sim_reg_loss_weight > 0 and self.use_all_token_embeds:
            raise ValueError("sim_reg_loss_weight > 0 needs pooled embeddings: set use_all_token_embeds=False")
        if self.use_mlm and not isinstance(self.text_config, XClipTextConfig):
            raise ValueError("use_mlm=True needs the built-in text tower (text_config of type XClipTextConfig)")
        vocab_size = getattr(self.text_config, "vocab_size", None)
        if self.mlm_pad_token_id is not None and vocab_size is not None and not 0 <= self.mlm_pad_token_id < vocab_size:
            raise ValueError(f"mlm_pad_token_id ({self.mlm_pad_token_id}) must lie in [0, text_config.vocab_size="
                             f"{vocab_size})")
        if self.use_visual_ssl and not isinstance(self.vision_config, XClipVisionConfig):
            raise ValueError("use_visual_ssl=True needs the built-in vision tower (vision_config of type XClipVisionConfig)")
        if self.logit_scale_max is not None and not self.logit_scale_max > 0:
            raise ValueError(f"logit_scale_max must be > 0 (or None for no clamp), got {self.logit_scale_max}")
        for name in ("text_ssl_loss_weight", "image_ssl_loss_weight", "multiview_loss_weight", "sim_reg_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def mlm_pad_id(self) -> int | None:
        """The MLM pad id in use: `mlm_pad_token_id`, or the text pad id when it is None."""
        return getattr(self.text_config, "pad_token_id", None) if self.mlm_pad_token_id is None else self.mlm_pad_token_id

    @property
    def logit_scale_init(self) -> float:
        return math.exp(self.logit_scale_init_value)
