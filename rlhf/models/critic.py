"""The critic: an LM backbone with a scalar head giving a value V(s_t) for every response token.

Shape key: B sequences, S prompt+response tokens, T response tokens. The value of response token t is
read at the position that predicts it (the state before the token is emitted), the same columns the
policy's log-probs come from, so `values_BT`, `old_logprobs_BT` and `mask_BT` line up for GAE.

    critic = load_critic("out/rm")                 # head copied from the reward model
    critic = load_critic("out/sft")                # causal-LM dir: new head, zero-initialised
    values_BT = critic_values(critic, batch.input_ids_BS, batch.attention_mask_BS, batch.response_len)
"""
from __future__ import annotations

from pathlib import Path

import torch

from rlhf.models.loading import ModelOptions
from rlhf.models.sequence import response_mask_from_attention, response_predictor_slice
from rlhf.models.value_head import load_scalar_model, token_scores


def load_critic(name_or_path: str | Path, options: ModelOptions | None = None, new_head_init: str = "zero"):
    """Load a critic from a reward-model dir (head kept) or a causal-LM dir (head new, `new_head_init`).

    Returns an HF `*ForSequenceClassification` model (peft-wrapped if `options.lora_rank`), saved with
    `save_model` as a standard HF directory. See `value_head.load_scalar_model` for the init choices.
    """
    return load_scalar_model(name_or_path, options, new_head_init=new_head_init)


def critic_values(model, input_ids_BS: torch.Tensor, attention_mask_BS: torch.Tensor,
                  response_len: int) -> torch.Tensor:
    """[B, T] float32 values V(s_t) for each response token t; 0 on response padding."""
    scores_BS = token_scores(model, input_ids_BS, attention_mask_BS)
    values_BT = scores_BS[:, response_predictor_slice(input_ids_BS.shape[1], response_len)]
    return torch.where(response_mask_from_attention(attention_mask_BS, response_len), values_BT, 0.0)
