"""Self-supervised side losses of x-clip: masked language modelling on the text tower, and SimSiam /
SimCLR on the vision tower's output tokens. The random draws happen in x-clip's order, so a shared seed
gives the same masks as the reference.

Einstein notation: `b` batch, `n` tokens, `d` features, `p` projection features.
"""

import math
from functools import reduce

import torch
import torch.nn.functional as F
from torch import nn

from hf_mm.layers.contrastive import at_least_fp32


def tokens_in(ids: torch.Tensor, token_ids) -> torch.Tensor:
    """`(b, n)` -> bool `(b, n)`: True where the id is one of `token_ids`."""
    return reduce(lambda acc, tok: acc | (ids == tok), token_ids, torch.zeros_like(ids, dtype=torch.bool))


def mask_subset_with_prob(mask: torch.Tensor, prob: float) -> torch.Tensor:
    """Choose `ceil(prob * count)` of the True positions of each row of `mask (b, n)` uniformly at random."""
    batch, seq_len = mask.shape
    max_masked = math.ceil(prob * seq_len)
    num_tokens = mask.sum(dim=-1, keepdim=True)
    excess = (mask.cumsum(dim=-1) > (num_tokens * prob).ceil())[:, :max_masked]
    rand = torch.rand((batch, seq_len), device=mask.device).masked_fill(~mask, -1e9)
    sampled = (rand.topk(max_masked, dim=-1).indices + 1).masked_fill_(excess, 0)
    chosen = torch.zeros((batch, seq_len + 1), device=mask.device).scatter_(-1, sampled, 1)
    return chosen[:, 1:].bool()


class XClipMLMHead(nn.Module):
    """BERT-style masking of `input_ids (b, n)` and the prediction head over the text tower's tokens. Its pad id
    (`config.mlm_pad_id`, x-clip's MLM `pad_token_id`) fills the labels, is ignored by the loss and never masked."""

    def __init__(self, config):
        super().__init__()
        text = config.text_config
        self.vocab_size, self.pad_token_id = text.vocab_size, config.mlm_pad_id
        self.mask_prob, self.replace_prob = config.mlm_mask_prob, config.mlm_replace_prob
        self.random_token_prob, self.mask_token_id = config.mlm_random_token_prob, config.mlm_mask_token_id
        self.ignore_ids = sorted({*config.mlm_mask_ignore_token_ids, self.pad_token_id} - {None})
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size)

    def mask_tokens(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> `masked_ids (b, n)`, `labels (b, n)` (pad id where nothing is predicted)."""
        if self.pad_token_id is None:  # checked here, not in the config: such configs still load and run inference
            raise ValueError("the MLM loss needs mlm_pad_token_id or text_config.pad_token_id (the label pad), got "
                             "None for both")
        mask = mask_subset_with_prob(~tokens_in(input_ids, self.ignore_ids), self.mask_prob)
        labels = input_ids.masked_fill(~mask, self.pad_token_id)
        masked = input_ids.clone()
        if self.random_token_prob > 0:
            use_random = torch.zeros_like(input_ids).float().uniform_(0, 1) < self.random_token_prob
            random_ids = torch.randint(0, self.vocab_size, input_ids.shape, device=input_ids.device)
            use_random &= ~tokens_in(random_ids, self.ignore_ids)
            masked = torch.where(use_random, random_ids, masked)
            mask = mask & ~use_random
        replace = torch.zeros_like(input_ids).float().uniform_(0, 1) < self.replace_prob
        return masked.masked_fill(mask & replace, self.mask_token_id), labels

    def loss(self, token_states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`token_states (b, 1 + n, d)` (CLS first), `labels (b, n)` -> scalar cross-entropy."""
        logits = self.lm_head(token_states)[:, 1:]
        return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=self.pad_token_id)


