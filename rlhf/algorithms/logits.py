"""Per-token log-probabilities and entropy from language-model logits.

Shape key: B rows, T positions, V vocabulary. Both functions work row-chunk by row-chunk so the peak
extra memory is one chunk's `[b, T, V]` float32 copy, not the whole batch's: with V ≈ 150k a full
float32 `log_softmax` of a large batch is many GB, which is what OpenRLHF/veRL avoid with the same idea.
"""
from __future__ import annotations

import torch

# Rows per chunk: bounds the float32 temporaries of `log_softmax` to chunk·T·V elements.
_ROWS_PER_CHUNK = 8


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[label] per position.

    Args:
        logits: `[..., T, V]` raw scores, any float dtype (computed in float32).
        labels: `[..., T]` long token ids, aligned with `logits` (shift before calling).
        temperature: the sampling temperature, so log-probs match the sampler's distribution.

    Returns:
        `[..., T]` float32 log-probabilities.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    flat_logits = logits.reshape(-1, logits.shape[-2], logits.shape[-1]) if logits.dim() > 2 else logits[None]
    flat_labels = labels.reshape(-1, labels.shape[-1]) if labels.dim() > 1 else labels[None]
    out = []
    for start in range(0, flat_logits.shape[0], _ROWS_PER_CHUNK):
        chunk = flat_logits[start:start + _ROWS_PER_CHUNK].float()
        if temperature != 1.0:
            chunk = chunk / temperature
        picked = torch.gather(chunk, -1, flat_labels[start:start + _ROWS_PER_CHUNK, :, None]).squeeze(-1)
        out.append(picked - torch.logsumexp(chunk, dim=-1))
    return torch.cat(out, dim=0).reshape(labels.shape)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy H = logsumexp(z) − Σ softmax(z)·z of the distribution softmax(logits / temperature).

    Args:
        logits: `[..., V]` raw scores, any float dtype (computed in float32).

    Returns:
        `[...]` float32 entropies in nats.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    flat = logits.reshape(-1, logits.shape[-1])
    rows = max(1, _ROWS_PER_CHUNK * (logits.shape[-2] if logits.dim() > 2 else 1))
    out = []
    for start in range(0, flat.shape[0], rows):
        z = flat[start:start + rows].float() / temperature
        z = z - z.amax(dim=-1, keepdim=True)  # shift: the two terms below stay small, no cancellation
        probs = torch.softmax(z, dim=-1)
        # 0·(−inf) would be NaN: entries with zero probability contribute nothing.
        out.append(torch.logsumexp(z, dim=-1) - (probs * z.masked_fill(probs == 0, 0.0)).sum(-1))
    return torch.cat(out, dim=0).reshape(logits.shape[:-1])
