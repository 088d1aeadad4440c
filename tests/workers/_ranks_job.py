"""One rank of the multi-rank worker tests: `python _ranks_job.py MODE MODELS_DIR OUT_DIR`.

The real worker classes run in this process as rank RANK of WORLD_SIZE (gloo), each call fed this
rank's shard exactly as a worker group's SPLIT would; the rank writes what it saw to
OUT_DIR/rank<r>.json. Modes:

- "gpu_rules": under `install_gpu_backend_rules` (a real gloo group that, for collectives, accepts
  only the tensor devices of the group a GPU machine gets) every role's calls: SFT and RM steps and
  evaluations, actor generate/logprobs/update, critic values/update, reference log-probs, RM scores.
- "zero3": the actor (plain and LoRA) and the SFT policy as ZeRO-3 engines; greedy generation where this rank's rows
  are EOS at once (rank 0) or run to max_new_tokens (rank 1), and an SFT eval loss where
  the ranks have 3 and 1 micro-batches. Before ranks ran in lock-step this hung; the launcher's
  timeout turns a hang into a failure.
- "padding_free": every role's forward and the actor/critic updates at full width vs padding-free
  (RolloutBatch.trim), on ZeRO-3 ranks;
- "recompute" (1 rank): the actor's sampler log-probs against its training forward, in fp32 and with
  the sampler in bf16, and the first PPO ratio with sampler vs recomputed old log-probs.
"""
import copy
import json
import os
import random
import sys
from pathlib import Path

import torch

from rlhf.config.algorithm import PolicyLossConfig, UpdateSchedule, ValueLossConfig
from rlhf.config.engine import EngineConfig
from rlhf.data import PreferenceDataset, SFTDataset
from rlhf.distributed.worker_group import split_arg
from rlhf.models import ModelOptions, SamplingParams, generate_rollouts, load_causal_lm, load_tokenizer
from rlhf.workers.actor import ActorWorker
from rlhf.workers.critic import CriticWorker
from rlhf.workers.reference import ReferenceWorker
from rlhf.workers.reward import RewardWorker
from rlhf.workers.supervised import RewardModelWorker, SFTWorker

RANK, WORLD = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
OPTS = ModelOptions()


def install_gpu_backend_rules() -> str:
    """Collectives that rlhf issues on this (gloo) group accept only tensors on the devices served by the
    backend our code asks for on a GPU machine, and the group reports that backend: a tensor on another
    device raises NCCL's error. (DeepSpeed's and transformers' own collectives carry compute-device
    tensors, CUDA on a GPU: they pass.) Returns the backend string."""
    import torch.distributed as dist
    from rlhf.engine.distributed import backend_devices, backend_for

    declared = backend_for(cuda=True)
    served = backend_devices(declared)
    dist.get_backend = lambda group=None: declared
    for name in ("all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
                 "reduce_scatter_tensor", "all_to_all_single", "all_gather_object", "broadcast_object_list"):
        real = getattr(dist, name, None)
        if real is None:
            continue

        def strict(*args, _real=real, _name=name, **kwargs):
            if _issued_by_a_library():
                return _real(*args, **kwargs)
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            tensors += [t for a in (*args, *kwargs.values()) if isinstance(a, (list, tuple))
                        for t in a if isinstance(t, torch.Tensor)]
            for t in tensors:
                if t.device.type not in served:
                    raise RuntimeError(f"{_name}: No backend type associated with device type {t.device.type} "
                                       f"(group backend {declared!r} serves {sorted(served)})")
            return _real(*args, **kwargs)

        setattr(dist, name, strict)
    return declared


def _issued_by_a_library() -> bool:
    """True when DeepSpeed or transformers issued the collective: their tensors live on the compute
    device, which is CUDA on a GPU machine and the CPU only because this test runs on one."""
    frame = sys._getframe(2)
    while frame is not None and f"{os.sep}torch{os.sep}distributed{os.sep}" in frame.f_code.co_filename:
        frame = frame.f_back
    name = frame.f_code.co_filename if frame is not None else ""
    return any(f"{os.sep}{lib}{os.sep}" in name for lib in ("deepspeed", "transformers"))


