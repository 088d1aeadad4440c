"""Rank script for the engine tests: `python _job.py MODE STAGE OUT_DIR`, one process per rank.

The launcher (`_launch.py`) sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT. Every rank
trains on its share of the same global minibatches with losses normalised by the GLOBAL token count,
and rank 0 writes what the tests compare to `OUT_DIR/result.pt`:

- `params_after_2` / `grad_norms` / `lrs`: state after two optimizer updates (batches 0 and 1);
- `uninterrupted` vs `resumed`: a third update (batch 2) taken by the same engine, or by a fresh
  engine (different initial weights) after save_checkpoint → load_checkpoint;
- `eval_logits` + `hf_dir`: the trained module's logits on batch 99, and its HF export;
- mode "ref" (1 rank, stage 0) adds a plain-torch oracle, a gradient-accumulation run, a resume
  under a changed schedule (must be refused) and one update of each set-up in VARIANTS;
- mode "dp" (2 ranks) adds the grad norm of DeepSpeed's own backward (negative control) and, at
  stage 3, a ZeRO-3 InferenceEngine forward of the initial model;
- mode "lora" trains a peft LoRA model instead (`lora_main`): updates, resume, merged export.
"""
import copy
import os
import sys
import time
from pathlib import Path

import torch

import _common as c
from rlhf.config.engine import EngineConfig
from rlhf.engine import InferenceEngine, TrainEngine
from rlhf.engine.train import NonFiniteGradError
from rlhf.engine.ds_config import lr_lambda
from rlhf.engine.export import full_state_dict
from rlhf.models.tiny import build_tiny_tokenizer


_START = time.monotonic()


def log(phase: str) -> None:
    """Phase timestamps in the rank log, to see where a slow job spends its time."""
    print(f"[{time.monotonic() - _START:7.2f}s] {phase}", file=sys.stderr, flush=True)


def make_cfg(stage: int) -> EngineConfig:
    # Clip below the typical norm so clipping is active; warm-up 2 + cosine so each update's lr differs.
    return EngineConfig(zero_stage=stage, lr=1e-3, adam_eps=1e-6, weight_decay=0.01, grad_clip=0.1,
                        lr_schedule="cosine", warmup_steps=2, total_steps=4, min_lr_ratio=0.1,
                        zero3_param_persistence_threshold=0)


def micro_batches(batch, rank: int, world: int, gas: int):
    """This rank's contiguous share of the global rows, cut into `gas` equal micro-batches."""
    per_rank = c.BATCH_ROWS // world
    per_micro = per_rank // gas
    start = rank * per_rank
    return [c.rows_of(batch, start + i * per_micro, start + (i + 1) * per_micro) for i in range(gas)]


def update(engine: TrainEngine, batch_seed: int, rank: int, world: int, gas: int, grads_out=None):
    """One optimizer update on global batch `batch_seed`; returns engine.step()'s stats."""
    batch = c.global_batch(batch_seed)
    total_tokens = c.global_token_count(batch)
    stats = {}
    for micro in micro_batches(batch, rank, world, gas):
        engine.backward(c.token_loss_sum(engine, micro) / total_tokens)
        if grads_out is not None and len(grads_out) == 0 and engine._engine.is_gradient_accumulation_boundary():
            grads_out.update({n: p.grad.clone() for n, p in engine.module.named_parameters()})
        stats = engine.step()
    return stats


def train_two(cfg, rank, world, gas, grads_out=None):
    engine = TrainEngine(c.tiny_llama(seed=0), cfg, micro_batch_size=c.BATCH_ROWS // world // gas,
                         grad_accum_steps=gas)
    stats = [update(engine, seed, rank, world, gas, grads_out if seed == 0 else None) for seed in (0, 1)]
    return engine, stats


def full_params(engine):
    return full_state_dict(engine.module, zero3=engine.cfg.zero_stage == 3)


# Other engine set-ups, one update each on 1 rank: bf16, ZeRO-1, CPU offload with torch's AdamW.
VARIANTS = {"bf16_stage0": dict(zero_stage=0, dtype="bf16"), "bf16_zero2": dict(zero_stage=2, dtype="bf16"),
            "zero1": dict(zero_stage=1), "zero2_offload": dict(zero_stage=2, offload_optimizer=True),
            "zero3_offload_all": dict(zero_stage=3, offload_optimizer=True, offload_params=True)}


