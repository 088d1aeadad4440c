"""From prompts and an engine's completions to the `RolloutBatch` PPO trains on (shape key: rlhf/rollout/base.py).

`sample_rollouts` is what the actor calls whatever its engine: encode prompts, let the engine sample,
check the weight version, assemble. The batch has the layout `generate_rollouts` documents
(rlhf/models/generation.py): left-padded prompts, right-padded responses that keep their EOS or stop
token (mask 1), sampler log-probs 0 on padding, `truncated_B` for rows that hit `max_new_tokens`,
decoded responses cut before their stop string.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from rlhf.data.batch import RolloutBatch
from rlhf.models import SamplingParams
from rlhf.models.generation import cut_at_stop, encode_prompts, left_pad
from rlhf.rollout.base import Completion, RolloutEngine, check_versions


def sample_rollouts(engine: RolloutEngine, tokenizer, prompts: Sequence[str | Sequence[int]], params: SamplingParams,
                    references: Sequence[Any] | None = None, expected_version: int | None = None,
                    where: str = "rollout") -> RolloutBatch:
    """Sample `params.n` responses per prompt with `engine`; the batch of `assemble_rollouts`.

    `expected_version` (the actor's weight version): a completion from other weights raises
    StaleWeightsError naming `where` (e.g. "actor rank 1").
    """
    if references is not None and len(references) != len(prompts):
        raise ValueError(f"got {len(references)} references for {len(prompts)} prompts")
    prompt_ids = encode_prompts(tokenizer, prompts, params.max_prompt_len, params.truncate_prompts)
    completions = engine.generate(prompt_ids, params)
    if expected_version is not None:
        check_versions(completions, expected_version, where)
    prompt_texts = [p if isinstance(p, str) else tokenizer.decode(ids) for p, ids in zip(prompts, prompt_ids)]
    return assemble_rollouts(prompt_ids, completions, params, tokenizer, prompt_texts, references)


def assemble_rollouts(prompt_ids: Sequence[Sequence[int]], completions: Sequence[Completion], params: SamplingParams,
                      tokenizer, prompt_texts: Sequence[str], references: Sequence[Any] | None = None) -> RolloutBatch:
    """The RolloutBatch of `completions` (B = P·n, prompt-major) answering `prompt_ids` (P)."""
    n = params.n
    if len(completions) != len(prompt_ids) * n:
        raise ValueError(f"engine returned {len(completions)} completions for {len(prompt_ids)} prompts × n={n}")
    pad = tokenizer.pad_token_id
    prompt_ids_BP, prompt_mask_BP = left_pad(prompt_ids, pad, repeat=n)
    T = max(1, max(len(c.token_ids) for c in completions))
    response_ids_BT = torch.full((len(completions), T), pad, dtype=torch.long)
    old_logprobs_BT = torch.zeros((len(completions), T), dtype=torch.float32)
    for row, c in enumerate(completions):
        response_ids_BT[row, :len(c.token_ids)] = torch.tensor(c.token_ids, dtype=torch.long)
        old_logprobs_BT[row, :len(c.logprobs)] = torch.tensor(c.logprobs, dtype=torch.float32)
    lengths_B = torch.tensor([len(c.token_ids) for c in completions])
    mask_BT = torch.arange(T)[None, :] < lengths_B[:, None]
    texts = tokenizer.batch_decode(response_ids_BT, skip_special_tokens=True)
    return RolloutBatch(
        input_ids_BS=torch.cat([prompt_ids_BP, response_ids_BT], dim=1),
        attention_mask_BS=torch.cat([prompt_mask_BP, mask_BT.long()], dim=1),
        mask_BT=mask_BT.float(),
        old_logprobs_BT=old_logprobs_BT,
        group_ids_B=torch.arange(len(prompt_ids)).repeat_interleave(n),
        truncated_B=torch.tensor([c.finish_reason == "length" for c in completions], dtype=torch.bool),
        prompts=[text for text in prompt_texts for _ in range(n)],
        responses=[cut_at_stop(text, params.stop_strings) for text in texts],
        references=None if references is None else [r for r in references for _ in range(n)],
    )
