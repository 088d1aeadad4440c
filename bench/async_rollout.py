"""Asynchronous rollout: end-to-end seconds per PPO step at max_staleness 0 (synchronous) and 1 (issue 14).

    .venv/bin/python bench/async_rollout.py            # ~6 min on 2 cores
    .venv/bin/python bench/async_rollout.py --quick    # smoke test of the script (~1.5 min)

The bench's fixed workload (bench/workload.py: four GPT-2 roles of 4 layers × 256 as Ray actors, 16
prompts, 32 sampled tokens each, GAE, one PPO-clip and value update) and a generation-dominated variant
of it (--long-response tokens per row, 128 by default). Per workload one set of Ray worker groups, and
on them a `PPOTrainer` per staleness whose `train_step` runs exactly as `fit()` runs it; the modes
alternate in blocks (0, 1, 0, 1) of --steps steps after --warmup unreported ones, so both see the same
machine. A block's last step samples nothing ahead (`total_steps` ends there): no work leaks from one
block into the next one's timings. Prints seconds per step (median) per workload and mode, the ratio
sync / async, and where a step's time went (the controller's wall per stage: `time/generate` is what
the step waited for its batch); writes bench/results/async_rollout-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("generate", "score", "advantages", "update", "sync")


def run_blocks(cfg, groups, prompts, stalenesses, steps: int, warmup: int, blocks: int) -> dict[int, list[dict]]:
    """{staleness: per measured step {seconds, time/<stage>...}} over `blocks` alternating blocks."""
    from rlhf.trainers.ppo import PPOTrainer

    out: dict[int, list[dict]] = {s: [] for s in stalenesses}
    for block in range(blocks):
        staleness = stalenesses[block % len(stalenesses)]
        block_cfg = replace(cfg, trainer=replace(cfg.trainer, max_staleness=staleness, total_steps=warmup + steps))
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = PPOTrainer(block_cfg, groups, prompts, run_dir=run_dir)
            for step in range(1, warmup + steps + 1):
                start = time.perf_counter()
                metrics = trainer.train_step(step)
                seconds = time.perf_counter() - start
                if metrics.get("skipped"):
                    raise RuntimeError(f"staleness {staleness} step {step} was skipped: {metrics}")
                if step > warmup:
                    out[staleness].append({"seconds": seconds, **{f"time/{k}": metrics.get(f"time/{k}", 0.0)
                                                                  for k in STAGES}})
    return out


def summarize(records: list[dict]) -> dict:
    seconds = [r["seconds"] for r in records]
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "steps": len(seconds), **{f"median_{k}": statistics.median(r[k] for r in records)
                                      for k in records[0] if k.startswith("time/")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps: smoke test of the script")
    parser.add_argument("--steps", type=int, default=6, help="measured steps per block")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks (staleness 0, 1, 0, 1, ...)")
    parser.add_argument("--long-response", type=int, default=128, help="tokens per row of the generation-heavy workload")
    parser.add_argument("--actor-threads", type=int, default=1, help="torch threads inside each Ray actor")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.blocks, args.long_response = 2, 2, 48

    from bench.sections import set_threads, start_ray_groups
    from bench.workload import Workload, build_assets, load_prompts, ppo_config
    from rlhf.trainers.ppo_stage import init_ray

    set_threads(os.cpu_count() or 1)
    init_ray(num_cpus=os.cpu_count())
    workloads = {"bench (32 tokens)": Workload(), f"long ({args.long_response} tokens)":
                 Workload(response_len=args.long_response, max_positions=max(256, 16 + args.long_response))}
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for name, w in workloads.items():
            assets = build_assets(Path(root) / name.split()[0], w)
            cfg = ppo_config(assets, w)
            cfg.validate()
            groups = start_ray_groups(cfg, args.actor_threads)
            try:
                per_mode = run_blocks(cfg, groups, load_prompts(assets), (0, 1), args.steps, args.warmup, args.blocks)
            finally:
                groups.shutdown()
            results[name] = {str(s): summarize(r) for s, r in per_mode.items()}
    print_table(results, args)
    out = ROOT / "bench" / "results" / f"async_rollout-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(), "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


def print_table(results: dict, args) -> None:
    print(f"\nseconds per PPO step, median of {args.steps * args.blocks // 2} per mode "
          f"({args.blocks} alternating blocks, {args.actor_threads} thread(s) per Ray actor)\n")
    print("| workload | staleness 0 | staleness 1 | 0 / 1 | waited for the batch (0 → 1) | score | update |")
    print("|---|---|---|---|---|---|---|")
    for name, modes in results.items():
        sync, ahead = modes["0"], modes["1"]
        print(f"| {name} | {sync['median_s']:.3f} s | {ahead['median_s']:.3f} s | "
              f"**{sync['median_s'] / ahead['median_s']:.2f}×** | {sync['median_time/generate']:.3f} → "
              f"{ahead['median_time/generate']:.3f} s | {sync['median_time/score']:.3f} → "
              f"{ahead['median_time/score']:.3f} s | {sync['median_time/update']:.3f} → "
              f"{ahead['median_time/update']:.3f} s |")


if __name__ == "__main__":
    sys.exit(main())