def variant_update(cfg, **overrides):
    engine = TrainEngine(c.tiny_llama(seed=0), EngineConfig(**{**vars(cfg), **overrides}), c.BATCH_ROWS)
    stats = update(engine, 0, rank=0, world=1, gas=1)
    after = full_params(engine)
    return {"grad_norm": stats["grad_norm"], "dtypes": sorted({str(v.dtype) for v in after.values()}),
            "moved": [k for k, v in c.tiny_llama(seed=0).state_dict().items() if not torch.equal(after[k].float(), v)]}


def nan_gradient_update(cfg, rank: int, world: int, gas: int) -> dict:
    """One update whose loss is finite but whose gradient is NaN on the LAST rank's last micro-batch
    only (0 · sqrt|u| at u = 0: forward 0, backward 0 · inf). Every rank must raise NonFiniteGradError
    at the step, and the weights must be the initial ones."""
    engine = TrainEngine(c.tiny_llama(seed=0), cfg, micro_batch_size=c.BATCH_ROWS // world // gas,
                         grad_accum_steps=gas)
    before = full_params(engine)
    batch = c.global_batch(0)
    total_tokens = c.global_token_count(batch)
    error = None
    try:
        for i, micro in enumerate(micro_batches(batch, rank, world, gas)):
            loss = c.token_loss_sum(engine, micro) / total_tokens
            if rank == world - 1 and i == gas - 1:
                loss = loss + 0.0 * (loss - loss.detach()).abs().sqrt()
            engine.backward(loss)
            engine.step()
    except NonFiniteGradError as err:
        error = str(err)
    after = full_params(engine)
    return {"error": error, "loss_finite": bool(torch.isfinite(loss).item()),
            "unchanged": before is None or all(torch.equal(after[k], before[k]) for k in before)}  # rank 0 gathers


def oracle(cfg):
    """Plain torch on the full batch: autograd, clip_grad_norm_, AdamW, the same LambdaLR."""
    model = c.tiny_llama(seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    norms, grads = [], None
    for seed in (0, 1):
        batch = c.global_batch(seed)
        (c.token_loss_sum(model, batch) / c.global_token_count(batch)).backward()
        if grads is None:
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return {"params": copy.deepcopy(model.state_dict()), "grad_norms": norms, "grads": grads}


def lora_llama(base_seed: int, adapter_seed: int):
    """tiny_llama(base_seed) with a rank-4 LoRA on every linear layer, lora_A drawn from `adapter_seed`."""
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(adapter_seed)
        return get_peft_model(c.tiny_llama(seed=base_seed), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))


