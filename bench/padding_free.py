"""Padding-free micro-batches on a mixed-length workload: seconds of an actor update and forward (issue 17).

    .venv/bin/python bench/padding_free.py            # ~3 min on 2 cores
    .venv/bin/python bench/padding_free.py --quick    # smoke test of the script

One process, one rank (gloo), our real `ActorWorker` (DeepSpeed ZeRO-0, fp32) on a random-init Llama
(--layers 4, --hidden 512, 8 heads, the character tokenizer). The rollout batch: --rows rows whose prompts are 4–32
tokens and responses 4–128 tokens (uniform; a batch padded to 32 + 128 columns). Per mode, alternating
so both see the same machine: the median seconds of --iterations PPO updates (1 epoch, 1 minibatch,
micro-batches of --micro rows) and of the log-prob forward over the batch, after one warm-up of each:
`padded` computes every micro-batch at the batch's width; `padding_free` (the default,
`update.padding_free`) groups rows by length and trims each micro-batch (rlhf/data/batch.py `trim`);
`token_budget` (`update.max_tokens_per_micro_batch`, --budget tokens) packs the length-sorted rows into
micro-batches of at most that many padded tokens: many short rows to a pass, few long ones (the update
only; the forward is the padding-free one).
Prints the table with the ratios and writes bench/results/padding_free-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.lora import free_port  # noqa: E402


def mixed_batch(rows: int, vocab: int, prompt_range: tuple[int, int], response_range: tuple[int, int]):
    """A RolloutBatch of random ids with uniformly spread prompt and response lengths, plus advantages."""
    from rlhf.data.batch import RolloutBatch

    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(prompt_range[0], prompt_range[1] + 1, (rows,), generator=g).tolist()
    responses = torch.randint(response_range[0], response_range[1] + 1, (rows,), generator=g).tolist()
    P, T = prompt_range[1], response_range[1]
    ids = torch.zeros(rows, P + T, dtype=torch.long)
    attention = torch.zeros_like(ids)
    mask = torch.zeros(rows, T)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        ids[b, P - p:P + r] = torch.randint(4, vocab, (p + r,), generator=g)
        attention[b, P - p:P + r] = 1
        mask[b, :r] = 1
    batch = RolloutBatch(input_ids_BS=ids, attention_mask_BS=attention, mask_BT=mask)
    batch.advantages_BT = torch.randn(mask.shape, generator=g) * mask
    return batch, sum(p + r for p, r in zip(prompts, responses))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and batch: smoke test")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--budget", type=int, default=640, help="token_budget mode: padded tokens per micro-batch")
    args = parser.parse_args()
    shape = dict(num_layers=args.layers, hidden_size=args.hidden, num_heads=8, max_positions=256)
    prompt_range, response_range = (4, 32), (4, 128)
    if args.quick:
        shape, args.rows, args.iterations = dict(num_layers=1, hidden_size=32, num_heads=2, max_positions=64), 8, 1
        args.budget = 64
        prompt_range, response_range = (2, 8), (2, 24)

    from rlhf.config.algorithm import PolicyLossConfig, UpdateSchedule
    from rlhf.config.engine import EngineConfig
    from rlhf.engine.distributed import rank_environment
    from rlhf.models import ModelOptions
    from rlhf.models.tiny import build_tiny_model
    from rlhf.workers.actor import ActorWorker

    os.environ.update(rank_environment(0, 1, free_port()))
    schedule = UpdateSchedule(epochs=1, num_minibatches=1, micro_batch_size=args.micro, shuffle=False)
    with tempfile.TemporaryDirectory(prefix="bench_padding_free_") as tmp:
        model_dir = build_tiny_model(Path(tmp) / "lm", seed=0, **shape)
        actor = ActorWorker("actor", 0, 1, seed=0)
        actor.init_model(str(model_dir), ModelOptions(), EngineConfig(lr=1e-6), args.micro,
                         schedule.grad_accum_steps(args.rows))
        batch, attended = mixed_batch(args.rows, len(actor.tokenizer), prompt_range, response_range)
        batch.old_logprobs_BT = actor.logprobs(batch)
        seconds = {mode: {"update": [], "forward": []} for mode in ("padded", "padding_free", "token_budget")}
        for i in range(args.iterations + 1):
            for mode in seconds:
                actor.padding_free = schedule.padding_free = mode != "padded"
                schedule.max_tokens_per_micro_batch = args.budget if mode == "token_budget" else None
                start = time.perf_counter()
                actor.update(batch, PolicyLossConfig(), schedule, i)
                update_s = time.perf_counter() - start
                start = time.perf_counter()
                actor.logprobs(batch)
                forward_s = time.perf_counter() - start
                if i:  # the first round is the warm-up
                    seconds[mode]["update"].append(update_s)
                    seconds[mode]["forward"].append(forward_s)
    report = {"workload": {"rows": args.rows, "micro_batch_rows": args.micro, "model": shape,
                           "prompt_tokens": list(prompt_range), "response_tokens": list(response_range),
                           "padded_cells": int(batch.input_ids_BS.numel()), "attended_tokens": attended,
                           "threads": torch.get_num_threads(), "budget_tokens": args.budget,
                           "budget_micro_batches": len(batch.select(batch.by_length()).split_by_tokens(args.budget))},
              **{mode: {k: statistics.median(v) for k, v in parts.items()} for mode, parts in seconds.items()}}
    padded, free, budget = report["padded"], report["padding_free"], report["token_budget"]
    print(f"mixed lengths: {args.rows} rows, prompts {prompt_range[0]}–{prompt_range[1]}, responses "
          f"{response_range[0]}–{response_range[1]} tokens; {attended} attended of {report['workload']['padded_cells']} cells; "
          f"{args.rows // args.micro} micro-batches of {args.micro} rows, or {report['workload']['budget_micro_batches']} "
          f"under the {args.budget}-token budget")
    print("| | padded s | padding-free s | token budget s | padded / padding-free | padded / token budget |")
    print("|---|---|---|---|---|---|")
    for key in ("update", "forward"):
        print(f"| actor {key} | {padded[key]:.2f} | {free[key]:.2f} | {budget[key]:.2f} | "
              f"{padded[key] / free[key]:.2f}× | {padded[key] / budget[key]:.2f}× |")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"padding_free-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
