"""Perceiver resampler: a fixed number of learned latents per medium, whatever the number of vision tokens.

Einstein notation: `b` batch, `t` media per sample, `f` video frames, `n` vision tokens, `l` latents,
`d` features.
"""

import torch
from torch import nn

from hf_mm.layers import MLP, Attention, LayerNorm


class PerceiverLayer(nn.Module):
    """Latents attend to `[media | latents]` (both pre-normed), then a pre-norm GELU feed-forward.

    `forward(media (b*t, n, d), latents (b*t, l, d)) -> latents (b*t, l, d)`.
    """

    def __init__(self, config):
        super().__init__()
        d, eps = config.hidden_size, config.layer_norm_eps
        self.norm_media = LayerNorm(d, eps=eps)
        self.norm_latents = LayerNorm(d, eps=eps)
        self.attn = Attention(
            config, d, config.num_attention_heads, config.head_dim,
            is_cross_attention=True, qkv_bias=False, out_bias=False,
        )
        self.norm_ff = LayerNorm(d, eps=eps)
        self.mlp = MLP(d, config.intermediate_size, act=config.hidden_act, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        normed = self.norm_latents(latents)
        # Flamingo (unlike Perceiver) lets the latents attend to themselves as well as to the media
        context = torch.cat((self.norm_media(media), normed), dim=1)
        latents = latents + self.attn(normed, context=context)
        return latents + self.mlp(self.norm_ff(latents))


class PerceiverResampler(nn.Module):
    """Vision tokens of each medium -> `num_latents` latents.

    - images: `forward(features (b, t, n, d)) -> (b, t, l, d)`
    - videos: `forward(features (b, t, f, n, d)) -> (b, t, l, d)`; a learned time embedding per frame is added,
      then the frames' tokens are concatenated (`b t f n d -> b t (f n) d`).
    A learned media-position embedding (`media_position_embedding[:t]`) is added to every token of medium t
    (none when `max_num_media` is 0: OpenFlamingo).
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.latents = nn.Parameter(torch.randn(config.num_latents, d))
        self.media_position_embedding = nn.Parameter(torch.randn(config.max_num_media, d)) if config.max_num_media else None
        self.frame_position_embedding = (
            nn.Parameter(torch.randn(config.max_video_frames, d)) if config.max_video_frames else None
        )
        self.layers = nn.ModuleList(PerceiverLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = LayerNorm(d, eps=config.layer_norm_eps)

    def check_media_counts(self, num_media: int, num_frames: int | None) -> None:
        if self.config.max_num_media and num_media > self.config.max_num_media:
            raise ValueError(
                f"got {num_media} media per sample, but perceiver_config.max_num_media is {self.config.max_num_media}"
            )
        if num_frames is not None and num_frames > self.config.max_video_frames:
            raise ValueError(
                f"videos have {num_frames} frames, but perceiver_config.max_video_frames is "
                f"{self.config.max_video_frames}"
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 5:  # video: add the frame time embedding, then flatten frames into tokens
            b, t, f, n, d = features.shape
            self.check_media_counts(t, f)
            features = features + self.frame_position_embedding[:f, None].to(features.dtype)
            features = features.reshape(b, t, f * n, d)
        elif features.ndim != 4:
            raise ValueError(
                "image_embeds must have shape (batch, num_media, tokens, hidden) or, for videos, "
                f"(batch, num_media, frames, tokens, hidden); got {tuple(features.shape)}"
            )
        b, t, n, d = features.shape
        self.check_media_counts(t, None)
        if self.media_position_embedding is not None:
            features = features + self.media_position_embedding[:t, None].to(features.dtype)
        media = features.reshape(b * t, n, d)
        latents = self.latents.to(media.dtype).expand(b * t, -1, -1)
        for layer in self.layers:
            latents = layer(media, latents)
        return self.norm(latents).reshape(b, t, -1, d)