class ProjectionMLP(nn.Module):
    """SimSiam projector: 3 bias-free linears with BatchNorm (the last one without affine). `(r, d) -> (r, p)`."""

    def __init__(self, dim: int, projection_size: int, hidden_size: int):
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(dim, hidden_size, bias=False), nn.BatchNorm1d(hidden_size)
        self.fc2, self.bn2 = nn.Linear(hidden_size, hidden_size, bias=False), nn.BatchNorm1d(hidden_size)
        self.fc3, self.bn3 = nn.Linear(hidden_size, projection_size, bias=False), nn.BatchNorm1d(projection_size, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.fc1(x)))
        x = F.relu(self.bn2(self.fc2(x)))
        return self.bn3(self.fc3(x))


class PredictionMLP(nn.Module):
    """SimSiam predictor: Linear -> BatchNorm -> ReLU -> Linear. `(r, p) -> (r, p)`."""

    def __init__(self, dim: int, hidden_size: int):
        super().__init__()
        self.fc1, self.bn1, self.fc2 = nn.Linear(dim, hidden_size), nn.BatchNorm1d(hidden_size), nn.Linear(hidden_size, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.bn1(self.fc1(x))))


def simsiam_distance(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`2 - 2 cos(prediction, target)` per row, in at least float32 (autocast)."""
    prediction, target = at_least_fp32(prediction), at_least_fp32(target)
    return 2 - 2 * (F.normalize(prediction, dim=-1) * F.normalize(target, dim=-1)).sum(dim=-1)


def nt_xent_loss(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over `queries (r, p)` and `keys (r, p)`: each row's positive is its other view. Computed in
    at least float32 (autocast)."""
    r = queries.shape[0]
    projections = torch.cat((queries, keys))
    logits = at_least_fp32(projections @ projections.t())
    eye = torch.eye(2 * r, dtype=torch.bool, device=logits.device)
    logits = logits[~eye].reshape(2 * r, 2 * r - 1) / temperature
    labels = torch.cat((torch.arange(r, device=logits.device) + r - 1, torch.arange(r, device=logits.device)))
    return F.cross_entropy(logits, labels, reduction="sum") / (2 * r)


class XClipVisualSSL(nn.Module):
    """SimSiam or SimCLR on the vision tower's output tokens (every token is a sample: `(b n) d`).

    `forward(pixel_values (b, c, H, W), encode) -> scalar`, where `encode` is the vision tower.
    """

    def __init__(self, config, augment: nn.Module, augment2: nn.Module | None = None):
        super().__init__()
        dim = config.vision_config.hidden_size
        self.type, self.temperature = config.visual_ssl_type, config.simclr_temperature
        self.augment_both = config.simclr_augment_both
        self.augment1 = augment
        self.augment2 = augment2 if augment2 is not None else augment
        p, hidden = config.visual_ssl_projection_size, config.visual_ssl_projection_hidden_size
        self.projector = ProjectionMLP(dim, p, hidden)
        self.predictor = PredictionMLP(p, hidden) if self.type == "simsiam" else None

    def project(self, pixel_values: torch.Tensor, encode) -> torch.Tensor:
        tokens = encode(pixel_values)
        return self.projector(tokens.reshape(-1, tokens.shape[-1]))

    def forward(self, pixel_values: torch.Tensor, encode) -> torch.Tensor:
        if self.training and pixel_values.shape[0] < 2 and self.type == "simsiam":
            raise ValueError("visual SSL (SimSiam) needs at least 2 images per batch in training (BatchNorm)")
        if self.type == "simclr":
            queries_in = self.augment1(pixel_values) if self.augment_both else pixel_values
            queries = self.project(queries_in, encode)
            keys = self.project(self.augment1(pixel_values), encode)
            return nt_xent_loss(queries, keys, self.temperature)
        view_one, view_two = self.augment1(pixel_values), self.augment2(pixel_values)
        proj_one, proj_two = self.project(view_one, encode), self.project(view_two, encode)
        pred_one, pred_two = self.predictor(proj_one), self.predictor(proj_two)
        with torch.no_grad():  # x-clip re-encodes the targets (fresh patch dropout, BatchNorm statistics)
            target_one, target_two = self.project(view_one, encode), self.project(view_two, encode)
        return (simsiam_distance(pred_one, target_two) + simsiam_distance(pred_two, target_one)).mean()
