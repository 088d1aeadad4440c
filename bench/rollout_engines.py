"""Rollout engines head to head (issue 12): tokens/s of vLLM vs HF `generate`, and weight-sync seconds.

    .vllm-venv/bin/python bench/rollout_engines.py             # ~135M Llama, batch 64 × 128 new tokens
    .vllm-venv/bin/python bench/rollout_engines.py --quick     # a tiny model: smoke test of the script

Needs the vLLM environment (README.md § vLLM rollouts). One run measures, on the same random-init
Llama (SmolLM-135M's shape by default), every engine on the same prompts, each after one warm-up call:
  rollout: generated tokens / s for HFEngine and VLLMEngine (sampling, temperature 1, no EOS stop:
           every row generates exactly --new-tokens), and their ratio;
  sync:    seconds per weight sync into the vLLM engine from a ZeRO-0 and a ZeRO-3 DeepSpeed engine
           (bucketed gather → /dev/shm safetensors → reload), `--sync-repeats` times each.
Prints a table and writes bench/results/rollout_engines-<time>.json. The numbers of 2 busy CPU cores say
little about a GPU; the ratios are what the script is for.
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

# SmolLM-135M's shape (134.5M parameters with its 49152-token vocabulary and tied embeddings).
SMOL_135M = dict(num_layers=30, hidden_size=576, num_heads=9, max_positions=512, num_key_value_heads=3,
                 intermediate_size=1536, tie_word_embeddings=True)
TINY = dict(num_layers=2, hidden_size=64, num_heads=2, max_positions=256)


def build_tokenizer(out: Path, vocab_size: int):
    """A word-level tokenizer of `vocab_size` ids ("w4" … ; 0 pad, 1 eos, 2 bos, 3 unk): the model's
    vocabulary size, so the LM head costs what a real one does, and every sampled id decodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                 unk_token="<unk>", padding_side="left")
    hf.save_pretrained(out)
    return hf


def build_model(out: Path, shape: dict, vocab_size: int) -> Path:
    """A random-init Llama of `shape` and its tokenizer in `out`; returns the model directory."""
    from rlhf.models.tiny import build_tiny_model

    build_tokenizer(out / "tok", vocab_size)
    return build_tiny_model(out / "lm", out / "tok", seed=0, **shape)


def prompts(vocab_size: int, batch: int) -> list[list[int]]:
    """`batch` random prompts of 8–23 ordinary token ids."""
    g = torch.Generator().manual_seed(0)
    return [torch.randint(4, vocab_size, (int(torch.randint(8, 24, (1,), generator=g)),), generator=g).tolist()
            for _ in range(batch)]


def time_engine(engine, prompt_ids, params) -> dict:
    engine.generate(prompt_ids[:4], params)  # warm-up
    start = time.perf_counter()
    completions = engine.generate(prompt_ids, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for c in completions)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def sync_seconds(model_dir: Path, vllm_engine, zero_stage: int, repeats: int) -> dict:
    """Seconds per sync from a single-rank DeepSpeed engine (gloo) of `zero_stage` into `vllm_engine`."""
    from rlhf.config.engine import EngineConfig
    from rlhf.engine import TrainEngine
    from rlhf.engine.export import full_tensor_buckets
    from rlhf.models import load_causal_lm

    engine = TrainEngine(load_causal_lm(model_dir), EngineConfig(zero_stage=zero_stage, zero3_param_persistence_threshold=0),
                         micro_batch_size=1)
    times = []
    for version in range(repeats):
        start = time.perf_counter()
        stats = vllm_engine.update_weights(full_tensor_buckets(engine.module, zero_stage == 3, 256 * 2 ** 20),
                                           version + 100 * zero_stage)
        times.append(time.perf_counter() - start)
    return {"seconds_median": statistics.median(times), "seconds": times, "bytes": stats["bytes"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, batch 8 × 16 tokens")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--sync-repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.batch, args.new_tokens, args.sync_repeats = 8, 16, 2
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")

    from rlhf.models import SamplingParams, load_causal_lm, load_tokenizer
    from rlhf.rollout import HFEngine
    from rlhf.rollout.vllm_engine import VLLMEngine

    work = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    vocab_size = 512 if args.quick else 49152
    model_dir = build_model(work, TINY if args.quick else SMOL_135M, vocab_size)
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir)
    params_count = sum(p.numel() for p in model.parameters())
    prompt_ids = prompts(vocab_size, args.batch)
    # Both engines stop at EOS (id 1); a random model over 49k ids almost never samples it.
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, seed=0)

    hf = time_engine(HFEngine(lambda: model, tokenizer), prompt_ids, params)
    start = time.perf_counter()
    vllm_engine = VLLMEngine(str(model_dir), [tokenizer.eos_token_id], seed=0, cpu_kvcache_space_gib=2, dtype="float32",
                             enforce_eager=True, max_model_len=64 + args.new_tokens)
    startup = time.perf_counter() - start
    vllm = time_engine(vllm_engine, prompt_ids, params)
    sync = {f"zero{stage}": sync_seconds(model_dir, vllm_engine, stage, args.sync_repeats) for stage in (0, 3)}
    vllm_engine.shutdown()

    result = {"model_parameters": params_count, "batch": args.batch, "new_tokens": args.new_tokens,
              "hf": hf, "vllm": {**vllm, "startup_s": startup}, "vllm_over_hf": vllm["tokens_per_s"] / hf["tokens_per_s"],
              "sync": sync, "sync_zero3_over_zero0": sync["zero3"]["seconds_median"] / sync["zero0"]["seconds_median"],
              "cpu_count": os.cpu_count(), "torch": torch.__version__}
    rows = [("model", f"{params_count / 1e6:.1f}M params, batch {args.batch} × {args.new_tokens} new tokens"),
            ("HF generate", f"{hf['tokens_per_s']:.0f} tokens/s"),
            ("vLLM", f"{vllm['tokens_per_s']:.0f} tokens/s (start-up {startup:.0f} s)"),
            ("vLLM / HF", f"{result['vllm_over_hf']:.2f}×"),
            ("sync ZeRO-0", f"{sync['zero0']['seconds_median']:.3f} s ({sync['zero0']['bytes'] / 2 ** 20:.0f} MiB)"),
            ("sync ZeRO-3", f"{sync['zero3']['seconds_median']:.3f} s"),
            ("sync ZeRO-3 / ZeRO-0", f"{result['sync_zero3_over_zero0']:.2f}×")]
    print("\n".join(f"| {name} | {value} |" for name, value in rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"rollout_engines-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
