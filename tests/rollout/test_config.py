"""`ppo.rollout.engine`, `ppo.rollout.vllm.*` and `ppo.algorithm.rollout_correction`: each bad value is
an error naming the field before any worker starts."""
import pytest

from rlhf.config.algorithm import RolloutCorrectionConfig
from rlhf.config.placement import RolePlacement
from rlhf.config.ppo import RolloutConfig, VLLMConfig
from tests.trainers.ppo_fixtures import small_config

ASSETS = {"lm": "lm", "rm": "rm", "train": "t", "eval": "e"}


@pytest.mark.parametrize("build, message", [
    (lambda: RolloutConfig(engine="sglang"), r"rollout.engine='sglang' is invalid: must be one of \['hf', 'vllm'\]"),
    (lambda: VLLMConfig(tensor_parallel_size=2), r"rollout.vllm.tensor_parallel_size=2 is invalid: must be 1"),
    (lambda: VLLMConfig(gpu_memory_utilization=1.5), r"gpu_memory_utilization=1.5 is invalid: must be in \(0, 1\]"),
    (lambda: VLLMConfig(dtype="bf16"), r"rollout.vllm.dtype='bf16' is invalid: must be one of \[None, 'float32'"),
    (lambda: VLLMConfig(sync_bucket_mb=0), r"rollout.vllm.sync_bucket_mb=0 is invalid"),
    (lambda: RolloutCorrectionConfig(mode="is"), r"rollout_correction.mode='is' is invalid: must be one of \['off', 'tis'\]"),
    (lambda: RolloutCorrectionConfig(cap=0.5), r"rollout_correction.cap=0.5 is invalid: must be >= 1"),
])
def test_field_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_vllm_engine_turns_recompute_on_and_maps_the_actor_dtype():
    rollout = RolloutConfig(engine="vllm")
    assert rollout.recompute("fp32") is True and RolloutConfig().recompute("fp32") is False
    options = rollout.vllm.llm_options("bf16", max_model_len=80)
    assert options["dtype"] == "bfloat16" and options["max_model_len"] == 80 and options["enforce_eager"] is False
    assert VLLMConfig(dtype="float32", max_model_len=64, options={"swap_space": 0}).llm_options("bf16", 80) == dict(
        dtype="float32", tensor_parallel_size=1, gpu_memory_utilization=0.4, max_model_len=64, enforce_eager=False,
        enable_sleep_mode=False, swap_space=0)


def test_cross_field_rules():
    cfg = small_config(ASSETS, rollout__engine="vllm")
    cfg.placement.actor = RolePlacement(num_nodes=1, devices_per_node=2, cpus_per_rank=0.25)
    cfg.rollout.vllm.num_engines = 1
    with pytest.raises(ValueError, match=r"rollout.vllm.num_engines=1 is invalid: must be null or the actor's "
                                         r"data-parallel size \(2\)"):
        cfg.validate()
    cfg.rollout.vllm.num_engines = 2
    cfg.validate()
    cfg = small_config(ASSETS, rollout__engine="vllm", rollout__dtype="bf16")
    with pytest.raises(ValueError, match="rollout.dtype='bf16' is invalid: must be null with rollout.engine=vllm"):
        cfg.validate()
    cfg = small_config(ASSETS, algorithm__rollout_correction=RolloutCorrectionConfig(mode="tis"))
    with pytest.raises(ValueError, match="rollout_correction.mode='tis' is invalid: must be 'off' unless old log-probs "
                                         "are recomputed"):
        cfg.validate()
    cfg.rollout.recompute_logprobs = True
    cfg.validate()
    cfg.algorithm.policy_loss.name = "dro"
    with pytest.raises(ValueError, match="with policy_loss.name=dro"):
        cfg.validate()
