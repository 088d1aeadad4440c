"""TrainEngine / InferenceEngine on CPU, compared across ZeRO stages and world sizes.

The jobs (see conftest.py) train the same tiny Llama on the same global minibatches:
  ref   — 1 rank, stage 0, 1 micro-batch of 4 rows (+ the same with 2 micro-batches of 2 rows,
          + a plain-torch oracle: autograd, clip_grad_norm_, AdamW, LambdaLR; + one update each
          with bf16, ZeRO-1 and CPU offload);
  zero2 — 2 ranks, ZeRO-2, each rank 2 rows as 2 micro-batches of 1 row;
  zero3 — 2 ranks, ZeRO-3 (every parameter partitioned), same split;
  lora_zero3 — the zero3 set-up training a peft LoRA adapter on the same model.
Losses are Σ token CE / the global token count. Rows hold different token counts, so a per-rank or
per-micro-batch mean would give different gradients.
"""
from pathlib import Path

import pytest
import torch

from rlhf.config.engine import EngineConfig
from rlhf.engine import InferenceEngine, init_distributed

from . import _common as c

ATOL = 1e-5


def assert_state_close(actual, expected, atol=ATOL):
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=atol, rtol=0, msg=key)


def test_stage0_update_matches_plain_torch_oracle(engine_jobs):
    """Engine = autograd + clip + AdamW + schedule by hand; the grad norm is reported before clipping."""
    ref, _ = engine_jobs["ref"]
    oracle = ref["oracle"]
    assert_state_close(ref["grads_full"], oracle["grads"], atol=1e-7)
    assert ref["grad_norms"] == pytest.approx(oracle["grad_norms"], rel=1e-6)
    assert min(ref["grad_norms"]) > 0.1 * 10  # well above grad_clip=0.1: clipping was active
    assert_state_close(ref["params_after_2"], oracle["params"], atol=1e-7)
    initial = c.tiny_llama(seed=0).state_dict()
    assert all(not torch.equal(ref["params_after_2"][k], initial[k]) for k in initial)  # every tensor moved


def test_gradient_accumulation_equals_one_full_micro_batch(engine_jobs):
    ref, _ = engine_jobs["ref"]
    assert_state_close(ref["grads_accum"], ref["grads_full"], atol=1e-7)
    assert ref["accum_grad_norms"] == pytest.approx(ref["grad_norms"], rel=1e-6)
    assert_state_close(ref["accum_params_after_2"], ref["params_after_2"])


@pytest.mark.parametrize("job", ["zero2", "zero3"])
def test_two_ranks_take_the_same_update_as_one(engine_jobs, job):
    ref, _ = engine_jobs["ref"]
    result, _ = engine_jobs[job]
    # The norm is of the gradient DeepSpeed hands the optimizer: equal ⇒ same global-loss gradient.
    assert result["grad_norms"] == pytest.approx(ref["grad_norms"], rel=1e-5)
    assert result["lrs"] == pytest.approx(ref["lrs"])
    assert ref["lrs"] == pytest.approx([0.5e-3, 1e-3])  # warm-up of 2 updates
    assert_state_close(result["params_after_2"], ref["params_after_2"])
    assert_state_close(result["uninterrupted"], ref["uninterrupted"])


@pytest.mark.parametrize("job", ["zero2", "zero3"])
def test_deepspeed_default_backward_would_shrink_the_gradient(engine_jobs, job):
    """Negative control: without the backward() correction the gradient is ÷ (2 micro-batches × 2 ranks)."""
    result, _ = engine_jobs[job]
    assert result["naive_grad_norm"] == pytest.approx(result["grad_norms"][0] / 4, rel=1e-5)


@pytest.mark.parametrize("job", ["ref", "zero2", "zero3"])
def test_checkpoint_resume_matches_uninterrupted_run_exactly(engine_jobs, job):
    """A fresh engine (other initial weights) loading the checkpoint takes bit-identical update 3:
    weights, AdamW moments and the scheduler position (update 3 uses the peak lr, not warm-up) restored."""
    result, out = engine_jobs[job]
    assert result["checkpoint_engine"] == "WeightsOnlyCheckpointEngine"  # read with weights_only=True
    assert result["resumed_global_steps"] == 2
    assert result["resumed_stats"]["lr"] == pytest.approx(1e-3)
    assert result["resumed"].keys() == result["uninterrupted"].keys()
    for key, value in result["uninterrupted"].items():
        assert torch.equal(result["resumed"][key], value), key
    assert [p.name for p in (out / "runs").iterdir()] == ["ckpt"]  # wrote only inside the given dir


@pytest.mark.parametrize("variant", ["bf16_stage0", "bf16_zero2", "zero1", "zero2_offload", "zero3_offload_all"])
def test_other_setups_take_the_same_first_gradient(engine_jobs, variant):
    """bf16, ZeRO-1 and CPU offload (torch AdamW with zero_force_ds_cpu_optimizer off) all run and
    see the same gradient norm as the fp32 stage-0 reference (bf16: within bf16 precision)."""
    ref, _ = engine_jobs["ref"]
    result = ref["variants"][variant]
    bf16 = variant.startswith("bf16")
    assert result["grad_norm"] == pytest.approx(ref["grad_norms"][0], rel=1e-2 if bf16 else 1e-5)
    assert result["dtypes"] == (["torch.bfloat16"] if bf16 else ["torch.float32"])
    initial = c.tiny_llama(seed=0).state_dict()
    if bf16:  # a 1e-3 step on a weight near 1.0 (the norms) is below bf16 resolution: those stay put
        assert set(result["moved"]) >= {k for k in initial if "norm" not in k}
    else:
        assert set(result["moved"]) == set(initial)


