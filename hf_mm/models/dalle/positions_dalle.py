"""DALL-E position handling: the rotary angle table (text 1-D + image axial "pixel" rotary) and token shift.

Both are functions of absolute positions in `[bos, text | image grid]`, so a cached step computes exactly what
the full forward computes at the same positions.
"""

import math

import torch
from torch import nn

from hf_mm.layers.rotary import RotaryEmbedding

from .configuration_dalle import DalleConfig

TEXT_FAR_POSITION = 8192.0  # 1-D rotary position given to every image token (far from the text)
TEXT_AXIAL_POSITION = -10.0  # axial rotary position of text tokens (image axes span [-1, 1])


class DalleRotaryEmbedding(nn.Module):
    """dalle-pytorch's rotary table, interleaved layout (rotary-embedding-torch), `rot_dim = head_dim // 3`.

    Features: `[1-D text rotary (2 * (rot_dim // 2)) | row axial | column axial (each 2 * (rot_dim // 2))]`.
    `forward(positions (n,)) -> angles (n, 6 * (rot_dim // 2))`.
    """

    def __init__(self, config: DalleConfig):
        super().__init__()
        self.config = config
        self.rot_dim = config.head_dim // 3

    def frequencies(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.rot_dim // 2
        lang = RotaryEmbedding.compute_inv_freq(self.rot_dim)[:half].to(device)
        pixel = torch.linspace(1.0, 10 / 2, half, device=device) * math.pi  # max_freq = 10
        return lang, pixel

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        config = self.config
        lang, pixel = self.frequencies(positions.device)
        is_image = positions >= config.text_len
        index = (positions - config.text_len).clamp(min=0)
        axis = torch.linspace(-1, 1, steps=config.image_fmap_size, device=positions.device)
        text_pos = torch.where(is_image, torch.full_like(positions, TEXT_FAR_POSITION, dtype=torch.float),
                               positions.float())
        row_pos = torch.where(is_image, axis[index // config.image_fmap_size], TEXT_AXIAL_POSITION)
        col_pos = torch.where(is_image, axis[index % config.image_fmap_size], TEXT_AXIAL_POSITION)
        angles = [text_pos[:, None] * lang, row_pos[:, None] * pixel, col_pos[:, None] * pixel]
        return torch.cat([a.repeat_interleave(2, dim=-1) for a in angles], dim=-1)


def shift_tokens(
    hidden_states: torch.Tensor, positions: torch.Tensor, history: torch.Tensor | None, config: DalleConfig
) -> torch.Tensor:
    """Token shift of dalle-pytorch for the tokens at `positions (n,)` (contiguous, after `history`).

    - text: the first half of the channels comes from the previous token (zeros at `<bos>`);
    - image: the first quarter from the cell above, the second quarter from the cell to the left (zeros on the
      top row / left column); the rest is unchanged.

    `hidden_states (b, n, d)`, `history (b, p, d)` = the inputs at positions `0..p-1` (from the cache) or None.
    Returns `(b, n, d)`.
    """
    full = hidden_states if history is None else torch.cat((history, hidden_states), dim=1)
    full = torch.cat((torch.zeros_like(full[:, :1]), full), dim=1)  # index 0 = zeros, position p at p + 1
    d, text_len, fmap = hidden_states.shape[-1], config.text_len, config.image_fmap_size
    is_image = positions >= text_len
    col = (positions - text_len) % fmap
    previous = torch.where(is_image & (col == 0), -1, positions - 1)  # left neighbour / previous text token
    above = torch.where(positions - fmap >= text_len, positions - fmap, -1)
    first_source = torch.where(is_image, above, previous) + 1
    second_source = previous + 1
    quarter = d // 4
    first = full[:, first_source, :quarter]
    second = full[:, second_source, quarter : 2 * quarter]
    return torch.cat((first, second, hidden_states[..., 2 * quarter :]), dim=-1)
