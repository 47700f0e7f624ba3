"""Vision transformer tower shared by the families, and its config.

It covers open_clip's `VisionTransformer` (conv patches without bias, class token, learned positions,
`ln_pre`, QuickGELU/GELU, layer scale) and vit-pytorch's `ViT` / `SimpleViT` (patch vectors in
`(p1 p2 c)` order through LayerNorm -> Linear -> LayerNorm, sin-cos 2D positions, final norm).
Pooling is left to the model that uses the tokens.
"""

import torch
from torch import nn
from transformers import PreTrainedConfig

from .blocks import TransformerBlock
from .norms import LayerNorm
from .validation import check_pixel_values, resolve_head_dim


class VisionTowerConfig(PreTrainedConfig):
    r"""Configuration of `VisionTransformer`.

    Example:
    ```python
    >>> VisionTowerConfig(image_size=224, patch_size=32, hidden_size=768, num_hidden_layers=12)
    ```
    """

    model_type = "hf_mm_vision_tower"
    base_config_key = "vision_config"

    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    head_dim: int | None = None
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    patch_embedding_type: str = "conv"  # "conv" (open_clip) or "linear" (vit-pytorch: LN -> Linear -> LN)
    patch_bias: bool = False
    class_token: bool = True
    position_embedding_type: str = "learned"  # "learned" or "sincos2d"
    pre_norm: bool = True  # open_clip's ln_pre
    final_norm: bool = False  # a LayerNorm over all output tokens (vit-pytorch's Transformer.norm)
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    layer_scale_init: float | None = None
    patch_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.head_dim = resolve_head_dim(self.hidden_size, self.num_attention_heads, self.head_dim, "vision_config.")
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Raise a ValueError naming the field when the tower cannot be built."""
        if self.image_size % self.patch_size:
            raise ValueError(
                f"vision_config.image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})"
            )
        if self.head_dim * self.num_attention_heads != self.hidden_size and self.patch_embedding_type == "conv":
            raise ValueError(
                f"vision_config.hidden_size ({self.hidden_size}) must equal num_attention_heads "
                f"({self.num_attention_heads}) x head_dim ({self.head_dim})"
            )
        if self.patch_embedding_type not in ("conv", "linear"):
            raise ValueError(f"vision_config.patch_embedding_type must be 'conv' or 'linear', got {self.patch_embedding_type!r}")
        if self.position_embedding_type not in ("learned", "sincos2d"):
            raise ValueError(
                f"vision_config.position_embedding_type must be 'learned' or 'sincos2d', got {self.position_embedding_type!r}"
            )
        if self.position_embedding_type == "sincos2d" and self.class_token:
            raise ValueError(
                "vision_config.position_embedding_type='sincos2d' (vit-pytorch SimpleViT) has positions for the patches "
                "only: set class_token=False"
            )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2 + int(self.class_token)


def sincos_2d_position_embedding(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """vit-pytorch's fixed 2D embedding: `(grid * grid, dim)` = [sin x | cos x | sin y | cos y]."""
    if dim % 4:
        raise ValueError(f"sin-cos 2D positions need hidden_size divisible by 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4) / (dim // 4 - 1))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1).float()


class PatchEmbedding(nn.Module):
    """`(b, c, H, W) -> (b, grid * grid, hidden)`, row-major over the patch grid."""

    def __init__(self, config: VisionTowerConfig):
        super().__init__()
        self.patch_size, self.type = config.patch_size, config.patch_embedding_type
        p, c, d = config.patch_size, config.num_channels, config.hidden_size
        if self.type == "conv":
            self.proj = nn.Conv2d(c, d, kernel_size=p, stride=p, bias=config.patch_bias)
        else:
            self.norm_in = LayerNorm(p * p * c, eps=config.layer_norm_eps)
            self.proj = nn.Linear(p * p * c, d, bias=config.patch_bias)
            self.norm_out = LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.type == "conv":
            return self.proj(pixel_values).flatten(2).transpose(1, 2)
        b, c, h, w = pixel_values.shape
        p = self.patch_size
        patches = pixel_values.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # b gh gw p1 p2 c
        return self.norm_out(self.proj(self.norm_in(patches.reshape(b, (h // p) * (w // p), p * p * c))))


class PatchDropout(nn.Module):
    """Keeps a random subset of patch tokens in training (FLIP); the class token always stays."""

    def __init__(self, prob: float, keep_first: bool):
        super().__init__()
        self.prob, self.keep_first = prob, keep_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return x
        first, rest = (x[:, :1], x[:, 1:]) if self.keep_first else (None, x)
        b, n, _ = rest.shape
        keep = max(1, int(n * (1 - self.prob)))
        idx = torch.randn(b, n, device=x.device).topk(keep, dim=-1).indices
        rest = rest[torch.arange(b, device=x.device)[:, None], idx]
        return rest if first is None else torch.cat((first, rest), dim=1)


class VisionTransformer(nn.Module):
    """`pixel_values (b, c, H, W) -> tokens (b, [1 +] grid * grid, hidden)`."""

    def __init__(self, config: VisionTowerConfig):
        super().__init__()
        config.validate_architecture()
        self.config = config
        d = config.hidden_size
        self.patch_embedding = PatchEmbedding(config)
        self.class_embedding = nn.Parameter(torch.zeros(d)) if config.class_token else None
        if config.position_embedding_type == "learned":
            self.position_embedding = nn.Parameter(torch.zeros(config.num_tokens, d))
        else:
            self.register_buffer(
                "position_embedding", sincos_2d_position_embedding(config.grid_size, d), persistent=False
            )
        self.patch_dropout = PatchDropout(config.patch_dropout, keep_first=config.class_token)
        self.pre_norm = LayerNorm(d, eps=config.layer_norm_eps) if config.pre_norm else None
        self.layers = nn.ModuleList(
            TransformerBlock(
                config, d, config.num_attention_heads, config.head_dim, config.intermediate_size,
                norm_eps=config.layer_norm_eps, qkv_bias=config.qkv_bias, out_bias=config.out_bias,
                mlp_bias=config.mlp_bias, mlp_act=config.hidden_act, layer_scale_init=config.layer_scale_init,
            )
            for _ in range(config.num_hidden_layers)
        )
        self.final_norm = LayerNorm(d, eps=config.layer_norm_eps) if config.final_norm else None

    def reset_buffers(self) -> None:
        """Recompute the sin-cos position table (not saved in checkpoints; called by `_init_weights`)."""
        if self.config.position_embedding_type != "learned":
            self.position_embedding.copy_(sincos_2d_position_embedding(self.config.grid_size, self.config.hidden_size))

    def check_pixel_values(self, pixel_values: torch.Tensor, name: str = "pixel_values") -> None:
        """`(batch, num_channels, image_size, image_size)`, finite floats (see `validation.check_pixel_values`)."""
        check_pixel_values(pixel_values, name, num_channels=self.config.num_channels, image_size=self.config.image_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.check_pixel_values(pixel_values)
        dtype = self.patch_embedding.proj.weight.dtype
        x = self.patch_embedding(pixel_values.to(dtype))
        if self.class_embedding is not None:
            x = torch.cat((self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x), dim=1)
        x = x + self.position_embedding.to(x.dtype)
        x = self.patch_dropout(x)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x) if self.final_norm is not None else x
