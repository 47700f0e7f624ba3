"""Contrastive (CLIP / InfoNCE) loss with a cross-process gather that carries gradients.

Under torch.distributed, every rank gathers the features of all ranks with an autograd-aware all_gather
(uneven per-rank batch sizes allowed) and computes the global loss; with DDP's gradient averaging the
gradients then equal those of one process on the concatenated batch. Without a process group it is a no-op.
"""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half precision to float32 for losses; float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """`(b_rank, ...) -> (sum_r b_r, ...)` in rank order; backward sends each rank its slice of the gradient."""
    if not is_distributed():
        return x
    import torch.distributed.nn.functional as dist_nn

    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    sizes = [int(s.item()) for s in sizes]
    padded = F.pad(x, (0,) * (2 * (x.ndim - 1)) + (0, max(sizes) - x.shape[0])) if x.shape[0] < max(sizes) else x
    parts = dist_nn.all_gather(padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)], dim=0)


class LogitScale(nn.Module):
    """Learnable log temperature. `forward() -> scale = exp(log_scale)`, clamped to `max_scale` if set.

    The parameter is named `logit_scale` as in CLIP; `init_value` is the *scale* (open_clip: 1/0.07,
    lucidrains: e). Clamping the value (not only the gradient) keeps fp16/bf16 logits finite.
    """

    def __init__(self, init_value: float = 1 / 0.07, max_scale: float | None = 100.0):
        super().__init__()
        self.init_value, self.max_scale = init_value, max_scale
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_value)))

    def reset_parameters(self):
        with torch.no_grad():
            self.logit_scale.fill_(math.log(self.init_value))

    def forward(self) -> torch.Tensor:
        log_scale = at_least_fp32(self.logit_scale)
        if self.max_scale is not None:
            log_scale = log_scale.clamp(max=math.log(self.max_scale))
        return log_scale.exp()


def contrastive_logits(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised `(b_i, d)`, `(b_t, d)` -> `logits_per_image (b_i, b_t)`, `logits_per_text (b_t, b_i)`."""
    logits_per_image = scale * image_embeds @ text_embeds.t().to(image_embeds.dtype)
    if bias is not None:
        logits_per_image = logits_per_image + bias
    return logits_per_image, logits_per_image.t()


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric cross-entropy over the (globally gathered) batch: image i's positive is text i.

    `image_embeds (b, d)`, `text_embeds (b, d)`, already normalised. Returns a scalar.
    """
    if image_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(
            "the contrastive loss pairs image i with text i: got "
            f"{image_embeds.shape[0]} images and {text_embeds.shape[0]} texts"
        )
    if gather:
        image_embeds, text_embeds = all_gather_with_grad(image_embeds), all_gather_with_grad(text_embeds)
    logits_per_image, logits_per_text = contrastive_logits(image_embeds, text_embeds, scale, bias)
    labels = torch.arange(image_embeds.shape[0], device=image_embeds.device)
    return (F.cross_entropy(at_least_fp32(logits_per_image), labels)
            + F.cross_entropy(at_least_fp32(logits_per_text), labels)) / 2
