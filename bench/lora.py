"""LoRA vs full fine-tuning in our DeepSpeed engine: seconds per update, training-state memory, export (issue 15 §2).

    .venv/bin/python bench/lora.py            # SmolLM-135M's shape, 4 rows × 256 tokens, ~3 min on 2 cores
    .venv/bin/python bench/lora.py --quick    # a tiny model: smoke test of the script

One run builds one random-init Llama and trains it in a fresh process per mode (so each process's peak
RSS is its own): `full` (every weight) and `lora` (rank --rank on every linear layer but the LM head,
alpha 2·rank), both with `TrainEngine` (ZeRO-0, fp32, AdamW, one rank on gloo) on the same causal-LM
batches. Per mode: trainable parameters, the bytes of the training state (weights + gradients + AdamW
moments, counted from the tensors), the process's peak RSS, the median seconds of --iterations updates
after one warm-up, and the seconds of `export_hf` (LoRA: merged + adapter/). Then the memory planner's
estimate (rlhf/distributed/memory.py) for a Llama-3-8B actor per GPU, full vs LoRA, ZeRO-3 on 8 GPUs, bf16.
Prints a table with the LoRA / full ratios and writes bench/results/lora-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rollout_engines import SMOL_135M, TINY, build_model  # noqa: E402

LLAMA3_8B = dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                 num_heads=32, num_kv_heads=8, head_dim=128, tie_word_embeddings=False)


def batches(vocab: int, rows: int, length: int, count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(4, vocab, (rows, length), generator=generator) for _ in range(count)]


def training_state_bytes(engine) -> int:
    """Weights + gradients + optimizer state of one engine, from the tensors themselves."""
    module = engine.module
    total = sum(p.numel() * p.element_size() for p in module.parameters())
    total += sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)  # gradients
    for state in engine._engine.optimizer.state.values():
        total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
    return total


def run_mode(mode: str, model_dir: str, rank: int, rows: int, length: int, iterations: int, out: str) -> dict:
    """One mode in this process: build the engine, time the updates and the export."""
    from rlhf.config.engine import EngineConfig
    from rlhf.engine import TrainEngine
    from rlhf.models import ModelOptions, load_causal_lm
    from rlhf.models.lora import parameter_counts

    options = ModelOptions(lora_rank=rank, lora_alpha=2.0 * rank) if mode == "lora" else ModelOptions()
    model = load_causal_lm(model_dir, options)
    engine = TrainEngine(model, EngineConfig(zero_stage=0, lr=1e-4, lr_schedule="constant"), micro_batch_size=rows)
    trainable, total = parameter_counts(engine.module)
    vocab = engine.module.config.vocab_size
    seconds = []
    for ids in batches(vocab, rows, length, iterations + 1):
        start = time.perf_counter()
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        seconds.append(time.perf_counter() - start)
    state = training_state_bytes(engine)
    start = time.perf_counter()
    engine.export_hf(Path(out) / f"export_{mode}")
    export_s = time.perf_counter() - start
    return {"mode": mode, "trainable_parameters": trainable, "parameters": total,
            "training_state_mib": state / 2 ** 20, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "s_per_update": statistics.median(seconds[1:]), "updates": len(seconds) - 1, "export_s": export_s}


def planner_estimates(rank: int) -> dict:
    """The memory planner's actor-rank estimate for a Llama-3-8B, full vs LoRA (GiB per GPU)."""
    from rlhf.config.ppo import PPOConfig
    from rlhf.distributed.memory import ModelShape, estimate_role_memory

    shape = ModelShape(**LLAMA3_8B)
    out = {}
    for mode, lora in (("full", 0), ("lora", rank)):
        cfg = PPOConfig()
        cfg.actor.options.lora_rank = lora
        cfg.engines.actor.dtype, cfg.engines.actor.zero_stage = "bf16", 3
        cfg.placement.actor.devices_per_node = 8
        est = estimate_role_memory(cfg, "actor", shape)
        out[mode] = {"trainable_parameters": est.trainable_parameters, "total_gib": est.total_gib,
                     "grads_gib": est.grads_gib, "optimizer_gib": est.optimizer_gib, "weights_gib": est.weights_gib}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 updates: smoke test")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "MODEL_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.length, args.iterations, args.vocab = 32, 2, 256
    if args.child:
        from rlhf.engine.distributed import rank_environment

        os.environ.update(rank_environment(0, 1, int(os.environ["BENCH_PORT"])))
        result = run_mode(args.child[0], args.child[1], args.rank, args.rows, args.length, args.iterations, args.out)
        Path(args.out, f"{args.child[0]}.json").write_text(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_lora_") as tmp:
        model_dir = build_model(Path(tmp), TINY if args.quick else SMOL_135M, args.vocab)
        results = {}
        for mode in ("full", "lora"):
            env = {**os.environ, "BENCH_PORT": str(free_port())}
            cmd = [sys.executable, __file__, "--child", mode, str(model_dir), "--out", tmp, "--rank", str(args.rank),
                   "--rows", str(args.rows), "--length", str(args.length), "--iterations", str(args.iterations)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
                return 1
            results[mode] = json.loads(Path(tmp, f"{mode}.json").read_text())
    report = {"workload": {"model": "tiny" if args.quick else "SmolLM-135M shape", "rows": args.rows,
                           "tokens_per_row": args.length, "lora_rank": args.rank, "threads": torch.get_num_threads()},
              **results, "planner_llama3_8b_actor_zero3_8gpu_bf16": planner_estimates(args.rank)}
    print_table(report)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"lora-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(report, indent=2))
    return 0


def print_table(report: dict) -> None:
    full, lora = report["full"], report["lora"]
    rows = [("trainable parameters", "trainable_parameters", "{:,.0f}"),
            ("training state (MiB)", "training_state_mib", "{:,.0f}"), ("peak RSS (MiB)", "peak_rss_mib", "{:,.0f}"),
            ("s / update", "s_per_update", "{:.2f}"), ("export s", "export_s", "{:.2f}")]
    print(f"LoRA rank {report['workload']['lora_rank']} vs full, {report['workload']['model']}, "
          f"{report['workload']['rows']} × {report['workload']['tokens_per_row']} tokens per update")
    print(f"| | full | LoRA | LoRA / full |\n|---|---|---|---|")
    for label, key, fmt in rows:
        print(f"| {label} | {fmt.format(full[key])} | {fmt.format(lora[key])} | {lora[key] / full[key]:.3f} |")
    plan = report["planner_llama3_8b_actor_zero3_8gpu_bf16"]
    print(f"| planner: Llama-3-8B actor, GiB/GPU (ZeRO-3 × 8, bf16) | {plan['full']['total_gib']:.1f} | "
          f"{plan['lora']['total_gib']:.1f} | {plan['lora']['total_gib'] / plan['full']['total_gib']:.3f} |")


def free_port() -> int:
    """A free TCP port on loopback, for a one-rank process group's rendezvous."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
