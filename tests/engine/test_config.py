"""EngineConfig validation, the DeepSpeed config dict and the LR schedule: pure, no processes."""
import math

import pytest

from rlhf.config.engine import EngineConfig
from rlhf.engine import build_deepspeed_config, lr_factor


def test_defaults_are_valid_and_structured_config_compatible():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.structured(EngineConfig)
    assert cfg.zero_stage == 0 and cfg.dtype == "fp32" and list(cfg.adam_betas) == [0.9, 0.999]
    assert omegaconf.OmegaConf.to_object(cfg) == EngineConfig()
    bad = omegaconf.OmegaConf.merge(cfg, {"zero_stage": 5})  # Hydra override: validated on to_object
    with pytest.raises(ValueError, match="EngineConfig.zero_stage=5"):
        omegaconf.OmegaConf.to_object(bad)


@pytest.mark.parametrize("field, value, allowed", [
    ("zero_stage", 4, "one of [0, 1, 2, 3]"),
    ("offload_optimizer", True, "zero_stage 1, 2 or 3"),
    ("offload_params", True, "only with zero_stage 3"),
    ("dtype", "fp8", "one of ['fp32', 'bf16', 'fp16']"),
    ("grad_clip", 0.0, "> 0, or None"),
    ("grad_clip", float("nan"), "> 0, or None"),
    ("lr", -1e-5, "> 0"),
    ("weight_decay", -0.1, ">= 0"),
    ("adam_betas", [0.9], "two floats"),
    ("adam_betas", [0.9, 1.0], "two floats"),
    ("adam_eps", 0.0, "> 0"),
    ("lr_schedule", "linear", "one of ['constant', 'cosine']"),
    ("warmup_steps", -1, ">= 0"),
    ("warmup_steps", 1.5, "an int"),
    ("total_steps", -3, ">= 0"),
    ("min_lr_ratio", 1.5, "in [0, 1]"),
    ("zero3_param_persistence_threshold", -1, ">= 0"),
    ("zero_bucket_size", 0, ">= 1"),
])
def test_invalid_value_names_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ValueError) as err:
        EngineConfig(**{field: value})
    message = str(err.value)
    assert f"EngineConfig.{field}={value!r}" in message and allowed in message


def test_cosine_needs_total_steps_beyond_warmup():
    with pytest.raises(ValueError, match=r"EngineConfig.total_steps=10 .*> warmup_steps \(10\)"):
        EngineConfig(lr_schedule="cosine", warmup_steps=10, total_steps=10)
    EngineConfig(lr_schedule="cosine", warmup_steps=10, total_steps=11)
    EngineConfig(zero_stage=3, offload_optimizer=True, offload_params=True, grad_clip=None)


def test_deepspeed_config_for_training():
    cfg = EngineConfig(zero_stage=2, offload_optimizer=True, dtype="bf16", grad_clip=0.5)
    ds = build_deepspeed_config(cfg, micro_batch_size=4, grad_accum_steps=3, world_size=2)
    assert ds["train_batch_size"] == 24 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": False},
                                       "reduce_bucket_size": 50_000_000, "allgather_bucket_size": 50_000_000}
    assert ds["bf16"] == {"enabled": True} and ds["fp16"]["enabled"] is False
    assert ds["gradient_clipping"] == 0.5
    # torch AdamW as a client optimizer, also under offload (documented in EngineConfig.offload_optimizer)
    assert ds["zero_allow_untested_optimizer"] and ds["zero_force_ds_cpu_optimizer"] is False
    assert "optimizer" not in ds and "scheduler" not in ds
    assert build_deepspeed_config(EngineConfig(grad_clip=None), 1, 1, 1)["gradient_clipping"] == 0.0


def test_deepspeed_config_zero3_and_inference():
    cfg = EngineConfig(zero_stage=3, offload_optimizer=True, offload_params=True,
                       zero3_param_persistence_threshold=0, zero_bucket_size=1000)
    ds = build_deepspeed_config(cfg, 2, 1, 4, train=False)
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 0
    assert zero["reduce_bucket_size"] == zero["stage3_prefetch_bucket_size"] == 1000
    assert "offload_param" in zero and "offload_optimizer" not in zero  # no optimizer when forward-only
    assert "gradient_clipping" not in ds and ds["train_batch_size"] == 8
    for stage in (1, 2):
        with pytest.raises(ValueError, match=rf"EngineConfig.zero_stage={stage} .*forward-only"):
            build_deepspeed_config(EngineConfig(zero_stage=stage), 1, 1, 1, train=False)


@pytest.mark.parametrize("name", ["micro_batch_size", "grad_accum_steps", "world_size"])
def test_deepspeed_config_rejects_bad_batch_geometry(name):
    sizes = {"micro_batch_size": 1, "grad_accum_steps": 1, "world_size": 1, name: 0}
    with pytest.raises(ValueError, match=name):
        build_deepspeed_config(EngineConfig(), **sizes)


def test_lr_warmup_then_constant():
    assert [lr_factor(s, 4, "constant", 0, 0.0) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, 0, "constant", 0, 0.0) == 1.0


def test_lr_warmup_then_cosine_to_floor():
    factors = [lr_factor(s, 2, "cosine", 6, 0.1) for s in range(8)]
    expected = [0.5, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)] + [0.1]
    assert factors == pytest.approx(expected)
    assert factors[2] == 1.0 and factors[4] == pytest.approx(0.55) and factors[6] == pytest.approx(0.1)


def test_lambda_lr_gives_lr_times_factor_per_update():
    """The LambdaLR TrainEngine builds: update k uses lr * lr_factor(k)."""
    import torch

    from rlhf.engine.ds_config import lr_lambda

    cfg = EngineConfig(lr=2.0, warmup_steps=2, lr_schedule="cosine", total_steps=4, min_lr_ratio=0.0)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1.0, 2.0, 2.0, 1.0, 0.0])
