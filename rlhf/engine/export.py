"""Write an engine's model as a Hugging Face directory (safetensors + config + tokenizer).

Under ZeRO-3 every rank holds only a shard of each parameter, so the full tensors are gathered one
parameter at a time (bounded memory: one full parameter at a time, plus rank 0's CPU copy of the
state dict). Gathering is a collective: every rank must call `export_hf`, and only rank 0 writes.
A LoRA (peft) model is exported merged, with its adapter beside it (`export_hf`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from rlhf.engine.distributed import barrier, import_deepspeed, rank
from rlhf.models.lora import is_peft_model, lora_merge_plan, merged_tensors

ADAPTER_DIR = "adapter"  # a LoRA export's adapter alone, beside the merged model


def full_state_dict(module: torch.nn.Module, zero3: bool) -> dict[str, torch.Tensor] | None:
    """The module's complete state dict as CPU tensors on rank 0; None on other ranks.

    Keys are those of `module.state_dict()` (tied weights keep every name). With `zero3`, each
    parameter is gathered with `deepspeed.zero.GatheredParameters` — on all ranks, in the same order.
    """
    is_writer = rank() == 0
    params = dict(module.named_parameters(remove_duplicate=False))
    out: dict[str, torch.Tensor] = {}
    gathered = import_deepspeed().zero.GatheredParameters if zero3 else None
    for key, value in module.state_dict().items():
        param = params.get(key)
        if param is not None and zero3:
            with gathered([param], modifier_rank=None):
                if is_writer:
                    out[key] = param.detach().to("cpu", copy=True)
        elif is_writer:
            tensor = param if param is not None else value
            out[key] = tensor.detach().to("cpu", copy=True)
    return out if is_writer else None


def full_tensor_buckets(module: torch.nn.Module, zero3: bool, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The module's full tensors as CPU copies, in buckets of about `bucket_bytes`, on EVERY rank.

    For a weight sync to rollout engines (each rank feeds its own): at most one bucket of full
    tensors is held at a time (plus the parameter being gathered), never the whole model. With
    `zero3` each parameter is gathered with `GatheredParameters` — a collective, so every rank must
    consume the iterator to the end, in the same order. Keys are `module.state_dict()`'s; a tied
    parameter (e.g. an LM head sharing the embedding) is sent once, under its first name, as a
    checkpoint of a tied model holds it.
    """
    params = dict(module.named_parameters(remove_duplicate=False))
    gathered = import_deepspeed().zero.GatheredParameters if zero3 else None
    bucket: list[tuple[str, torch.Tensor]] = []
    size, sent = 0, set()
    for key, value in module.state_dict().items():
        param = params.get(key)
        if param is not None:
            if id(param) in sent:
                continue
            sent.add(id(param))
        if param is not None and zero3:
            with gathered([param], modifier_rank=None):
                tensor = param.detach().to("cpu", copy=True)
        else:
            tensor = (param if param is not None else value).detach().to("cpu", copy=True)
        bucket.append((key, tensor))
        size += tensor.numel() * tensor.element_size()
        if size >= bucket_bytes:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def export_hf(module: torch.nn.Module, out_dir: str | Path, zero3: bool, tokenizer=None) -> Path:
    """Save `module` (a transformers PreTrainedModel, plain or peft LoRA) so `from_pretrained` reloads it.

    A LoRA model is written merged (`W + s·B@A`, peft's names stripped), so the directory is a plain
    HF model of the base class that the next stage, vLLM or any user loads without peft; its adapter
    alone goes to `out_dir/adapter/` as well (peft's format: `PeftModel.from_pretrained(base, ...)`).
    Collective: call on every rank. Rank 0 writes `out_dir` (safetensors weights, config, generation
    config, and the tokenizer if given); all ranks return after the files exist.
    """
    if not hasattr(module, "save_pretrained"):
        raise TypeError(f"export_hf needs a transformers model with save_pretrained, got {type(module).__name__}")
    out_dir = Path(out_dir)
    plan = lora_merge_plan(module) if is_peft_model(module) else None  # before the gather: fail on every rank
    state_dict = full_state_dict(module, zero3)
    if state_dict is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if plan is None:
            module.save_pretrained(out_dir, state_dict=state_dict)
        else:
            module.save_pretrained(out_dir / ADAPTER_DIR, state_dict=state_dict)  # peft keeps the adapter's keys
            merged = dict(merged_tensors(state_dict.items(), plan))
            module.get_base_model().save_pretrained(out_dir, state_dict=merged)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
    barrier()
    return out_dir
