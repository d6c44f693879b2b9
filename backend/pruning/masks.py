"""Pure tensor functions for mask pruning: scores in, bool masks out (True = set to zero).

Every mask is exact (the asked number of zeros, never a threshold that ties can overshoot) and
deterministic: equal scores are taken in index order (stable sorts). Scores are compared in float32.
Torch is imported inside functions (registry discovery imports this package without torch).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

__all__ = ["apply_mask", "largest_remainder", "nm_mask", "row_mask", "smallest_mask", "wanda_score"]


def smallest_mask(score: "torch.Tensor", count: int) -> "torch.Tensor":
    """True at the `count` smallest scores of the whole tensor (ties in flat index order)."""
    import torch

    flat = score.detach().float().flatten()
    if count <= 0:
        return torch.zeros_like(flat, dtype=torch.bool).view_as(score)
    threshold = flat.kthvalue(count).values  # a k-th value search: much faster than a stable sort
    mask = flat < threshold
    ties = torch.nonzero(flat == threshold).flatten()[: count - int(mask.sum())]
    mask[ties] = True
    return mask.view_as(score)


def row_budgets(zeros: int, rows: int) -> list[int]:
    """`zeros` spread over `rows` as evenly as possible (the first rows take the remainder)."""
    base, extra = divmod(zeros, rows)
    return [base + (1 if r < extra else 0) for r in range(rows)]


def row_mask(score: "torch.Tensor", counts: "Sequence[int] | torch.Tensor") -> "torch.Tensor":
    """True at the `counts[r]` smallest scores of each row r of a 2-D score (ties by column)."""
    import torch

    rows, cols = score.shape
    counts = torch.as_tensor(counts, dtype=torch.long, device=score.device).view(rows, 1)
    order = torch.argsort(score.detach().float(), dim=1, stable=True)
    take = torch.arange(cols, device=score.device).view(1, cols) < counts
    return torch.zeros_like(take).scatter_(1, order, take)


def nm_mask(score: "torch.Tensor", n: int, m: int) -> "torch.Tensor":
    """True at the `n` smallest scores in every group of `m` consecutive columns of each row."""
    import torch

    rows, cols = score.shape
    if cols % m:
        raise ValueError(f"{n}:{m} needs a column count divisible by {m}, got {cols}")
    groups = score.detach().float().reshape(rows, cols // m, m)
    order = torch.argsort(groups, dim=2, stable=True)
    take = (torch.arange(m, device=score.device) < n).expand_as(groups)
    return torch.zeros_like(take).scatter_(2, order, take).reshape(rows, cols)


def wanda_score(weight: "torch.Tensor", input_norm: "torch.Tensor") -> "torch.Tensor":
    """Wanda's importance |W_ij| x ||X_j||_2 (float32), `input_norm` one entry per input column."""
    return weight.detach().float().abs() * input_norm.float().view(1, -1)


def apply_mask(weight: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """A copy of `weight` with the masked entries set to zero (dtype and shape preserved)."""
    return weight.masked_fill(mask, 0)


def largest_remainder(raw: Sequence[float], total: int, caps: Sequence[int] | None = None) -> list[int]:
    """Integers close to `raw` (each within 1) summing to exactly `total` (Hamilton's method).

    `raw` is rescaled to sum to `total` first; leftover units go to the largest fractional parts,
    ties to the lower index; `caps` bounds each entry.
    """
    s = float(sum(raw))
    scaled = [r * total / s for r in raw] if s > 0 else [0.0 for _ in raw]
    caps = list(caps) if caps is not None else [total] * len(raw)
    out = [min(int(v), c) for v, c in zip(scaled, caps)]
    left = total - sum(out)
    order = sorted(range(len(raw)), key=lambda i: (-(scaled[i] - int(scaled[i])), i))
    while left > 0:
        progressed = False
        for i in order:
            if left == 0:
                break
            if out[i] < caps[i]:
                out[i] += 1
                left -= 1
                progressed = True
        if not progressed:
            raise ValueError(f"cannot place {total} units under caps {caps}")
    return out