def shard(value):
    return split_arg(value, WORLD)[RANK]


def gpu_rules(models: Path, out: Path) -> dict:
    declared = install_gpu_backend_rules()
    data = models / "data"
    engine = EngineConfig(lr=1e-3)
    seen = {"backend": declared}

    sft = SFTWorker("sft", RANK, WORLD, seed=0)
    sft.init_model(str(models / "lm"), OPTS, engine, 2, 2)
    sft_set = SFTDataset(str(data / "sft.jsonl"), sft.tokenizer, max_len=16)
    examples = [sft_set[i] for i in range(8)]
    seen["sft_train"] = sft.train_step(shard(examples))
    seen["sft_eval"] = sft.eval_loss(shard(examples))

    rm = RewardModelWorker("rm", RANK, WORLD, seed=0)
    rm.init_model(str(models / "lm"), OPTS, engine, 2, 2)
    pairs = PreferenceDataset(str(data / "preferences_train.jsonl"), rm.tokenizer, max_len=16)
    pair_examples = [pairs[i] for i in range(8)]
    seen["rm_train"] = rm.train_step(shard(pair_examples))
    seen["rm_scores"] = float(rm.score_pairs(shard(pair_examples))["chosen_B"].sum())

    actor = ActorWorker("actor", RANK, WORLD, seed=0)
    actor.init_model(str(models / "lm"), OPTS, engine, 2, 1)
    prompts = [("12+34=", "46"), ("5+5=", "10"), ("71+18=", "89"), ("3+40=", "43")]
    batch = actor.generate(shard(prompts), SamplingParams(max_new_tokens=5, n=2, seed=0))
    reference = ReferenceWorker("reference", RANK, WORLD, seed=0)
    reference.init_model(str(models / "lm"), OPTS, EngineConfig(), 4)
    batch.ref_logprobs_BT = reference.logprobs(batch)
    reward = RewardWorker("reward", RANK, WORLD, seed=0)
    reward.init_model(str(models / "rm"), OPTS, EngineConfig(), 4)
    batch.scores_B = reward.score(batch)["scores_B"]
    critic = CriticWorker("critic", RANK, WORLD, seed=0)
    critic.init_model(str(models / "rm"), OPTS, engine, 2, 1)
    batch.values_BT = critic.values(batch)
    batch.advantages_BT = torch.ones_like(batch.mask_BT) * batch.mask_BT
    batch.returns_BT = batch.values_BT.detach() + 0.5
    schedule = UpdateSchedule(epochs=1, num_minibatches=2, micro_batch_size=1, shuffle=False)
    seen["actor_logprobs"] = float(actor.logprobs(batch).sum())
    seen["actor_update"] = actor.update(batch, PolicyLossConfig(), schedule, 0)
    seen["critic_update"] = critic.update(batch, ValueLossConfig(), schedule, 0)
    return seen


def _greedy_split(model, tokenizer, params) -> list:
    """Four prompts: two whose greedy response is EOS at once, two that run to max_new_tokens. Random
    strings over the tokenizer's characters give the random-init model varied continuations; the
    choice is the same on every rank (same weights, same strings)."""
    rng = random.Random(0)
    candidates = ["".join(rng.choice("0123456789+-*=") for _ in range(rng.randint(2, 8))) for _ in range(300)]
    lengths = generate_rollouts(model, tokenizer, candidates, params).mask_BT.sum(-1).tolist()
    ends = [p for p, n in zip(candidates, lengths) if n == 1][:2]
    runs = [p for p, n in zip(candidates, lengths) if n == params.max_new_tokens][:2]
    if len(ends) < 2 or len(runs) < 2:
        raise RuntimeError(f"test set-up: response lengths {sorted(set(lengths))} give no early/late split")
    return [(p, None) for p in ends + runs]


