"""The reward model: one scalar score per sequence, read at its last real token.

Shape key: B sequences, S tokens. The score position comes from the attention mask, not HF's
pad-token-id pooling, so it is right for left padding, right padding, the RolloutBatch layout
(padding on both sides), tokenizers whose pad id equals the EOS id, and pad ids sampled mid-response.

    rm = load_reward_model("out/rm")
    scores_B = reward_scores(rm, batch.input_ids_BS, batch.attention_mask_BS)
"""
from __future__ import annotations

from pathlib import Path

import torch

from rlhf.models.loading import ModelOptions
from rlhf.models.sequence import last_token_index
from rlhf.models.value_head import load_scalar_model, token_scores


def load_reward_model(name_or_path: str | Path, options: ModelOptions | None = None,
                      require_trained_head: bool = True, new_head_init: str = "normal"):
    """Load a reward model (an HF sequence classifier with one label).

    For scoring, the directory must hold a trained head (else ValueError: random rewards would be
    silent garbage). To start reward-model training from an SFT/causal-LM dir, pass
    `require_trained_head=False`; the new head is initialised by `new_head_init`.
    """
    return load_scalar_model(name_or_path, options, new_head_init=new_head_init,
                             require_trained_head=require_trained_head)


def reward_scores(model, input_ids_BS: torch.Tensor, attention_mask_BS: torch.Tensor) -> torch.Tensor:
    """[B] float32 score of each sequence at its last real token (any padding side)."""
    scores_BS = token_scores(model, input_ids_BS, attention_mask_BS)
    last_B = last_token_index(attention_mask_BS)
    return scores_BS.gather(1, last_B[:, None]).squeeze(1)
