"""Configurations of the DALL-E family: the discrete VAE (image tokenizer) and the text-to-image transformer."""

from math import log2

from transformers import PreTrainedConfig

from hf_mm.layers.validation import check_positive_int

ATTENTION_TYPES = ("full", "axial_row", "axial_col", "conv_like", "sparse")


def layer_scale_init(layer_number: int) -> float:
    """dalle-pytorch's LayerScale init for 1-based `layer_number` (CaiT): 0.1 up to 18, 1e-5 up to 24, then 1e-6."""
    if layer_number <= 18:
        return 0.1
    return 1e-5 if layer_number <= 24 else 1e-6


class DiscreteVAEConfig(PreTrainedConfig):
    r"""Discrete VAE of dalle-pytorch: `num_layers` stride-2 convs (plus resnet blocks) to logits over
    `num_tokens` codes, gumbel-softmax, codebook, conv-transpose decoder.

    `normalization` is `(means, stds)` per channel applied to input images, or None for no normalisation.

    Example:
    ```python
    >>> from hf_mm.models.dalle import DiscreteVAEConfig, DiscreteVAEModel
    >>> model = DiscreteVAEModel(DiscreteVAEConfig(image_size=32, num_layers=2, num_tokens=32, codebook_dim=16))
    ```
    """

    model_type = "hf_mm_dalle_vae"
    base_config_key = "vae_config"

    image_size: int = 256
    num_tokens: int = 512
    codebook_dim: int = 512
    num_layers: int = 3
    num_resnet_blocks: int = 0
    hidden_dim: int = 64
    channels: int = 3
    smooth_l1_loss: bool = False
    temperature: float = 0.9
    straight_through: bool = False
    reinmax: bool = False
    kl_div_loss_weight: float = 0.0
    normalization: list | None = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def __post_init__(self, **kwargs):
        if self.image_size < 1 or not log2(self.image_size).is_integer():
            raise ValueError(f"image_size must be a power of 2, got {self.image_size}")
        for name in ("num_layers", "num_tokens", "codebook_dim", "hidden_dim", "channels"):
            check_positive_int(getattr(self, name), name)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be a float > 0 (gumbel-softmax temperature), got {self.temperature!r}")
        if self.normalization is not None:
            means, stds = self.normalization
            if len(means) < self.channels or len(stds) < self.channels:
                raise ValueError(
                    f"normalization must give a mean and std for each of the {self.channels} channels, got {self.normalization}"
                )
            self.normalization = [list(means)[: self.channels], list(stds)[: self.channels]]
        super().__post_init__(**kwargs)

    @property
    def fmap_size(self) -> int:
        """Side of the code grid: `image_size / 2**num_layers`."""
        return self.image_size // 2**self.num_layers