def zero3(models: Path, out: Path) -> dict:
    zero = EngineConfig(zero_stage=3, lr=1e-3, zero3_param_persistence_threshold=0)
    tokenizer = load_tokenizer(str(models / "lm"), padding_side="left")
    params = SamplingParams(max_new_tokens=8, greedy=True)
    items = _greedy_split(load_causal_lm(str(models / "lm")), tokenizer, params)
    single = generate_rollouts(load_causal_lm(str(models / "lm")), tokenizer, [p for p, _ in items], params)
    mine = shard(list(range(len(items))))

    actor = ActorWorker("actor", RANK, WORLD, seed=0)
    actor.init_model(str(models / "lm"), OPTS, zero, 2, 1)
    batch = actor.generate(shard(items), params)
    seen = {"responses": batch.responses, "expected": [single.responses[i] for i in mine],
            "lengths": batch.mask_BT.sum(-1).tolist(),
            "logprob_gap": float((batch.old_logprobs_BT - single.old_logprobs_BT[mine][:, :batch.response_len]
                                  ).abs().max()) if batch.response_len else 0.0}

    # A LoRA actor (peft under ZeRO-3): lora_B starts at 0, so it must generate exactly what the base does.
    lora = ActorWorker("actor", RANK, WORLD, seed=0)
    lora.init_model(str(models / "lm"), ModelOptions(lora_rank=4), zero, 2, 1)
    lora_batch = lora.generate(shard(items), params)
    seen["lora_responses"] = lora_batch.responses
    seen["lora_logprob_gap"] = float((lora.logprobs(lora_batch) - lora_batch.old_logprobs_BT).abs().max()) \
        if lora_batch.response_len else 0.0

    sft = SFTWorker("sft", RANK, WORLD, seed=0)
    sft.init_model(str(models / "lm"), OPTS, zero, 1, 1)
    sft_set = SFTDataset(str(models / "data" / "sft.jsonl"), sft.tokenizer, max_len=16)
    examples = [sft_set[i] for i in range(4)]
    seen["sft_eval"] = sft.eval_loss(examples[:3] if RANK == 0 else examples[3:])  # 3 vs 1 micro-batches
    seen["sft_generate"] = sft.generate(shard(items), params).responses
    return seen


def recompute(models: Path, out: Path) -> dict:
    """Sampler vs training-forward log-probs of the same rows, and the first PPO ratio with each."""
    from rlhf.algorithms import masked_mean

    actor = ActorWorker("actor", RANK, WORLD, seed=0)
    actor.init_model(str(models / "lm"), OPTS, EngineConfig(lr=1e-3), 8, 1)
    items = [("12+34=", "46"), ("5+5=", "10"), ("71+18=", "89"), ("3+40=", "43")]
    seen = {}
    for dtype in ("fp32", "bf16"):
        batch = actor.generate(items, SamplingParams(max_new_tokens=5, n=2, seed=0, dtype=dtype))
        train_BT = actor.logprobs(batch)
        seen[f"gap_{dtype}"] = float(masked_mean((batch.old_logprobs_BT - train_BT).abs(), batch.mask_BT))
        if dtype == "bf16":
            g = torch.Generator().manual_seed(0)
            batch.advantages_BT = torch.randn(batch.mask_BT.shape, generator=g) * batch.mask_BT
            one = UpdateSchedule(epochs=1, num_minibatches=1, micro_batch_size=len(batch), shuffle=False)
            for name, old_BT in (("sampler", batch.old_logprobs_BT), ("recomputed", train_BT)):
                probe = copy.copy(batch)
                probe.old_logprobs_BT = old_BT
                metrics = _update_then_restore(actor, probe, one)
                seen[f"ratio_{name}"] = [metrics["actor/ratio_min"], metrics["actor/ratio_max"]]
    return seen


def _update_then_restore(actor, batch, schedule) -> dict:
    """The metrics of one update on `batch`; the weights are put back afterwards, so every probe's
    ratio is measured against the weights that produced the recomputed log-probs."""
    saved = {k: v.clone() for k, v in actor.engine.module.state_dict().items()}
    metrics = actor.update(batch, PolicyLossConfig(), schedule, 0)
    actor.engine.module.load_state_dict(saved)
    return metrics