def lora_oracle(cfg) -> dict:
    """Plain torch on the full batch for the LoRA job: the peft model, AdamW on its adapter, 3 updates."""
    model = lora_llama(0, 0)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    for seed in (0, 1, 2):
        batch = c.global_batch(seed)
        (c.token_loss_sum(model, batch) / c.global_token_count(batch)).backward()
        torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def lora_main(cfg, rank: int, world: int, gas: int, out: Path) -> dict:
    """LoRA under the job's ZeRO stage: 3 updates equal plain torch's; a fresh engine (other base
    weights, other adapter init) resumed from the checkpoint takes the same update 3; the export is
    merged (+ adapter/)."""
    def engine_of(model):
        return TrainEngine(model, cfg, micro_batch_size=c.BATCH_ROWS // world // gas, grad_accum_steps=gas)

    engine = engine_of(lora_llama(0, 0))
    result = {"trainable": sorted(n for n, p in engine.module.named_parameters() if p.requires_grad)}
    for seed in (0, 1):
        update(engine, seed, rank, world, gas)
    ckpt = out / "runs" / "ckpt"
    engine.save_checkpoint(ckpt)
    update(engine, 2, rank, world, gas)
    result["uninterrupted"] = full_params(engine)
    fresh = engine_of(lora_llama(1, 1))
    fresh.load_checkpoint(ckpt)
    update(fresh, 2, rank, world, gas)
    result["resumed"] = full_params(fresh)
    log("lora resumed")
    engine.eval()
    with torch.no_grad():
        result["eval_logits"] = engine(**c.global_batch(99)).logits
    result["hf_dir"] = str(engine.export_hf(out / "hf"))
    if rank == 0:
        result["oracle"] = lora_oracle(cfg)
    return result


def main(mode: str, stage: int, out: Path) -> None:
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    cfg = make_cfg(stage)
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    if mode == "lora":
        result = lora_main(cfg, rank, world, gas=2, out=out)
        if rank == 0:
            torch.save(result, out / "result.pt")
        return
    gas = 1 if mode == "ref" else 2  # the 2-rank runs split each rank's 2 rows into 2 micro-batches
    result = {}

    grads = {}  # stage 0 only: ZeRO keeps gradients in its own partitioned buffers
    engine, stats = train_two(cfg, rank, world, gas, grads_out=grads if mode == "ref" else None)
    log("two updates")
    result["grad_norms"] = [s["grad_norm"] for s in stats]
    result["lrs"] = [s["lr"] for s in stats]
    result["params_after_2"] = full_params(engine)

    ckpt = out / "runs" / "ckpt"
    engine.save_checkpoint(ckpt)
    log("saved checkpoint")
    update(engine, 2, rank, world, gas)
    result["uninterrupted"] = full_params(engine)
    log("update 3")
    fresh = TrainEngine(c.tiny_llama(seed=1), cfg, micro_batch_size=c.BATCH_ROWS // world // gas,
                        grad_accum_steps=gas)
    fresh.load_checkpoint(ckpt)
    result["resumed_global_steps"] = fresh.global_steps
    result["checkpoint_engine"] = type(fresh._engine.checkpoint_engine).__name__
    result["resumed_stats"] = update(fresh, 2, rank, world, gas)
    result["resumed"] = full_params(fresh)

    log("resumed")
    engine.eval()
    with torch.no_grad():
        result["eval_logits"] = engine(**c.global_batch(99)).logits
    tokenizer = build_tiny_tokenizer(out / "tokenizer") if rank == 0 else None
    result["hf_dir"] = str(engine.export_hf(out / "hf", tokenizer=tokenizer))
    result["ds_accelerator"] = os.environ.get("DS_ACCELERATOR")

    log("exported")
    if mode == "ref":
        result["grads_full"] = grads
        result["oracle"] = oracle(cfg)
        accum_grads = {}
        accum, accum_stats = train_two(cfg, rank, world, gas=2, grads_out=accum_grads)
        result["grads_accum"] = accum_grads
        result["accum_grad_norms"] = [s["grad_norm"] for s in accum_stats]
        result["accum_params_after_2"] = full_params(accum)
        other = TrainEngine(c.tiny_llama(seed=0), EngineConfig(**{**vars(cfg), "total_steps": 8}), c.BATCH_ROWS)
        try:
            other.load_checkpoint(ckpt)
        except ValueError as err:
            result["schedule_mismatch_error"] = str(err)
        result["variants"] = {name: variant_update(cfg, **kw) for name, kw in VARIANTS.items()}
    if mode == "dp":
        # Negative control: DeepSpeed's own backward (÷ grad_accum_steps, ÷ world size) on the same
        # globally normalised losses yields a gradient 1/(gas * world) too small.
        naive = TrainEngine(c.tiny_llama(seed=0), cfg, micro_batch_size=1, grad_accum_steps=gas)
        naive.backward = lambda loss: naive._engine.backward(loss)
        result["naive_grad_norm"] = update(naive, 0, rank, world, gas)["grad_norm"]
    if mode == "dp" and stage == 3:
        frozen = InferenceEngine(c.tiny_llama(seed=0), EngineConfig(zero_stage=3, zero3_param_persistence_threshold=0))
        result["z3_inference_partitioned"] = all(getattr(p, "ds_numel", 0) > p.numel() for p in frozen.module.parameters())
        result["z3_inference_logits"] = frozen(**c.global_batch(99)).logits
    result["nan_gradient"] = nan_gradient_update(cfg, rank, world, gas)
    log("extras")
    if rank == 0:
        torch.save(result, out / "result.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
