"""dalle-pytorch's discrete VAE as a transformers model: images <-> grids of codebook indices.

Einstein notation: `b` batch, `c` image channels, `H W` image size, `t` codes (`num_tokens`), `h w` code grid
(`fmap_size`), `d` codebook features.
"""

from dataclasses import dataclass
from math import isqrt

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ModelOutput
from transformers.utils.generic import can_return_tuple

from hf_mm.layers.validation import check_pixel_values, check_token_ids, describe
from hf_mm.modeling_utils import HfMmPreTrainedModel

from .configuration_dalle import DiscreteVAEConfig


class ResBlock(nn.Module):
    """`x + conv1x1(relu(conv3x3(relu(conv3x3(x)))))`, `(b, c, h, w) -> (b, c, h, w)`."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + x


@dataclass
class DiscreteVAEOutput(ModelOutput):
    """
    loss: reconstruction loss (MSE or smooth L1) + `kl_div_loss_weight` * KL to the uniform code distribution.
    reconstructions: `(b, c, H, W)` decoded gumbel-softmax sample (normalised image space).
    logits: `(b, t, h, w)` encoder logits over the codebook.
    """

    loss: torch.FloatTensor | None = None
    reconstructions: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class DiscreteVAEPreTrainedModel(HfMmPreTrainedModel):
    config: DiscreteVAEConfig
    base_model_prefix = "vae"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["ResBlock"]
    _supports_sdpa = True  # no attention; lets a parent DALL-E propagate its attention setting


class DiscreteVAEModel(DiscreteVAEPreTrainedModel):
    """Conv encoder to code logits, gumbel-softmax over the codebook, conv-transpose decoder."""

    def __init__(self, config: DiscreteVAEConfig):
        super().__init__(config)
        hidden, layers, blocks = config.hidden_dim, config.num_layers, config.num_resnet_blocks
        self.codebook = nn.Embedding(config.num_tokens, config.codebook_dim)
        encoder = [nn.Sequential(nn.Conv2d(c_in, hidden, 4, stride=2, padding=1), nn.ReLU())
                   for c_in in [config.channels] + [hidden] * (layers - 1)]
        decoder_in = hidden if blocks > 0 else config.codebook_dim
        decoder = [nn.Sequential(nn.ConvTranspose2d(c_in, hidden, 4, stride=2, padding=1), nn.ReLU())
                   for c_in in [decoder_in] + [hidden] * (layers - 1)]
        encoder += [ResBlock(hidden) for _ in range(blocks)]
        decoder = [ResBlock(hidden) for _ in range(blocks)] + decoder
        if blocks > 0:
            decoder.insert(0, nn.Conv2d(config.codebook_dim, hidden, 1))
        encoder.append(nn.Conv2d(hidden, config.num_tokens, 1))
        decoder.append(nn.Conv2d(hidden, config.channels, 1))
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)
        self.post_init()

    def check_pixel_values(self, pixel_values: torch.Tensor, name: str = "pixel_values") -> None:
        """`(batch, channels, image_size, image_size)` finite floats (see `validation.check_pixel_values`)."""
        check_pixel_values(pixel_values, name, num_channels=self.config.channels, image_size=self.config.image_size)

    def normalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(b, c, H, W)`: `(x - mean) / std` per channel (in the model's dtype), or only cast when `normalization`
        is None."""
        pixel_values = pixel_values.to(self.codebook.weight.dtype)
        if self.config.normalization is None:
            return pixel_values
        means, stds = (torch.as_tensor(t).to(pixel_values)[None, :, None, None] for t in self.config.normalization)
        return (pixel_values - means) / stds

    def get_code_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(b, c, H, W) -> (b, t, h, w)` encoder logits."""
        self.check_pixel_values(pixel_values)
        return self.encoder(self.normalize(pixel_values))

    @torch.no_grad()
    def get_codebook_indices(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(b, c, H, W) -> (b, h*w)` argmax code per grid cell (raster order)."""
        return self.get_code_logits(pixel_values).argmax(dim=1).flatten(1)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """`(b, h*w)` code indices -> `(b, c, H, W)` images (normalised space)."""
        side = isqrt(indices.shape[-1]) if torch.is_tensor(indices) and indices.ndim == 2 else 0
        if side * side != indices.shape[-1] or side != self.config.fmap_size:
            raise ValueError(
                f"indices must have shape (batch, {self.config.fmap_size ** 2}): {self.config.fmap_size ** 2} codes per "
                f"image, got {describe(indices)}"
            )
        check_token_ids(indices, "indices", vocab_size=self.config.num_tokens, vocab_field="num_tokens")
        embeds = self.codebook(indices)  # b (h w) d
        embeds = embeds.transpose(1, 2).reshape(embeds.shape[0], -1, side, side)  # b d h w
        return self.decoder(embeds)

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, return_loss: bool = False, temperature: float | None = None,
                **kwargs) -> DiscreteVAEOutput:
        """`pixel_values (b, c, H, W)` -> reconstructions `(b, c, H, W)`, logits `(b, t, h, w)`, optional loss."""
        config = self.config
        self.check_pixel_values(pixel_values)
        images = self.normalize(pixel_values)
        logits = self.encoder(images)
        tau = config.temperature if temperature is None else temperature
        if isinstance(tau, bool) or not isinstance(tau, (int, float)):
            raise TypeError(f"temperature must be a float > 0 (gumbel-softmax temperature), got {tau!r}")
        if not tau > 0:  # also NaN; 0 divides the logits by zero
            raise ValueError(f"temperature must be a float > 0 (gumbel-softmax temperature), got {tau!r}")
        one_hot = F.gumbel_softmax(logits, tau=tau, dim=1, hard=config.straight_through)
        if config.straight_through and config.reinmax:  # ReinMax, arXiv 2304.08612 algorithm 2
            one_hot = one_hot.detach()
            pi0 = logits.softmax(dim=1)
            pi1 = (one_hot + (logits / tau).softmax(dim=1)) / 2
            pi1 = ((pi1.clamp(min=1e-20).log() - logits).detach() + logits).softmax(dim=1)
            pi2 = 2 * pi1 - 0.5 * pi0
            one_hot = pi2 - pi2.detach() + one_hot
        sampled = torch.einsum("bthw,td->bdhw", one_hot, self.codebook.weight)
        reconstructions = self.decoder(sampled)
        loss = None
        if return_loss:
            loss_fn = F.smooth_l1_loss if config.smooth_l1_loss else F.mse_loss
            log_qy = F.log_softmax(logits.flatten(2).transpose(1, 2), dim=-1)  # b (h w) t
            log_uniform = torch.log(torch.tensor([1.0 / config.num_tokens], device=logits.device))
            kl_div = F.kl_div(log_uniform, log_qy, None, None, "batchmean", log_target=True)
            loss = loss_fn(images, reconstructions) + kl_div * config.kl_div_loss_weight
        return DiscreteVAEOutput(loss=loss, reconstructions=reconstructions, logits=logits)
