"""TRL on the same workload: its four-model PPOTrainer (trl==1.12.0, the last release that has it, in
`trl.experimental.ppo`) and its RewardTrainer. Needs the bench extra: pip install -e ".[bench]".

Settings that differ from TRL's defaults, each to run the *same* work as ours:
  bf16=False, gradient_checkpointing=False   fp32, no recomputation (TRL defaults both to True)
  stop_token=None                             no EOS stop (our EOS is unsampleable anyway)
  num_sample_generations=0, report_to="none", save_strategy="no"   no evaluation, logging or saving
TRL trains policy and value in one optimizer over one summed loss (its PolicyAndValueWrapper); that is
its design, kept as is. Iterations are timed between TRL's `on_step_end` callbacks (one per PPO
batch); the rollout's `batch_generation` is wrapped to time generation separately.
"""
from __future__ import annotations

import os
import tempfile
import time

from bench.monitor import CpuMonitor, Measured, Policy, loop_profiler, peak_rss_mb
from bench.workload import Assets, Workload, load_pairs, load_prompts


class _Enough(Exception):
    """Raised from the callback to leave TRL's train loop once enough clean iterations are in."""


def _quiet_env() -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")


def _timing_callback(measured: Measured, monitor: CpuMonitor, w_tokens: int, extra: dict):
    """A TrainerCallback that closes one measured iteration per `on_step_end`."""
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def __init__(self) -> None:
            self.token = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.token = monitor.start()

        def on_step_end(self, args, state, control, **kwargs):
            window = monitor.stop(self.token)
            seconds = window.wall
            record = {"seconds": seconds, "tokens_per_s": w_tokens / seconds if w_tokens else 0.0}
            if "generate" in extra:
                record["stage/generate"] = extra.pop("generate")
            if w_tokens == 0:
                record.pop("tokens_per_s")
            measured.add(record, window)
            if measured.done():
                raise _Enough()
            self.token = monitor.start()  # the snapshot itself is outside the next window

    return Timing()


def trl_ppo(assets: Assets, w: Workload, policy: Policy, threads: int) -> dict:
    _quiet_env()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    import trl
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo_module

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(assets.policy, padding_side="left")
    policy_model = AutoModelForCausalLM.from_pretrained(assets.policy, dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(assets.policy, dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(assets.value, num_labels=1, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(assets.reward, num_labels=1, dtype=torch.float32)
    prompts = [p.input_ids for p in load_prompts(assets)]
    train = Dataset.from_dict({"input_ids": prompts})
    evaluation = Dataset.from_dict({"input_ids": prompts[:w.batch]})

    extra: dict = {}
    original = trl_ppo_module.batch_generation

    def timed_generation(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            extra["generate"] = extra.get("generate", 0.0) + time.perf_counter() - start

    trl_ppo_module.batch_generation = timed_generation
    measured = Measured(policy)
    with tempfile.TemporaryDirectory() as out_dir:
        args = PPOConfig(
            output_dir=out_dir, per_device_train_batch_size=w.batch, gradient_accumulation_steps=1,
            num_mini_batches=1, num_ppo_epochs=1, local_rollout_forward_batch_size=w.batch,
            total_episodes=w.batch * policy.max_total, response_length=w.response_len, temperature=w.temperature,
            kl_coef=w.kl_coef, kl_estimator="k1", cliprange=w.clip, cliprange_value=w.value_clip, gamma=w.gamma,
            lam=w.lam, whiten_rewards=False, stop_token=None, missing_eos_penalty=None, learning_rate=w.lr,
            num_sample_generations=0, report_to="none", save_strategy="no", logging_strategy="no",
            bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, disable_tqdm=True,
            dataloader_num_workers=0, seed=w.seed)
        trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy_model, ref_model=ref_model,
                             reward_model=reward_model, train_dataset=train, value_model=value_model,
                             eval_dataset=evaluation,
                             callbacks=[_timing_callback(measured, CpuMonitor(), w.generated_tokens, extra)])
        torch.set_num_threads(threads)  # accelerate may have changed it
        try:
            with loop_profiler():
                trainer.train()
        except _Enough:
            pass
    trl_ppo_module.batch_generation = original
    return {"trl_version": trl.__version__, "threads": torch.get_num_threads(), "records": measured.records,
            **measured.summary(), "memory": {"peak_rss_mb": peak_rss_mb()}}


def trl_reward(assets: Assets, w: Workload, policy: Policy, threads: int) -> dict:
    """TRL RewardTrainer on the same pairs (pre-tokenized: no EOS appended), 16 pairs per step."""
    _quiet_env()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import trl
    from trl import RewardConfig, RewardTrainer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(assets.tokenizer, padding_side="right")
    model = AutoModelForSequenceClassification.from_pretrained(assets.policy, num_labels=1, dtype=torch.float32)
    pairs = load_pairs(assets)
    steps = policy.max_total
    rows = [pairs[i % len(pairs)] for i in range(steps * w.rm_pairs)]
    data = Dataset.from_dict({"chosen_ids": [p["chosen"] for p in rows], "rejected_ids": [p["rejected"] for p in rows]})
    measured = Measured(policy)
    with tempfile.TemporaryDirectory() as out_dir:
        args = RewardConfig(output_dir=out_dir, per_device_train_batch_size=w.rm_pairs, gradient_accumulation_steps=1,
                            max_steps=steps, learning_rate=w.lr, report_to="none", save_strategy="no",
                            logging_strategy="no", bf16=False, fp16=False, gradient_checkpointing=False,
                            use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, max_length=None,
                            seed=w.seed)
        callback = _timing_callback(measured, CpuMonitor(), 0, {})
        trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                                callbacks=[callback])
        torch.set_num_threads(threads)
        try:
            with loop_profiler():
                trainer.train()
        except _Enough:
            pass
    for r in measured.records:
        r["pairs_per_s"] = w.rm_pairs / r["seconds"]
    return {"trl_version": trl.__version__, "threads": torch.get_num_threads(), "records": measured.records,
            **measured.summary(), "memory": {"peak_rss_mb": peak_rss_mb()}}
