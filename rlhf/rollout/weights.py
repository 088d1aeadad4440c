"""What a weight sync sends: the actor's full tensors under the names of its HF checkpoint.

A LoRA actor (peft) trains `W + s · B @ A` per adapted linear layer; a rollout engine loads plain
checkpoints, so `merged_lora_buckets` folds each adapter into its base weight on the fly, bucket by
bucket, and strips peft's name prefixes (the merge itself: `rlhf/models/lora.py`, shared with the HF
export). Everything else passes through unchanged.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from rlhf.models.lora import PEFT_PREFIX, LoraLayer, LoraMergePlan, LoraMerger  # noqa: F401 (PEFT_PREFIX: API)
from rlhf.rollout.base import WeightBucket


def merged_lora_buckets(buckets: Iterable[WeightBucket], scale: float | LoraMergePlan,
                        adapter: str = "default") -> Iterator[WeightBucket]:
    """Buckets of a peft LoRA model's state dict → buckets of the merged model, in checkpoint names.

    `scale` is the model's merge plan (`lora_merge_plan(model)`: each layer's own scaling), or one
    scaling for every layer. A base weight is held back until its lora_A and lora_B arrived; a layer
    whose adapter never completes is a ValueError naming it.
    """
    plan = scale if isinstance(scale, LoraMergePlan) else LoraMergePlan({}, adapter, default=LoraLayer(float(scale)))
    merger = LoraMerger(plan)
    for bucket in buckets:
        out = list(merger.merge(bucket))
        if out:
            yield out
    merger.close()
