"""`HFEngine`: HF `generate` on the actor's own module behind the `RolloutEngine` interface (the default).

It samples with the very parameters the actor trains (no copy, so a "sync" only records the
version), which is why the quickstart's results do not depend on the engine layer: the batch
`sample_rollouts(HFEngine(...), ...)` assembles equals `generate_rollouts`' (tests/rollout/).
Under ZeRO-3 every forward gathers shards collectively, so all ranks must keep stepping until the
last one finishes (`synced_gpus`); this is the cost a separate engine such as vLLM removes.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from rlhf.models import SamplingParams
from rlhf.models.generation import eos_token_ids, generate_rollouts
from rlhf.rollout.base import Completion, RolloutEngine


class HFEngine(RolloutEngine):
    """Samples with `module()` (the actor's live model, fetched per call) and `tokenizer`."""

    name = "hf"
    shares_actor_weights = True

    def __init__(self, module: Callable[[], torch.nn.Module], tokenizer, synced_gpus: bool = False) -> None:
        super().__init__()
        self.module, self.tokenizer, self.synced_gpus = module, tokenizer, synced_gpus

    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        model = self.module()
        batch = generate_rollouts(model, self.tokenizer, [list(ids) for ids in prompt_ids], params,
                                  synced_gpus=self.synced_gpus)
        eos = set(eos_token_ids(model, self.tokenizer))
        lengths_B = batch.mask_BT.sum(-1).long().tolist()
        response_ids_BT, logprobs_BT = batch.response_ids_BT.tolist(), batch.old_logprobs_BT.tolist()
        completions = []
        for row, length in enumerate(lengths_B):
            tokens = response_ids_BT[row][:length]
            reason = "length" if bool(batch.truncated_B[row]) else "eos" if tokens and tokens[-1] in eos else "stop"
            completions.append(Completion(tokens, logprobs_BT[row][:length], reason, self.weight_version))
        return completions