def padding_free(models: Path, out: Path) -> dict:
    """The same rollout rows (mixed lengths, widened by extra padding) through every role's forward and
    one actor and critic update each, at the batch's full width, padding-free, and packed to a token budget
    (the updates only): outputs and updated weights compared. ZeRO-3 on 2 ranks: trimming must not change
    the number of collective forwards, and under the budget rank 0's rows (cut to one response token) fit
    in fewer micro-batches than rank 1's, so the ranks must be given the same number of passes."""
    zero = EngineConfig(zero_stage=3, lr=1e-2, zero3_param_persistence_threshold=0)
    prompts = [("1+2=", "3"), ("12+34=", "46"), ("5+5=", "10"), ("71+18=", "89"), ("3+40=", "43"), ("9+9=", "18"),
               ("10+23=", "33"), ("7+1=", "8")]
    schedule = UpdateSchedule(epochs=1, num_minibatches=1, micro_batch_size=2, shuffle=False)
    seen, batch = {}, None
    for free in (False, True, "budget"):
        actor = ActorWorker("actor", RANK, WORLD, seed=0)
        actor.init_model(str(models / "lm"), OPTS, zero, 2, 2)
        critic = CriticWorker("critic", RANK, WORLD, seed=0)
        critic.init_model(str(models / "rm"), OPTS, zero, 2, 2)
        reference = ReferenceWorker("reference", RANK, WORLD, seed=0)
        reference.init_model(str(models / "lm"), OPTS, EngineConfig(zero_stage=3, zero3_param_persistence_threshold=0), 2)
        reward = RewardWorker("reward", RANK, WORLD, seed=0)
        reward.init_model(str(models / "rm"), OPTS, EngineConfig(zero_stage=3, zero3_param_persistence_threshold=0), 2)
        if batch is None:  # sampled once: both passes see the same rows
            sampled = actor.generate(shard(prompts), SamplingParams(max_new_tokens=8, n=1, seed=3, temperature=1.5))
            batch = sampled.pad_to(sampled.prompt_len + 5, sampled.response_len + 7)
            if RANK == 0:  # one response token per row: short rows, packed many to a micro-batch
                P = batch.prompt_len
                batch.mask_BT[:, 1:] = 0
                batch.attention_mask_BS[:, P + 1:] = 0
            g = torch.Generator().manual_seed(RANK)
            batch.advantages_BT = torch.randn(batch.mask_BT.shape, generator=g) * batch.mask_BT
            batch.returns_BT = torch.randn(batch.mask_BT.shape, generator=g) * batch.mask_BT
            seen["widths"] = [batch.prompt_len, batch.response_len]
            seen["response_lengths"] = batch.mask_BT.sum(-1).tolist()
        budget = 24 if free == "budget" else None
        for worker in (actor, critic, reference, reward):
            worker.padding_free = bool(free)
            worker.set_forward_token_budget(budget)
        schedule.padding_free = bool(free)
        schedule.max_tokens_per_micro_batch = budget
        tag = {False: "padded", True: "free", "budget": "budget"}[free]
        if budget:
            seen["budget_local_micro_batches"] = len(batch.select(batch.by_length()).split_by_tokens(budget))
        seen[f"{tag}_logprobs"] = actor.logprobs(batch).tolist()
        seen[f"{tag}_ref"] = reference.logprobs(batch, 1.0).tolist()
        seen[f"{tag}_values"] = critic.values(batch).tolist()
        seen[f"{tag}_scores"] = reward.score(batch)["scores_B"].tolist()
        batch.old_logprobs_BT = torch.tensor(seen["padded_logprobs"])
        batch.values_BT = torch.tensor(seen["padded_values"])
        seen[f"{tag}_actor_loss"] = actor.update(batch, PolicyLossConfig(), schedule, 0)["actor/loss"]
        seen[f"{tag}_critic_loss"] = critic.update(batch, ValueLossConfig(), schedule, 0)["critic/loss"]
        seen[f"{tag}_actor_after"] = float((actor.logprobs(batch) * batch.mask_BT).sum())  # the updated weights
        seen[f"{tag}_critic_after"] = float((critic.values(batch) * batch.mask_BT).sum())
    return seen


def main() -> None:
    mode, models, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    torch.manual_seed(0)
    seen = {"gpu_rules": gpu_rules, "zero3": zero3, "recompute": recompute,
            "padding_free": padding_free}[mode](models, out)
    (out / f"rank{RANK}.json").write_text(json.dumps(seen, indent=1, default=float))


if __name__ == "__main__":
    main()