class DalleConfig(PreTrainedConfig):
    r"""DALL-E transformer over `[bos, text (text_seq_len), image codes (fmap_size**2)]`.

    - Unified vocabulary: `[text tokens (num_text_tokens) | one pad token per text position (text_seq_len) |
      image codes (vae_config.num_tokens)]`; text id 0 means padding.
    - `attn_types` is cycled over the `num_hidden_layers` layers (dalle-pytorch semantics); each entry is one of
      `full`, `axial_row`, `axial_col`, `conv_like` (`conv_kernel_size`, `conv_dilation`) or `sparse`
      (block-sparse: local windows of `sparse_local_blocks`, global text blocks, `sparse_num_random_blocks`
      random blocks drawn from `sparse_seed`).
    - `reversible`: dalle-pytorch's RevNet coupling of the two branches (`y1 = x1 + attn(x2)`,
      `y2 = x2 + ff(y1)`, output `(y1 + y2) / 2`) for checkpoint compatibility; for the memory saving use
      gradient checkpointing (`model.gradient_checkpointing_enable()`), which recomputes activations instead.
    - `shared_attn_ids` / `shared_ff_ids` (length = layers, cycled as in the reference) share weights between layers.

    Example:
    ```python
    >>> from hf_mm.models.dalle import DalleConfig, DalleForImageGeneration
    >>> config = DalleConfig(vae_config=dict(image_size=32, num_layers=2, num_tokens=32, codebook_dim=16),
    ...                      num_text_tokens=50, text_seq_len=8, hidden_size=64, num_hidden_layers=2,
    ...                      num_attention_heads=2, head_dim=16, attn_types=["full", "axial_row"])
    >>> model = DalleForImageGeneration(config)
    ```
    """

    model_type = "hf_mm_dalle"
    sub_configs = {"vae_config": DiscreteVAEConfig}

    vae_config: dict | DiscreteVAEConfig | None = None
    num_text_tokens: int = 10000
    text_seq_len: int = 256
    hidden_size: int = 512
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    head_dim: int = 64
    ff_mult: int = 4
    attention_dropout: float = 0.0
    ff_dropout: float = 0.0
    attn_types: list[str] | tuple | str = ("full",)
    conv_kernel_size: int = 5
    conv_dilation: int = 1
    sparse_block_size: int = 16
    sparse_local_blocks: int = 4
    sparse_num_random_blocks: int | None = None
    sparse_seed: int = 0
    loss_img_weight: float = 7.0
    stable: bool = False
    sandwich_norm: bool = False
    shift_tokens: bool = True
    rotary_emb: bool = True
    reversible: bool = False
    shared_attn_ids: list[int] | None = None
    shared_ff_ids: list[int] | None = None
    share_input_output_emb: bool = False
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.vae_config is None:
            self.vae_config = DiscreteVAEConfig()
        elif isinstance(self.vae_config, dict):
            self.vae_config = DiscreteVAEConfig(**self.vae_config)
        if isinstance(self.attn_types, str):
            self.attn_types = [self.attn_types]
        self.attn_types = list(self.attn_types)
        for attn_type in self.attn_types:
            if attn_type not in ATTENTION_TYPES:
                raise ValueError(f"attn_types entries must be one of {ATTENTION_TYPES}, got {attn_type!r}")
        if not 1 <= len(self.attn_types) <= self.num_hidden_layers:
            raise ValueError(
                f"attn_types has {len(self.attn_types)} entries but the model has num_hidden_layers="
                f"{self.num_hidden_layers}; expected between 1 and {self.num_hidden_layers} entries (cycled over depth)"
            )
        if self.conv_kernel_size % 2 == 0 or self.conv_kernel_size < 1:
            raise ValueError(f"conv_kernel_size must be odd, got {self.conv_kernel_size}")
        if self.conv_dilation < 1:
            raise ValueError(f"conv_dilation must be >= 1, got {self.conv_dilation}")
        if self.shift_tokens and self.hidden_size % 4:
            raise ValueError(f"shift_tokens needs hidden_size divisible by 4, got {self.hidden_size}")
        for name in ("shared_attn_ids", "shared_ff_ids"):
            ids = getattr(self, name)
            if ids is not None:
                setattr(self, name, [int(i) for i in ids])
        self._check_shared_attention_types()
        super().__post_init__(**kwargs)

    def _check_shared_attention_types(self):
        owner_type = {}
        for layer, (attn_id, attn_type) in enumerate(zip(self.attn_layer_ids, self.layer_attn_types)):
            if owner_type.setdefault(attn_id, attn_type) != attn_type:
                raise ValueError(
                    f"shared_attn_ids shares attention id {attn_id} between layer types {owner_type[attn_id]!r} "
                    f"and {attn_type!r} (layer {layer}); shared layers must have the same attn_types entry"
                )

    @property
    def layer_attn_types(self) -> list[str]:
        """Attention type of each layer (`attn_types` cycled over depth)."""
        return [self.attn_types[i % len(self.attn_types)] for i in range(self.num_hidden_layers)]

    @property
    def attn_layer_ids(self) -> list[int]:
        ids = self.shared_attn_ids or list(range(self.num_hidden_layers))
        return [ids[i % len(ids)] for i in range(self.num_hidden_layers)]

    @property
    def ff_layer_ids(self) -> list[int]:
        ids = self.shared_ff_ids or list(range(self.num_hidden_layers))
        return [ids[i % len(ids)] for i in range(self.num_hidden_layers)]

    @property
    def image_fmap_size(self) -> int:
        return self.vae_config.fmap_size

    @property
    def image_seq_len(self) -> int:
        return self.image_fmap_size**2

    @property
    def text_len(self) -> int:
        """Text positions including `<bos>`."""
        return self.text_seq_len + 1

    @property
    def text_vocab_size(self) -> int:
        """Text tokens plus one padding token per text position."""
        return self.num_text_tokens + self.text_seq_len

    @property
    def vocab_size(self) -> int:
        return self.text_vocab_size + self.vae_config.num_tokens

    @property
    def max_seq_len(self) -> int:
        """Positions the transformer sees: `<bos>`, the text and all image codes but the last."""
        return self.text_seq_len + self.image_seq_len
