"""What a weight sync sends: the actor's full tensors under the names of its HF checkpoint.

A LoRA actor (peft) trains `W + (alpha / r) · B @ A` per adapted linear layer; a rollout engine
loads plain checkpoints, so `merged_lora_buckets` folds each adapter into its base weight on the
fly, bucket by bucket, and strips peft's name prefixes. Everything else passes through unchanged.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from rlhf.rollout.base import WeightBucket

PEFT_PREFIX = "base_model.model."
_LORA_A, _LORA_B, _BASE = ".lora_A.", ".lora_B.", ".base_layer."


def merged_lora_buckets(buckets: Iterable[WeightBucket], scale: float, adapter: str = "default") -> Iterator[WeightBucket]:
    """Buckets of a peft LoRA model's state dict → buckets of the merged model, in checkpoint names.

    A base weight is held back until its lora_A and lora_B (adjacent in peft's state dict) arrived;
    a layer whose adapter never completes is a ValueError naming it.
    """
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for bucket in buckets:
        out: WeightBucket = []
        for name, tensor in bucket:
            name = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
            for part, key in ((_LORA_A, "A"), (_LORA_B, "B"), (_BASE, "W")):
                if part in name:
                    layer, _, rest = name.partition(part)
                    if key != "W" and rest != f"{adapter}.weight":
                        break  # another adapter's tensor, or a bias of lora_B: not part of the merge
                    if key == "W" and rest != "weight":
                        out.append((f"{layer}.{rest}", tensor))  # e.g. base_layer.bias
                        break
                    pending.setdefault(layer, {})[key] = tensor
                    if len(pending[layer]) == 3:
                        parts = pending.pop(layer)
                        merged = parts["W"].float() + scale * (parts["B"].float() @ parts["A"].float())
                        out.append((f"{layer}.weight", merged.to(parts["W"].dtype)))
                    break
            else:
                out.append((name, tensor))
        if out:
            yield out
    if pending:
        raise ValueError(f"LoRA merge: layers {sorted(pending)} lack a base weight, lora_A or lora_B ({adapter!r})")
