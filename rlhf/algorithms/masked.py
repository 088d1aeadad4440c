"""Statistics over the valid (mask = 1) entries of padded tensors.

Padding may sit anywhere (left, right, in the middle of a row). No function here returns NaN for an
all-padding input: an empty mean is 0 and a variance with too few entries is 0.
"""
from __future__ import annotations

import torch

WHITEN_EPS = 1e-8


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x over valid entries: all of them (0-dim result) or along `dim`."""
    values = torch.where(mask.bool(), x, torch.zeros_like(x))  # where, not ×: NaN padding stays out
    return values.sum() if dim is None else values.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over valid entries: all of them, or along `dim`; 0 where nothing is valid."""
    count = mask.to(x.dtype)
    count = count.sum() if dim is None else count.sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over all valid entries (0-dim). Unbiased uses n − 1 and gives 0 when n < 2."""
    n = mask.to(x.dtype).sum()
    centered = x - masked_mean(x, mask)
    sum_sq = masked_sum(centered * centered, mask)
    denominator = n - 1 if unbiased else n
    return torch.where(denominator > 0, sum_sq / denominator.clamp(min=1), torch.zeros_like(sum_sq))


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x − mean)·rsqrt(var + 1e-8) over all valid entries (unbiased var, TRL's convention).

    With `shift_mean=False` the mean is added back, so only the scale changes. Padding stays 0.
    """
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask, unbiased=True) + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − Var(returns − values)/Var(returns) over valid entries: 1 = perfect critic, ≤ 0 = useless.

    Returns 0 when the returns have no variance (nothing to explain).
    """
    var_returns = masked_var(returns, mask)
    if var_returns.item() == 0:
        return torch.zeros((), dtype=values.dtype)
    return 1 - masked_var(returns - values, mask) / var_returns
