"""x-clip's contrastive objectives: pooled or FILIP token-wise similarity, InfoNCE with optional decoupled
denominators (DCL), CLOOB-style extra projections, multiview pairs and the similarity regulariser.

Einstein notation: `m` text views, `v` image views, `b` (global) batch, `x` texts, `y` images,
`t` text tokens, `i` image tokens, `d` latent features.
"""

import torch
import torch.nn.functional as F

from hf_mm.layers.contrastive import all_gather_with_grad, at_least_fp32, is_distributed


def masked_mean(t: torch.Tensor, mask: torch.Tensor, dim: int, eps: float = 1e-6) -> torch.Tensor:
    t = t.masked_fill(~mask, 0.0)
    return t.sum(dim=dim) / mask.sum(dim=dim).clamp(min=eps)


def pair_similarities(text, image, text_extra, image_extra, text_mask, scale):
    """Similarities of every text with every image, for one text view and one image view.

    Pooled: `text (x, d)`, `image (y, d)` -> `text_to_image (x, y)`, `image_to_text (y, x)` (from the extra
    latents when given). FILIP: `text (x, t, d)`, `image (y, i, d)`, `text_mask (x, t)` -> `text_to_image (x, y)`
    = masked mean over text tokens of the max over image tokens, and `image_to_text (y, x)` = mean over image
    tokens of the max over (real) text tokens.
    """
    if text.ndim == 2:
        text_to_image = scale * text @ image.t()
        image_to_text = scale * image_extra @ text_extra.t() if text_extra is not None else text_to_image.t()
        return text_to_image, image_to_text
    sim = torch.einsum("xtd,yid->xyti", text, image) * scale
    t2i = masked_mean(sim.amax(dim=-1), text_mask[:, None, :], dim=-1)
    sim_i2t = torch.einsum("xtd,yid->xyti", text_extra, image_extra) * scale if text_extra is not None else sim
    sim_i2t = sim_i2t.masked_fill(~text_mask[:, None, :, None], -torch.finfo(sim_i2t.dtype).max)
    i2t = sim_i2t.amax(dim=-2).mean(dim=-1)
    return t2i, i2t.t()


def info_nce(logits: torch.Tensor, decoupled: bool) -> torch.Tensor:
    """Row-wise InfoNCE of a square `(b, b)` matrix whose diagonal holds the positives, averaged over rows.
    With `decoupled` (DCL) the positive is left out of its own denominator. Half-precision logits (autocast) are
    upcast first, so the loss is computed and returned in at least float32."""
    logits = at_least_fp32(logits)
    positives = logits.diagonal()
    if decoupled:
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(eye, float("-inf"))
    return (torch.logsumexp(logits, dim=-1) - positives).mean()


def gather_batch(t: torch.Tensor | None, batch_dim: int) -> torch.Tensor | None:
    """All-gather (with gradients, uneven sizes allowed) along `batch_dim`; a no-op without a process group."""
    if t is None or not is_distributed():
        return t
    return all_gather_with_grad(t.movedim(batch_dim, 0)).movedim(0, batch_dim)


def pad_to_group_max(t: torch.Tensor | None, dim: int, value: float = 0.0) -> torch.Tensor | None:
    """Pad `dim` to its largest size over the process group (ranks whose texts were padded to different lengths),
    so the token-wise latents can be gathered; a no-op without a process group."""
    if t is None or not is_distributed():
        return t
    size = torch.tensor([t.shape[dim]], device=t.device)
    torch.distributed.all_reduce(size, op=torch.distributed.ReduceOp.MAX)
    extra = int(size) - t.shape[dim]
    return F.pad(t, (0, 0) * (t.ndim - 1 - dim) + (0, extra), value=value) if extra else t


def gather_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    if mask is None or not is_distributed():
        return mask
    return all_gather_with_grad(mask.float()).bool()


def contrastive_losses(text, image, text_extra, image_extra, text_mask, scale, decoupled, filip):
    """Contrastive loss of every (text view, image view) pair over the globally gathered batch.

    `text (m, b, [t,] d)`, `image (v, b, [i,] d)`, `*_extra` like them or None, `text_mask (m, b, t)`
    (FILIP only). Returns `(m * v,)` losses, text view major; entry 0 is the main (un-augmented) pair.
    """
    if filip:  # padded tokens: zero latents, masked out
        text, text_extra = pad_to_group_max(text, 2), pad_to_group_max(text_extra, 2)
        text_mask = pad_to_group_max(text_mask, 2, value=False)
    text, image = gather_batch(text, 1), gather_batch(image, 1)
    text_extra, image_extra = gather_batch(text_extra, 1), gather_batch(image_extra, 1)
    text_mask = gather_batch(text_mask.float(), 1).bool() if text_mask is not None else None
    if text.shape[1] != image.shape[1]:
        raise ValueError(f"the contrastive loss pairs text i with image i: got {text.shape[1]} texts and {image.shape[1]} images")
    if decoupled and text.shape[1] < 2:  # x-clip returns log(1e-20) - positive instead
        raise ValueError("decoupled_contrastive_learning leaves each positive out of its denominator, which needs at "
                         f"least 2 (text, image) pairs in the (gathered) batch, got {text.shape[1]}")
    losses = []
    for m in range(text.shape[0]):
        for v in range(image.shape[0]):
            t2i, i2t = pair_similarities(
                text[m], image[v],
                text_extra[m] if text_extra is not None else None,
                image_extra[v] if image_extra is not None else None,
                text_mask[m] if text_mask is not None else None, scale,
            )
            # x-clip's FILIP image->text term normalises each text's row over the images (kept for parity)
            second = i2t.t() if filip else i2t
            losses.append((info_nce(t2i, decoupled) + info_nce(second, decoupled)) / 2)
    return torch.stack(losses)


def similarity_regularization(text, image, text_extra, image_extra) -> torch.Tensor:
    """arXiv 2309.08773: match the off-diagonal text-text and image-image similarities (per view).

    `text (m, b, d)`, `image (v, b, d)` (gathered over processes here); `*_extra` or None (then the
    main latents stand in, which is what x-clip intends but crashes on). Computed in at least float32."""
    text, image = gather_batch(text, 1), gather_batch(image, 1)
    text_extra = gather_batch(text_extra, 1) if text_extra is not None else text
    image_extra = gather_batch(image_extra, 1) if image_extra is not None else image
    b = text.shape[1]
    off_diag = ~torch.eye(b, dtype=torch.bool, device=text.device)

    def sims(t):
        return at_least_fp32(torch.einsum("mid,mjd->mij", t, t))[:, off_diag]

    pairs = [torch.broadcast_tensors(sims(a), sims(c)) for a, c in ((text, image), (text_extra, image_extra))]
    return sum(F.mse_loss(a, c) for a, c in pairs) / 2