@pytest.mark.parametrize("job", ["ref", "zero2", "zero3"])
def test_non_finite_gradients_are_never_applied_and_raise(engine_jobs, job):
    """Issue 16 §4: a finite loss with a NaN gradient (on one rank only, for 2 ranks) stops the update
    with NonFiniteGradError and leaves the weights as they were. Stage 0 would otherwise apply NaN
    (DeepSpeed checks only under ZeRO); under ZeRO-2/3 DeepSpeed skips the step, and the run must not
    go on as if it had trained. Rank 0 raised although its own gradient was finite."""
    result, _ = engine_jobs[job]
    nan = result["nan_gradient"]
    assert nan["loss_finite"] and nan["unchanged"]
    assert nan["error"] and "non-finite" in nan["error"] and "update 1" in nan["error"], nan


def test_resume_under_another_lr_schedule_is_refused(engine_jobs):
    ref, _ = engine_jobs["ref"]
    assert "'total_steps': (4, 8)" in ref.get("schedule_mismatch_error", "no error raised")


@pytest.mark.parametrize("job", ["ref", "zero3"])
def test_hf_export_reloads_with_identical_weights_and_logits(engine_jobs, job):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, _ = engine_jobs[job]
    model = AutoModelForCausalLM.from_pretrained(result["hf_dir"]).eval()
    assert any(p.suffix == ".safetensors" for p in __import__("pathlib").Path(result["hf_dir"]).iterdir())
    for key, value in result["uninterrupted"].items():  # the export follows update 3
        assert torch.equal(model.state_dict()[key], value), key
    with torch.no_grad():
        logits = model(**c.global_batch(99)).logits
    torch.testing.assert_close(logits, result["eval_logits"], atol=1e-6, rtol=0)
    assert AutoTokenizer.from_pretrained(result["hf_dir"]).pad_token == "<pad>"


def test_zero3_inference_engine_partitions_and_matches_plain_forward(engine_jobs):
    result, _ = engine_jobs["zero3"]
    assert result["z3_inference_partitioned"]
    with torch.no_grad():
        expected = c.tiny_llama(seed=0).eval()(**c.global_batch(99)).logits
    torch.testing.assert_close(result["z3_inference_logits"], expected, atol=1e-5, rtol=0)


def test_ds_accelerator_pinned_to_cpu_without_cuda(engine_jobs):
    if torch.cuda.is_available():
        pytest.skip("DS_ACCELERATOR is left to DeepSpeed on GPU machines")
    assert engine_jobs["ref"][0]["ds_accelerator"] == "cpu"


def test_stage0_inference_engine_is_frozen_eval_module_without_process_group():
    model = c.tiny_llama(seed=0)
    with torch.no_grad():
        expected = model(**c.global_batch(99)).logits
    engine = InferenceEngine(model, EngineConfig(zero_stage=0))
    out = engine(**c.global_batch(99)).logits
    assert not out.requires_grad and not engine.module.training
    assert all(not p.requires_grad for p in engine.module.parameters())
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    bf16 = InferenceEngine(c.tiny_llama(seed=0), EngineConfig(dtype="bf16"))
    assert {p.dtype for p in bf16.module.parameters()} == {torch.bfloat16}


def test_inference_engine_rejects_zero_stage_without_optimizer_support():
    with pytest.raises(ValueError, match="EngineConfig.zero_stage=2"):
        InferenceEngine(c.tiny_llama(seed=0), EngineConfig(zero_stage=2))


def test_init_distributed_names_missing_environment(monkeypatch):
    if torch.distributed.is_initialized():
        pytest.skip("a process group already exists in this test process")
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match=r"missing \['WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'LOCAL_RANK'\]"):
        init_distributed()


def test_lora_under_zero3_trains_resumes_and_exports_merged(engine_jobs):
    """A peft LoRA model on 2 ranks at ZeRO-3: only the adapter trains, 3 updates equal plain torch's on
    the full batch; a fresh engine with OTHER base weights and adapter init, resumed from the checkpoint,
    takes a bit-identical update 3 (frozen base weights are restored too); the export is a plain
    transformers model computing the engine's logits, with peft's adapter files under adapter/."""
    import transformers

    result, _ = engine_jobs["lora_zero3"]
    assert result["trainable"] and all(".lora_A." in n or ".lora_B." in n for n in result["trainable"])
    assert_state_close(result["uninterrupted"], result["oracle"], atol=1e-6)
    initial = c.tiny_llama(seed=0).state_dict()
    for name, value in result["uninterrupted"].items():
        plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert ("lora_" in name) or torch.equal(value, initial[plain]), name  # the base never moved
        assert torch.equal(result["resumed"][name], value), name
    hf_dir = result["hf_dir"]
    with torch.no_grad():
        merged = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
        torch.testing.assert_close(merged(**c.global_batch(99)).logits, result["eval_logits"], atol=1e-5, rtol=0)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (Path(hf_dir) / "adapter").iterdir()}
