"""Policy forward: per-token log-probs (and entropy) of the response tokens of a rollout.

Shape key: B sequences, S prompt+response tokens, T response tokens, V vocab. Inputs follow the
RolloutBatch layout (left-padded prompt block + right-padded response block). Positions come from the
attention mask exactly as in HF `generate`, and logits are divided by the sampling temperature, so for
the weights that generated a batch these log-probs equal the sampler's (`old_logprobs_BT`) and PPO's
first importance ratio is 1. The actor (with grad) and the reference (under no_grad) both use this.
"""
from __future__ import annotations

import torch

from rlhf.algorithms import entropy_from_logits, logprobs_from_logits
from rlhf.models.sequence import position_ids_from_mask, response_mask_from_attention, response_predictor_slice


def response_logits(model, input_ids_BS: torch.Tensor, attention_mask_BS: torch.Tensor,
                    response_len: int) -> torch.Tensor:
    """[B, T, V] logits predicting each response token (model dtype; no temperature applied).

    `model` is any callable HF causal LM (plain, peft-wrapped or an engine wrapper) returning `.logits`.
    """
    outputs = model(input_ids=input_ids_BS, attention_mask=attention_mask_BS,
                    position_ids=position_ids_from_mask(attention_mask_BS), use_cache=False)
    return outputs.logits[:, response_predictor_slice(input_ids_BS.shape[1], response_len)]


def response_logprobs(model, input_ids_BS: torch.Tensor, attention_mask_BS: torch.Tensor, response_len: int,
                      temperature: float = 1.0) -> torch.Tensor:
    """[B, T] float32 log softmax(logits / temperature) of each response token; 0 on padding."""
    logprobs_BT, _ = _logprobs_and_maybe_entropy(model, input_ids_BS, attention_mask_BS, response_len,
                                                 temperature, with_entropy=False)
    return logprobs_BT


def response_logprobs_and_entropy(model, input_ids_BS: torch.Tensor, attention_mask_BS: torch.Tensor,
                                  response_len: int, temperature: float = 1.0
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T], [B, T]) float32: response-token log-probs and the entropy of the distribution that
    predicted each one (softmax(logits / temperature)); both 0 on padding. One forward for both."""
    return _logprobs_and_maybe_entropy(model, input_ids_BS, attention_mask_BS, response_len, temperature,
                                       with_entropy=True)


def _logprobs_and_maybe_entropy(model, input_ids_BS, attention_mask_BS, response_len, temperature,
                                with_entropy: bool):
    logits_BTV = response_logits(model, input_ids_BS, attention_mask_BS, response_len)
    response_ids_BT = input_ids_BS[:, input_ids_BS.shape[1] - response_len:]
    valid_BT = response_mask_from_attention(attention_mask_BS, response_len)
    # `where`, not multiply: padded positions may hold non-finite values that would turn 0·x into NaN.
    logprobs_BT = torch.where(valid_BT, logprobs_from_logits(logits_BTV, response_ids_BT, temperature), 0.0)
    if not with_entropy:
        return logprobs_BT, None
    return logprobs_BT, torch.where(valid_BT, entropy_from_logits(logits_BTV, temperature), 0.0)
