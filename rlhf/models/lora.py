"""Fold a peft LoRA model's tensors into plain checkpoint tensors: for exports and weight syncs.

A LoRA layer computes `W x + s · B (A x)` with `s` its scaling (alpha / r, alpha / sqrt(r) under
rsLoRA, or a per-layer pattern), so its merged weight is `W + s · B @ A` (transposed for GPT-2's
`Conv1D`, whose weight is stored fan-in first). peft names the parts
`<layer>.base_layer.weight`, `<layer>.lora_A.<adapter>.weight`, `<layer>.lora_B.<adapter>.weight`, all
under `base_model.model.`; a sequence classifier's head is a full trainable copy
(`<head>.modules_to_save.<adapter>.weight`, next to the frozen `<head>.original_module.weight`).

`merged_tensors` turns that stream of (name, tensor) into the plain model's, holding back only the
parts of layers whose adapter is still incomplete, so it works bucket by bucket (a weight sync never
holds the whole model) as well as on a whole state dict (an export). `lora_merge_plan` reads each
layer's scaling from the live model, so whatever peft config made the adapter, the merge is exact; a
LoRA variant this cannot merge (DoRA, a LoRA'd embedding or convolution) is refused when the model is
wrapped, naming the layer, not at the end of training.

    plan = lora_merge_plan(peft_model)
    merged = dict(merged_tensors(peft_model.state_dict().items(), plan))   # loads into the base class
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import torch

PEFT_PREFIX = "base_model.model."
_LORA_A, _LORA_B, _BASE = ".lora_A.", ".lora_B.", ".base_layer."
_SAVED_COPY, _ORIGINAL = ".modules_to_save.", ".original_module."


@dataclass(frozen=True)
class LoraLayer:
    """How one adapted layer merges: W + scale · (B @ A), transposed when `fan_in_fan_out`."""

    scale: float
    fan_in_fan_out: bool = False


@dataclass(frozen=True)
class LoraMergePlan:
    """Every adapted layer of one adapter, by its name in the plain model (no peft prefix); `default`
    applies to any layer not listed (None: an unlisted layer is an error)."""

    layers: Mapping[str, LoraLayer]
    adapter: str = "default"
    default: LoraLayer | None = None

    def layer(self, name: str) -> LoraLayer:
        if name in self.layers:
            return self.layers[name]
        if self.default is None:
            raise ValueError(f"LoRA merge: {name!r} holds {self.adapter!r} adapter weights but is not a LoRA layer "
                             f"of the model (known: {len(self.layers)} layers)")
        return self.default


def is_peft_model(model) -> bool:
    """True for a peft-wrapped model (what `apply_training_options` returns with lora_rank > 0)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def lora_merge_plan(model, adapter: str = "default") -> LoraMergePlan:
    """The merge plan of a peft model's `adapter`, read from its layers (no parameter is touched, so it
    works on ZeRO-3 shards). Raises ValueError naming a layer whose LoRA variant cannot be merged."""
    layers = {}
    for name, module in model.named_modules():
        scaling = getattr(module, "scaling", None)
        if not isinstance(scaling, dict) or adapter not in scaling:
            continue
        name = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
        unsupported = [part for part in ("lora_magnitude_vector", "lora_embedding_A")
                       if adapter in (getattr(module, part, None) or {})]
        base = getattr(module, "base_layer", None)
        if unsupported or type(base).__name__ not in ("Linear", "Conv1D"):
            what = "DoRA" if "lora_magnitude_vector" in unsupported else f"a LoRA'd {type(base).__name__}"
            raise ValueError(f"LoRA layer {name!r} is {what}; only LoRA on Linear/Conv1D layers can be merged into "
                             f"a plain checkpoint: leave this module out of model.options.lora_target_modules")
        layers[name] = LoraLayer(float(scaling[adapter]), bool(getattr(module, "fan_in_fan_out", False)))
    if not layers:
        raise ValueError(f"LoRA merge: the model has no layer of adapter {adapter!r}")
    return LoraMergePlan(layers, adapter)


def merged_tensors(items: Iterable[tuple[str, torch.Tensor]], plan: LoraMergePlan) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of a peft model's state dict → (name, tensor) of the merged plain model.

    Tensors that need no merge pass through at once (renamed); a base weight waits for its lora_A and
    lora_B. Other adapters' tensors and a classifier head's frozen original are dropped. Raises
    ValueError naming the layers whose base weight, lora_A or lora_B never came.
    """
    merger = LoraMerger(plan)
    yield from merger.merge(items)
    merger.close()


class LoraMerger:
    """`merged_tensors` fed in pieces (e.g. a weight sync's buckets): `merge` each piece, then `close`."""

    def __init__(self, plan: LoraMergePlan):
        self.plan = plan
        self.pending: dict[str, dict[str, torch.Tensor]] = {}

    def merge(self, items: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        own = f"{self.plan.adapter}."
        for name, tensor in items:
            name = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
            if _ORIGINAL in name:
                continue
            if _SAVED_COPY in name:
                layer, _, rest = name.partition(_SAVED_COPY)
                if rest.startswith(own):
                    yield f"{layer}.{rest[len(own):]}", tensor
                continue
            part = next((p for p in (_LORA_A, _LORA_B, _BASE) if p in name), None)
            if part is None:
                yield name, tensor
                continue
            layer, _, rest = name.partition(part)
            if part == _BASE and rest != "weight":
                yield f"{layer}.{rest}", tensor  # e.g. the base layer's bias
                continue
            if part != _BASE and rest != f"{own}weight":
                continue  # another adapter's tensor
            parts = self.pending.setdefault(layer, {})
            parts[{_LORA_A: "A", _LORA_B: "B", _BASE: "W"}[part]] = tensor
            if len(parts) == 3:
                yield f"{layer}.weight", _merge(self.pending.pop(layer), self.plan.layer(layer))

    def close(self) -> None:
        """Raise ValueError naming the layers still missing a part."""
        if self.pending:
            raise ValueError(f"LoRA merge: layers {sorted(self.pending)} lack a base weight, lora_A or lora_B "
                             f"({self.plan.adapter!r})")


def _merge(parts: dict[str, torch.Tensor], layer: LoraLayer) -> torch.Tensor:
    delta = parts["B"].float() @ parts["A"].float()
    if layer.fan_in_fan_out:
        delta = delta.T
    return (parts["W"].float() + layer.scale * delta).to(parts["W"].dtype)


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters; with LoRA the trainable ones are the adapter (plus a classifier
    head's trainable copy). Under ZeRO-3 each counts at its full size (`ds_numel`), not the local shard."""
    params = list(model.parameters())
    size = [getattr(p, "ds_numel", p.numel()) for p in params]
    return sum(n for n, p in zip(size, params) if p.requires_grad), sum(size)
