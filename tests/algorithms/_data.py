"""Random inputs and comparison helpers shared by the `rlhf.algorithms` tests.

Masks come in several padding layouts because the implementation must not assume right padding:
"right" (the usual rollout layout), "left", "holes" (padding anywhere inside a row) and "mixed".
With B ≥ 3 a mask always contains a full row, a length-1 row in the middle of the batch and, when
`allow_empty`, a row with no valid token, so every random case exercises those edges.
"""
from __future__ import annotations

import contextlib
import random

import torch

LAYOUTS = ("right", "left", "holes", "mixed")
SEEDS = range(6)
SHAPES = ((1, 1), (1, 7), (3, 1), (4, 5), (7, 9), (12, 16))


def _row(rng: random.Random, T: int, length: int, layout: str) -> list[float]:
    if layout == "right":
        return [1.0] * length + [0.0] * (T - length)
    if layout == "left":
        return [0.0] * (T - length) + [1.0] * length
    if layout == "holes":
        positions = set(rng.sample(range(T), length))
        return [1.0 if t in positions else 0.0 for t in range(T)]
    raise ValueError(layout)


def make_mask(seed: int, B: int, T: int, layout: str = "right", allow_empty: bool = True) -> torch.Tensor:
    """`[B, T]` float 0/1 mask with random row lengths and the edge rows described above."""
    rng = random.Random(seed * 1000 + B * 31 + T)
    min_len = 0 if allow_empty else 1
    lengths = [rng.randint(min_len, T) for _ in range(B)]
    if B >= 3:
        lengths[0] = T
        lengths[B // 2] = 1
        if allow_empty:
            lengths[-1] = 0
    rows = []
    for i, length in enumerate(lengths):
        row_layout = layout if layout != "mixed" else LAYOUTS[i % 3]
        rows.append(_row(rng, T, length, row_layout))
    # Move the empty row away from the end sometimes so it is not always last.
    if B >= 4 and allow_empty and seed % 2:
        rows[1], rows[-1] = rows[-1], rows[1]
    return torch.tensor(rows, dtype=torch.float64)


def randn(seed: int, *shape: int, dtype=torch.float64, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)


def logprobs_like(seed: int, B: int, T: int, dtype=torch.float64) -> torch.Tensor:
    """Realistic log-probabilities in about [−4, 0)."""
    g = torch.Generator().manual_seed(seed)
    return (-torch.rand(B, T, generator=g, dtype=torch.float64) * 4 - 1e-3).to(dtype)


def tol(dtype) -> dict:
    return dict(atol=1e-6, rtol=1e-6) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)


def assert_matches(actual: torch.Tensor, expected, dtype=torch.float64, msg: str = "") -> None:
    """Compare an implementation tensor with a reference list/float (in float64)."""
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    assert torch.is_tensor(actual), f"expected a tensor, got {type(actual)}"
    assert tuple(actual.shape) == tuple(expected_t.shape), f"shape {tuple(actual.shape)} != {tuple(expected_t.shape)}"
    assert torch.isfinite(actual).all(), f"non-finite values {msg}: {actual}"
    torch.testing.assert_close(actual.detach().double(), expected_t, **tol(dtype), msg=lambda m: f"{msg}\n{m}")


def assert_padding_zero(out: torch.Tensor, mask: torch.Tensor, name: str = "output") -> None:
    padding = ~mask.bool()
    assert (out.detach()[padding] == 0).all(), f"{name} is not exactly 0 on padding: {out.detach()[padding]}"


def rows(t: torch.Tensor) -> list:
    return t.detach().double().tolist()


def bools(mask: torch.Tensor) -> list:
    return mask.bool().tolist()


@contextlib.contextmanager
def case(**info):
    """Name the random case (seed, dtype, ...) in a failure raised inside a loop over cases."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"case {info}: {exc}") from exc
