"""Computing only the rows (token positions) whose results are used.

A training step with padded text spends the per-token layers (projections, MLPs, the LM head) on padding
whose outputs the loss ignores. `rows_needed` finds the positions that can influence the used outputs through
attention; `on_rows` runs a per-token function on those rows only. Rows left out hold zeros.
"""

import torch


def rows_needed(needed: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """`needed (b, n)` bool (rows whose outputs are used) -> `(b, n)` bool: those rows and every row whose
    states they read through self-attention at any depth, under `mask (b, 1, n, n)` (True = may attend), or
    plain causal / full attention when `mask` is None."""
    if mask is None:
        if causal:  # a row reads every earlier row
            return needed.flip(-1).cummax(-1).values.flip(-1)
        return needed.any(-1, keepdim=True).expand_as(needed)
    mask = mask[:, 0]
    while True:
        grown = needed | (mask & needed[:, :, None]).any(dim=1)
        if torch.equal(grown, needed):
            return needed
        needed = grown


def row_indices(needed: torch.Tensor | None) -> torch.Tensor | None:
    """`(b, n)` bool -> flat indices into `b * n` rows, or None when every row is needed."""
    if needed is None or bool(needed.all()):
        return None
    return needed.flatten().nonzero().squeeze(1)


def on_rows(fn, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """`fn` (per-token, `(r, d) -> (r, d')`) on the rows `rows` (flat indices over `x (b, n, d)`) only;
    the other rows of the `(b, n, d')` result are 0. `rows=None`: `fn(x)`."""
    if rows is None:
        return fn(x)
    flat = x.reshape(-1, x.shape[-1])
    out = fn(flat.index_select(0, rows))
    return out.new_zeros(flat.shape[0], out.shape[-1]).index_copy(0, rows, out).view(*x.shape[:-1], -1)
