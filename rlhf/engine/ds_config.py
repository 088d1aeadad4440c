"""`EngineConfig` → DeepSpeed's config dict, and the learning-rate schedule. Pure functions.

Kept free of DeepSpeed imports so they are unit-tested without starting a process group.
"""
from __future__ import annotations

import functools
import math

import torch

from rlhf.config.engine import EngineConfig

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Forward-only engines have no optimizer; DeepSpeed accepts that only for these stages.
INFERENCE_ZERO_STAGES = (0, 3)


def build_deepspeed_config(cfg: EngineConfig, micro_batch_size: int, grad_accum_steps: int,
                           world_size: int, train: bool = True) -> dict:
    """DeepSpeed JSON config for one role.

    `micro_batch_size` rows per rank per forward, `grad_accum_steps` micro-batches per optimizer step,
    `world_size` data-parallel ranks (DeepSpeed checks train_batch_size = product of the three).
    `train=False` builds a forward-only config (no clipping, no optimizer offload) and allows only
    ZeRO stage 0 or 3. The optimizer is not in here: TrainEngine passes torch's AdamW as a client
    optimizer (no DeepSpeed op compile), hence `zero_allow_untested_optimizer` and, for optimizer
    offload, `zero_force_ds_cpu_optimizer: false`. Pinned CPU memory is off (it only helps on GPU).
    """
    for name, value in (("micro_batch_size", micro_batch_size), ("grad_accum_steps", grad_accum_steps),
                        ("world_size", world_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"build_deepspeed_config: {name}={value!r} must be an int >= 1")
    if not train and cfg.zero_stage not in INFERENCE_ZERO_STAGES:
        raise ValueError(f"EngineConfig.zero_stage={cfg.zero_stage!r} is invalid for a forward-only engine: "
                         f"must be one of {list(INFERENCE_ZERO_STAGES)} (DeepSpeed needs an optimizer for 1/2)")
    zero: dict = {"stage": cfg.zero_stage}
    if train and cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if cfg.zero_stage in (1, 2):
        zero.update(reduce_bucket_size=cfg.zero_bucket_size, allgather_bucket_size=cfg.zero_bucket_size)
    if cfg.zero_stage == 3:
        zero.update(reduce_bucket_size=cfg.zero_bucket_size, stage3_prefetch_bucket_size=cfg.zero_bucket_size,
                    stage3_param_persistence_threshold=cfg.zero3_param_persistence_threshold)
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": micro_batch_size * grad_accum_steps * world_size,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.dtype == "bf16"},
        # loss_scale 0 = dynamic loss scaling.
        "fp16": {"enabled": cfg.dtype == "fp16", "loss_scale": 0},
        "steps_per_print": 2**31 - 1,  # we log metrics ourselves
        "wall_clock_breakdown": False,
    }
    if train:
        config["gradient_clipping"] = float(cfg.grad_clip) if cfg.grad_clip is not None else 0.0
        config["zero_allow_untested_optimizer"] = True
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def lr_factor(step: int, warmup_steps: int, schedule: str, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer update number `step` (0-based).

    Warm-up: (step + 1) / warmup_steps for step < warmup_steps, so the first update already moves
    and update warmup_steps - 1 uses the peak. Then "constant": 1; "cosine": from 1 at
    step == warmup_steps down to min_lr_ratio at step == total_steps (and min_lr_ratio after).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose 'constant' or 'cosine'")


def lr_lambda(cfg: EngineConfig):
    """`lr_factor` bound to `cfg`'s schedule fields, for torch's LambdaLR.

    A functools.partial, not a callable object, so LambdaLR's checkpoint holds only the position
    (last_epoch, base and last lr) and not a copy of the schedule; TrainEngine instead refuses to
    resume under a different schedule (`schedule_fields`).
    """
    return functools.partial(lr_factor, warmup_steps=cfg.warmup_steps, schedule=cfg.lr_schedule,
                             total_steps=cfg.total_steps, min_lr_ratio=cfg.min_lr_ratio)


def schedule_fields(cfg: EngineConfig) -> dict:
    """The config fields that define the lr of every update; a checkpoint records them so a resume
    under a different schedule fails loudly instead of mixing the two."""
    return {"lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "warmup_steps": cfg.warmup_steps,
            "total_steps": cfg.total_steps, "min_lr_ratio": cfg.min_lr_ratio}
