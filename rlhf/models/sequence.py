"""Token-layout helpers shared by the policy, critic and reward forwards.

Shape key: B sequences, S prompt+response tokens, T response tokens (the last T columns of S).
A RolloutBatch row is a left-padded prompt followed by a right-padded response, so real tokens sit in
one contiguous run with padding on either side; these helpers find positions from the attention mask
instead of assuming either padding side.
"""
from __future__ import annotations

import torch


def position_ids_from_mask(attention_mask_BS: torch.Tensor) -> torch.Tensor:
    """[B, S] long: 0, 1, 2, … counted over real tokens only (padding gets 0).

    The same rule HF `generate` uses, so a full forward with these positions reproduces the KV-cache
    logits of generation for left-padded prompts (it matters for absolute-position models like GPT-2).
    """
    position_ids_BS = attention_mask_BS.long().cumsum(-1) - 1
    return position_ids_BS.masked_fill(attention_mask_BS == 0, 0)


def response_predictor_slice(seq_len: int, response_len: int) -> slice:
    """Columns of an [B, S, …] output whose position predicts response token t = 0..T−1.

    Output at position i is computed from tokens ≤ i, so response token t (column S−T+t) is predicted
    by (and its state value read at) column S−T−1+t. Needs at least one prompt column.
    """
    if not 0 < response_len < seq_len:
        raise ValueError(f"response_len must be in [1, S-1] with S={seq_len}, got {response_len}")
    return slice(seq_len - response_len - 1, seq_len - 1)


def response_mask_from_attention(attention_mask_BS: torch.Tensor, response_len: int) -> torch.Tensor:
    """[B, T] bool: which response columns hold real tokens (the response block's attention mask)."""
    return attention_mask_BS[:, attention_mask_BS.shape[1] - response_len:].bool()


def last_token_index(attention_mask_BS: torch.Tensor) -> torch.Tensor:
    """[B] long: column of each row's last real token, whatever the padding side.

    Raises ValueError if a row has no real token (its score would be read from padding).
    """
    mask_BS = attention_mask_BS.bool()
    empty_B = ~mask_BS.any(dim=-1)
    if empty_B.any():
        rows = empty_B.nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} have an all-zero attention mask: no token to score")
    columns_S = torch.arange(mask_BS.shape[1], device=mask_BS.device)
    return torch.where(mask_BS, columns_S, -1).argmax(dim=-1)
