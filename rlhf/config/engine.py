"""`EngineConfig`: how one role's model is trained or served by DeepSpeed (DESIGN.md §5).

One instance per role (actor, critic, reward, reference). `rlhf.engine.build_deepspeed_config` turns
it into DeepSpeed's JSON dict; `rlhf.engine.TrainEngine` builds the AdamW optimizer and the LR
schedule from it. Plain dataclass with OmegaConf-compatible types, so it becomes a Hydra structured
config as is. Every field is validated in `__post_init__`; an invalid value raises ValueError naming
the field, the value and what is allowed — nothing is silently fixed up later.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

ZERO_STAGES = (0, 1, 2, 3)
DTYPES = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class EngineConfig:
    # ZeRO stage: 0 = plain data parallel (full replicas), 1 = optimizer state sharded, 2 = + gradients
    # sharded, 3 = + parameters sharded. Forward-only roles (reference, reward) allow only 0 or 3.
    zero_stage: int = 0
    # Keep the optimizer state (and its fp32 master weights) in CPU memory (ZeRO-Offload). Needs
    # zero_stage >= 1. The optimizer stays torch's AdamW (no DeepSpeedCPUAdam compile): correct, but
    # slower than DeepSpeedCPUAdam on large GPU jobs.
    offload_optimizer: bool = False
    # Keep the sharded parameters in CPU memory between uses (ZeRO-Infinity). Needs zero_stage == 3.
    offload_params: bool = False
    # Parameter/compute dtype: "fp32" (CPU default), "bf16" (GPU default) or "fp16" (dynamic loss
    # scaling). The optimizer keeps fp32 master weights for bf16/fp16 under ZeRO.
    dtype: str = "fp32"
    # Clip the global gradient 2-norm to this value before each optimizer step; None disables. > 0.
    grad_clip: float | None = 1.0
    # AdamW peak learning rate (reached after warm-up). > 0.
    lr: float = 1e-5
    # AdamW decoupled weight decay, applied to every trained parameter. >= 0.
    weight_decay: float = 0.0
    # AdamW (beta1, beta2), each in [0, 1). A list (not a tuple) so OmegaConf can hold it.
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # AdamW epsilon added to the denominator. > 0.
    adam_eps: float = 1e-8
    # LR after warm-up: "constant" (peak lr) or "cosine" (decay to min_lr_ratio * lr at total_steps).
    lr_schedule: str = "constant"
    # Optimizer steps of linear warm-up: update k (0-based) uses lr * (k + 1) / warmup_steps. >= 0.
    warmup_steps: int = 0
    # Optimizer steps of the whole run; cosine needs it > warmup_steps. 0 = unknown (constant only).
    total_steps: int = 0
    # Cosine floor as a fraction of lr, in [0, 1].
    min_lr_ratio: float = 0.0
    # ZeRO-3: parameters with fewer elements than this stay whole on every rank (DeepSpeed's
    # stage3_param_persistence_threshold; saves gathers of tiny tensors). >= 0. Tests set 0 so that
    # tiny models are really partitioned.
    zero3_param_persistence_threshold: int = 100_000
    # Elements per ZeRO communication bucket (DeepSpeed's reduce_bucket_size and, for stages 1–2,
    # allgather_bucket_size; stage3_prefetch_bucket_size for 3). ZeRO-1/2 allocate a fresh buffer of
    # this size per micro-batch, so DeepSpeed's 5e8 default (2 GB in fp32) costs seconds per step on
    # CPU; 5e7 keeps GPU communication efficient. >= 1.
    zero_bucket_size: int = 50_000_000

    def __post_init__(self) -> None:
        if self.zero_stage not in ZERO_STAGES:
            _invalid("zero_stage", self.zero_stage, f"one of {list(ZERO_STAGES)}")
        if self.offload_optimizer and self.zero_stage == 0:
            _invalid("offload_optimizer", self.offload_optimizer, "True only with zero_stage 1, 2 or 3 "
                     f"(zero_stage is {self.zero_stage})")
        if self.offload_params and self.zero_stage != 3:
            _invalid("offload_params", self.offload_params,
                     f"True only with zero_stage 3 (zero_stage is {self.zero_stage})")
        if self.dtype not in DTYPES:
            _invalid("dtype", self.dtype, f"one of {list(DTYPES)}")
        if self.grad_clip is not None and not (_finite(self.grad_clip) and self.grad_clip > 0):
            _invalid("grad_clip", self.grad_clip, "a float > 0, or None to disable clipping")
        if not (_finite(self.lr) and self.lr > 0):
            _invalid("lr", self.lr, "a float > 0")
        if not (_finite(self.weight_decay) and self.weight_decay >= 0):
            _invalid("weight_decay", self.weight_decay, "a float >= 0")
        betas = list(self.adam_betas)
        if len(betas) != 2 or not all(_finite(b) and 0 <= b < 1 for b in betas):
            _invalid("adam_betas", self.adam_betas, "two floats [beta1, beta2], each in [0, 1)")
        if not (_finite(self.adam_eps) and self.adam_eps > 0):
            _invalid("adam_eps", self.adam_eps, "a float > 0")
        if self.lr_schedule not in LR_SCHEDULES:
            _invalid("lr_schedule", self.lr_schedule, f"one of {list(LR_SCHEDULES)}")
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            _invalid("warmup_steps", self.warmup_steps, "an int >= 0")
        if not _is_int(self.total_steps) or self.total_steps < 0:
            _invalid("total_steps", self.total_steps, "an int >= 0 (0 = unknown)")
        if self.lr_schedule == "cosine" and self.total_steps <= self.warmup_steps:
            _invalid("total_steps", self.total_steps, "an int > warmup_steps "
                     f"({self.warmup_steps}) when lr_schedule is 'cosine'")
        if not (_finite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1):
            _invalid("min_lr_ratio", self.min_lr_ratio, "a float in [0, 1]")
        if not _is_int(self.zero3_param_persistence_threshold) or self.zero3_param_persistence_threshold < 0:
            _invalid("zero3_param_persistence_threshold", self.zero3_param_persistence_threshold, "an int >= 0")
        if not _is_int(self.zero_bucket_size) or self.zero_bucket_size < 1:
            _invalid("zero_bucket_size", self.zero_bucket_size, "an int >= 1")


def _invalid(name: str, value, allowed: str):
    raise ValueError(f"EngineConfig.{name}={value!r} is invalid: must be {allowed}")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
