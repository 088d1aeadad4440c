"""One-GPU smoke check (issue 11 §4): what must work the first time the project meets a CUDA GPU.

    bash bench/gpu_smoke.sh                                   # one CUDA GPU, no network, ≤ 8 min
    python bench/gpu_smoke.py --device cpu --quick --out DIR  # the same code paths on CPU (tests/gpu)

Checks, in order (each passes, fails with its error, or is skipped naming what it needs):
- environment          torch / CUDA / library versions, the device and its memory;
- engines              ZeRO-0, 2 and 3 TrainEngines (bf16 on GPU): two updates, checkpoint, a fresh
                       engine resumed from it gives the same next loss, HF export reloads with the same logits;
- recompute_logprobs   the actor samples in bf16, trains in its engine dtype: the sampler/trainer gap
                       is measured and the first PPO ratio with recomputed old log-probs is 1;
- ppo_steps            PPO steps with the four real roles in this process (in-process worker groups, no
                       Ray), finite losses, metrics.jsonl written; each role's GPU memory peak next to
                       the dry-run planner's estimate for it;
- rollout_throughput   tokens/s of our rollout (`generate_rollouts`) on a random-init ~0.5B Llama built
                       from a config (no download), batch 64 × 256 new tokens;
- vllm_rollout         optional (needs vLLM): the same model and batch through VLLMEngine and HFEngine —
                       tokens/s of each and their ratio — and the seconds of one versioned weight sync
                       into the engine (bench/rollout_engines.py is the CPU form of this line);
- quickstart_ray       optional: the quickstart through the real `rlhf` command with `use_gpu=true`,
                       all roles colocated on the one GPU, a few PPO steps (needs Ray, Hydra).

Writes DIR/gpu_smoke.json and DIR/gpu_smoke.md (the table); exit status 1 if a check failed.
Everything but `environment` needs DeepSpeed except `rollout_throughput`; bench/README.md lists the
small wheels a bare GPU box needs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # a bare GPU box runs from the checkout, without `pip install -e .`
    sys.path.insert(0, str(REPO))

CHECKS = ("environment", "engines", "recompute_logprobs", "ppo_steps", "rollout_throughput", "vllm_rollout",
          "quickstart_ray")
GIB = 1024 ** 3


class Skip(Exception):
    """A check that cannot run here (a missing package, no CUDA): reported as skipped, not failed."""


@dataclass
class Result:
    name: str
    status: str  # "passed" | "failed" | "skipped"
    seconds: float
    details: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class Sizes:
    """Model and batch sizes of one mode: the real smoke on GPU, tiny ones for `--quick`."""

    tiny: dict  # build_tiny_model dims of the engine/PPO checks
    throughput: dict  # LlamaConfig fields of the rollout-throughput model
    throughput_batch: int
    throughput_new_tokens: int
    ppo_steps: int


FULL = Sizes(tiny=dict(num_layers=4, hidden_size=256, num_heads=4), ppo_steps=4,
             throughput=dict(hidden_size=1152, intermediate_size=4608, num_hidden_layers=24, num_attention_heads=18,
                             num_key_value_heads=18, max_position_embeddings=512),  # ~0.51B parameters
             throughput_batch=64, throughput_new_tokens=256)
QUICK = Sizes(tiny=dict(num_layers=2, hidden_size=32, num_heads=2), ppo_steps=2,
              throughput=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=2, max_position_embeddings=64),
              throughput_batch=4, throughput_new_tokens=8)


@dataclass
class Context:
    device: str  # "cuda" | "cpu"
    sizes: Sizes
    work: Path  # scratch directory (models, checkpoints)
    out: Path

    @property
    def dtype(self) -> str:
        return "bf16" if self.device == "cuda" else "fp32"

    def tolerance(self) -> float:
        """How close two forwards of the same weights must be: exact-ish in fp32, bf16 rounding on GPU."""
        return 5e-2 if self.dtype == "bf16" else 1e-5


# --- arguments, report ---------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CPU test of this script)")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma list from {list(CHECKS)}")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_smoke")
    args = parser.parse_args(argv)
    args.checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = sorted(set(args.checks) - set(CHECKS))
    if unknown:
        parser.error(f"unknown check(s) {unknown}; choose from {list(CHECKS)}")
    return args


def resolve_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    return "cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu"


def markdown_table(results: list[Result]) -> str:
    lines = ["| check | status | seconds | details |", "|---|---|---|---|"]
    for r in results:
        text = r.error.splitlines()[-1][:160] if r.error else ", ".join(
            f"{k}={_short(v)}" for k, v in r.details.items() if not isinstance(v, (dict, list)))
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.1f} | {text} |")
    return "\n".join(lines)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(results: list[Result], out: Path, meta: dict) -> tuple[Path, Path]:
    """DIR/gpu_smoke.json (everything) and DIR/gpu_smoke.md (the table), each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "results": [asdict(r) for r in results],
               "passed": all(r.status != "failed" for r in results)}
    paths = (out / "gpu_smoke.json", out / "gpu_smoke.md")
    texts = (json.dumps(payload, indent=2, default=str) + "\n", markdown_table(results) + "\n")
    for path, text in zip(paths, texts):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return paths


def run_check(name: str, ctx: Context) -> Result:
    start = time.perf_counter()
    try:
        details = CHECK_FNS[name](ctx)
        return Result(name, "passed", time.perf_counter() - start, details)
    except Skip as why:
        return Result(name, "skipped", time.perf_counter() - start, error=str(why))
    except Exception as exc:  # a failed check is reported with its traceback; the others still run
        details = getattr(exc, "details", {})
        return Result(name, "failed", time.perf_counter() - start, details,
                      "".join(traceback.format_exception(exc)).strip())


class CheckFailed(AssertionError):
    def __init__(self, message: str, details: dict):
        super().__init__(message)
        self.details = details


def require(ok: bool, message: str, details: dict) -> None:
    if not ok:
        raise CheckFailed(message, details)


def need(module: str, why: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise Skip(f"needs {module} ({why}); see bench/README.md § GPU smoke for the wheels")


# --- shared set-up ----------------------------------------------------------------------------------
def single_process_world() -> None:
    """A world of one rank in this process (rendezvous through a file, nothing listens)."""
    if os.environ.get("RLHF_DIST_INIT_METHOD"):
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      GLOO_SOCKET_IFNAME="lo", NCCL_SOCKET_IFNAME="lo",
                      RLHF_DIST_INIT_METHOD=f"file://{tempfile.mkdtemp(prefix='rlhf-smoke-')}/rendezvous")


def tiny_assets(ctx: Context) -> dict[str, str]:
    """Tokenizer, policy, reward model and arithmetic files under ctx.work (built once)."""
    from rlhf.models.tiny import build_tiny_model, build_tiny_reward_model, build_tiny_tokenizer
    from rlhf.tasks import get_task

    root = ctx.work / "assets"
    paths = {"tok": root / "tok", "lm": root / "lm", "rm": root / "rm", "data": root / "data"}
    if not (root / "done").exists():
        build_tiny_tokenizer(paths["tok"])
        build_tiny_model(paths["lm"], paths["tok"], seed=0, **ctx.sizes.tiny)
        build_tiny_reward_model(paths["rm"], paths["tok"], seed=1, **ctx.sizes.tiny)
        get_task("arithmetic", num_train_prompts=256, num_eval_prompts=32, num_train_pairs=16,
                 num_eval_pairs=16).write_files(paths["data"])
        (root / "done").write_text("ok")
    return {k: str(v) for k, v in paths.items()}


# --- checks -------------------------------------------------------------------------------------------
def check_environment(ctx: Context) -> dict:
    import importlib.util

    import torch
    import transformers

    details = {"torch": torch.__version__, "transformers": transformers.__version__, "device": ctx.device,
               "dtype": ctx.dtype, "python": sys.version.split()[0]}
    for module in ("deepspeed", "ray", "hydra", "peft", "accelerate"):
        details[module] = importlib.util.find_spec(module) is not None
    if ctx.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        details.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1),
                       cuda=torch.version.cuda, bf16_supported=torch.cuda.is_bf16_supported())
    return details


def _engine_batch(vocab: int, seed: int, device: str):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (4, 12), generator=g).to(device)


def _loss(engine, ids):
    out = engine(input_ids=ids, attention_mask=ids.ne(-1).long(), labels=ids, use_cache=False)
    return out.loss


def check_engines(ctx: Context) -> dict:
    need("deepspeed", "the training engine")
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf.config.engine import EngineConfig
    from rlhf.engine import TrainEngine
    from rlhf.models import load_causal_lm

    single_process_world()
    lm = tiny_assets(ctx)["lm"]
    vocab = AutoModelForCausalLM.from_pretrained(lm).config.vocab_size
    details = {}
    for zero in (0, 2, 3):
        cfg = EngineConfig(zero_stage=zero, dtype=ctx.dtype, lr=1e-3, zero3_param_persistence_threshold=0)

        def engine():
            return TrainEngine(load_causal_lm(lm), cfg, micro_batch_size=4)

        first = engine()
        for step in range(2):
            first.backward(_loss(first, _engine_batch(vocab, step, ctx.device)))
            first.step()
        ckpt = ctx.work / f"ckpt_zero{zero}"
        first.save_checkpoint(ckpt)
        probe = _engine_batch(vocab, 99, ctx.device)
        with torch.no_grad():
            expected = float(_loss(first.eval(), probe))
        resumed = engine()
        resumed.load_checkpoint(ckpt)
        with torch.no_grad():
            got = float(_loss(resumed.eval(), probe))
        export = first.export_hf(ctx.work / f"export_zero{zero}")
        reloaded = AutoModelForCausalLM.from_pretrained(export).to(ctx.device)
        with torch.no_grad():
            exported = float(reloaded(input_ids=probe, labels=probe).loss.float())
        details[f"zero{zero}_loss"] = expected
        details[f"zero{zero}_resume_gap"] = abs(expected - got)
        details[f"zero{zero}_export_gap"] = abs(expected - exported)
        require(math.isfinite(expected), f"ZeRO-{zero}: non-finite loss", details)
        require(expected == got, f"ZeRO-{zero}: the resumed engine gives another loss", details)
        require(abs(expected - exported) <= ctx.tolerance(), f"ZeRO-{zero}: the HF export differs", details)
        del first, resumed, reloaded
        if ctx.device == "cuda":
            torch.cuda.empty_cache()
    return details


def check_recompute_logprobs(ctx: Context) -> dict:
    need("deepspeed", "the actor's training engine")
    import torch

    from rlhf.algorithms import masked_mean
    from rlhf.config.algorithm import PolicyLossConfig, UpdateSchedule
    from rlhf.config.engine import EngineConfig
    from rlhf.models import ModelOptions, SamplingParams
    from rlhf.workers.actor import ActorWorker

    single_process_world()
    actor = ActorWorker("actor", 0, 1, seed=0)
    actor.init_model(tiny_assets(ctx)["lm"], ModelOptions(), EngineConfig(dtype=ctx.dtype, lr=1e-3), 8, 1)
    items = [("12+34=", "46"), ("5+5=", "10"), ("71+18=", "89"), ("3+40=", "43")]
    batch = actor.generate(items, SamplingParams(max_new_tokens=6, n=2, seed=0, dtype="bf16"))
    train_BT = actor.logprobs(batch)
    gap = float(masked_mean((batch.old_logprobs_BT - train_BT).abs(), batch.mask_BT))
    batch.old_logprobs_BT = train_BT
    batch.advantages_BT = torch.randn(batch.mask_BT.shape, generator=torch.Generator().manual_seed(0)) * batch.mask_BT
    schedule = UpdateSchedule(epochs=1, num_minibatches=1, micro_batch_size=len(batch), shuffle=False)
    metrics = actor.update(batch, PolicyLossConfig(), schedule, 0)
    details = {"logprob_abs_diff_bf16_sampler": gap, "ratio_min": metrics["actor/ratio_min"],
               "ratio_max": metrics["actor/ratio_max"]}
    require(gap > 0, "a bf16 sampler gave exactly the training log-probs: the gap metric cannot see anything",
            details)
    off = max(abs(metrics["actor/ratio_min"] - 1), abs(metrics["actor/ratio_max"] - 1))
    require(off <= (0.0 if ctx.dtype == "fp32" else 1e-2), "recomputed old log-probs: first ratio not 1", details)
    return details


def ppo_config(ctx: Context, assets: dict, steps: int):
    from rlhf.config.algorithm import AlgorithmConfig, UpdateSchedule
    from rlhf.config.engine import EngineConfig
    from rlhf.config.model import ModelConfig
    from rlhf.config.placement import PlacementConfig, RolePlacement
    from rlhf.config.ppo import PPOConfig, PromptDataConfig, RoleEngines, RolloutConfig, TaskConfig, TrainerConfig

    share = dict(cpus_per_rank=0.25, colocate="all")
    task = {"num_train_prompts": 256, "num_eval_prompts": 32, "num_train_pairs": 16, "num_eval_pairs": 16}
    return PPOConfig(
        actor=ModelConfig(path=assets["lm"]), reward=ModelConfig(path=assets["rm"]),
        data=PromptDataConfig(train=f"{assets['data']}/train_prompts.jsonl", eval=f"{assets['data']}/eval_prompts.jsonl",
                              max_eval_prompts=16, max_prompt_len=16),
        task=TaskConfig(name="arithmetic", kwargs=task),
        rollout=RolloutConfig(prompts_per_step=8, samples_per_prompt=2, max_new_tokens=6),
        algorithm=AlgorithmConfig(update=UpdateSchedule(epochs=1, num_minibatches=2, micro_batch_size=4)),
        engines=RoleEngines(actor=EngineConfig(lr=1e-4, dtype=ctx.dtype), critic=EngineConfig(lr=1e-4, dtype=ctx.dtype),
                            reward=EngineConfig(dtype=ctx.dtype), reference=EngineConfig(dtype=ctx.dtype),
                            forward_micro_batch_size=16),
        placement=PlacementConfig(use_gpu=ctx.device == "cuda", actor=RolePlacement(**share),
                                  critic=RolePlacement(**share), reward=RolePlacement(**share),
                                  reference=RolePlacement(**share)),
        trainer=TrainerConfig(total_steps=steps, eval_every=steps, save_every=steps, keep_last=1, progress=False))


class MemoryProbe:
    """Per-role GPU memory: bytes a role holds after its init, plus the peak its calls add on top."""

    def __init__(self, device: str):
        import torch

        self.cuda, self.torch = device == "cuda", torch
        self.resident: dict[str, int] = {}
        self.extra_peak: dict[str, int] = {}

    def wrap(self, role: str, group) -> None:
        original = group.call_async

        def call_async(method, *args, **kwargs):
            if not self.cuda:
                return original(method, *args, **kwargs)
            torch = self.torch
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            done = original(method, *args, **kwargs)
            torch.cuda.synchronize()
            if method == "init_model":
                self.resident[role] = torch.cuda.memory_allocated() - before
            else:
                added = torch.cuda.max_memory_allocated() - before
                self.extra_peak[role] = max(self.extra_peak.get(role, 0), added)
            return done

        group.call_async = call_async

    def peaks_gib(self) -> dict[str, float | None]:
        roles = set(self.resident) | set(self.extra_peak)
        if not self.cuda:
            return {r: None for r in roles}
        return {r: (self.resident.get(r, 0) + self.extra_peak.get(r, 0)) / GIB for r in roles}


def compare_with_planner(cfg, measured_gib: dict[str, float | None]) -> dict[str, dict]:
    """{role: {"measured_gib", "planned_gib", "within_plan"}}: the planner is an upper bound, so a
    measured peak above its estimate is a planner bug (within_plan False); None when not measured."""
    from rlhf.distributed.memory import estimate_memory, load_model_configs

    estimates = estimate_memory(cfg, load_model_configs(cfg))
    table = {}
    for role, estimate in estimates.items():
        measured = measured_gib.get(role)
        table[role] = {"measured_gib": measured, "planned_gib": estimate.total_gib,
                       "within_plan": None if measured is None else measured <= estimate.total_gib}
    return table


def check_ppo_steps(ctx: Context) -> dict:
    need("deepspeed", "the trained roles' engines")
    from rlhf.distributed.local import LocalRoleGroups, LocalWorkerGroup
    from rlhf.trainers.metrics import read_jsonl
    from rlhf.trainers.ppo import PPOTrainer
    from rlhf.trainers.ppo_setup import WORKER_CLASSES, init_models
    from rlhf.trainers.ppo_stage import load_prompts

    single_process_world()
    assets = tiny_assets(ctx)
    cfg = ppo_config(ctx, assets, ctx.sizes.ppo_steps)
    cfg.validate()
    probe = MemoryProbe(ctx.device)
    groups = LocalRoleGroups({r: LocalWorkerGroup(r, [WORKER_CLASSES[r](r, 0, 1, cfg.trainer.seed)]) for r in cfg.roles()})
    for role, group in groups.items():
        probe.wrap(role, group)
    init_models(cfg, groups)
    train, evaluation = load_prompts(cfg)
    run_dir = ctx.work / "ppo_run"
    summary = PPOTrainer(cfg, groups, train, evaluation, run_dir=run_dir).fit()
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl", "ppo") if r.get("step", 0) > 0]
    losses = [r[k] for r in records for k in ("actor/loss", "critic/loss") if k in r]
    details = {"steps": summary.get("steps"), "metric_records": len(records),
               "losses_finite": all(math.isfinite(v) for v in losses),
               "memory": compare_with_planner(cfg, probe.peaks_gib())}
    require(len(records) == ctx.sizes.ppo_steps and losses, "metrics.jsonl misses PPO steps", details)
    require(details["losses_finite"], "non-finite actor/critic loss", details)
    require(all(v["within_plan"] is not False for v in details["memory"].values()),
            "a role used more GPU memory than the planner's estimate", details)
    return details


def check_rollout_throughput(ctx: Context) -> dict:
    """The decode rate of `generate_rollouts` itself. The tokenizer is the project's char-level one
    (vocabulary 21: nothing to download), so the logits layer is cheaper than a 32k–150k vocabulary's;
    the model never emits EOS, so every row decodes all max_new_tokens."""
    import torch

    from rlhf.models import SamplingParams, generate_rollouts, load_tokenizer
    from rlhf.models.tiny import build_tiny_tokenizer

    s = ctx.sizes
    build_tiny_tokenizer(ctx.work / "throughput_tok")
    tokenizer = load_tokenizer(str(ctx.work / "throughput_tok"), padding_side="left")
    model = _never_ending_llama(s.throughput, tokenizer, ctx)
    params = sum(p.numel() for p in model.parameters())
    prompts = [f"{10 + i % 90}+{20 + i % 70}=" for i in range(s.throughput_batch)]
    generate_rollouts(model, tokenizer, prompts[:2], SamplingParams(max_new_tokens=4, seed=0))  # warm-up
    _sync(ctx)
    start = time.perf_counter()
    batch = generate_rollouts(model, tokenizer, prompts, SamplingParams(max_new_tokens=s.throughput_new_tokens, seed=0))
    _sync(ctx)
    seconds = time.perf_counter() - start
    tokens = int(batch.mask_BT.sum())
    details = {"parameters_m": round(params / 1e6, 1), "batch": s.throughput_batch,
               "max_new_tokens": s.throughput_new_tokens, "generated_tokens": tokens, "seconds": seconds,
               "tokens_per_s": tokens / seconds, "dtype": ctx.dtype}
    if ctx.device == "cuda":
        details["peak_memory_gib"] = torch.cuda.max_memory_allocated() / GIB
    require(tokens == s.throughput_batch * s.throughput_new_tokens, "rows ended before max_new_tokens", details)
    return details


def _never_ending_llama(fields: dict, tokenizer, ctx: Context):
    """A random-init Llama (seed 0) whose EOS logit is -inf: a decode benchmark of fixed length."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    class NeverEnding(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits[..., tokenizer.eos_token_id] = float("-inf")
            return out

    config = LlamaConfig(**fields, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if ctx.dtype == "bf16" else torch.float32
    return NeverEnding(config).to(device=ctx.device, dtype=dtype).eval()


def _sync(ctx: Context) -> None:
    if ctx.device == "cuda":
        import torch

        torch.cuda.synchronize()


def check_vllm_rollout(ctx: Context) -> dict:
    """vLLM vs HF `generate` on the rollout-throughput model (saved to disk for vLLM to load), then one
    weight sync of its full state dict, versioned. Both engines may stop at EOS, so tokens are counted."""
    need("vllm", "ppo.rollout.engine=vllm")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.models import SamplingParams, load_tokenizer
    from rlhf.models.tiny import build_tiny_tokenizer
    from rlhf.rollout import HFEngine
    from rlhf.rollout.vllm_engine import VLLMEngine

    s = ctx.sizes
    model_dir = ctx.work / "vllm_model"
    build_tiny_tokenizer(model_dir)
    tokenizer = load_tokenizer(str(model_dir), padding_side="left")
    config = LlamaConfig(**s.throughput, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if ctx.dtype == "bf16" else torch.float32
    model = LlamaForCausalLM(config).to(dtype=dtype)
    model.save_pretrained(model_dir)
    model = model.to(ctx.device).eval()
    prompt_ids = [tokenizer(f"{10 + i % 90}+{20 + i % 70}=")["input_ids"] for i in range(s.throughput_batch)]
    params = SamplingParams(max_new_tokens=s.throughput_new_tokens, seed=0)
    details: dict = {}
    for name, engine in (("hf", HFEngine(lambda: model, tokenizer)),
                         ("vllm", VLLMEngine(str(model_dir), [tokenizer.eos_token_id], seed=0, dtype=str(dtype).split(".")[1],
                                             enforce_eager=ctx.device != "cuda", gpu_memory_utilization=0.3,
                                             max_model_len=min(64 + s.throughput_new_tokens, config.max_position_embeddings),
                                             cpu_kvcache_space_gib=1))):
        engine.generate(prompt_ids[:2], SamplingParams(max_new_tokens=4, seed=0))  # warm-up
        _sync(ctx)
        start = time.perf_counter()
        tokens = sum(len(c.token_ids) for c in engine.generate(prompt_ids, params))
        _sync(ctx)
        details[f"{name}_tokens_per_s"] = tokens / (time.perf_counter() - start)
        if name == "vllm":
            start = time.perf_counter()
            stats = engine.update_weights([[(k, v.detach().cpu()) for k, v in model.state_dict().items()]], 1)
            details.update(sync_seconds=time.perf_counter() - start, sync_mib=stats["bytes"] / 2 ** 20,
                           weight_version=engine.weight_version)
            engine.shutdown()
    details["vllm_over_hf"] = details["vllm_tokens_per_s"] / details["hf_tokens_per_s"]
    require(details["weight_version"] == 1, "the weight sync did not take", details)
    return details


QUICKSTART_GPU_OVERRIDES = [  # the quickstart on one GPU, every role colocated, a few steps of each stage
    "sft.use_gpu=true", "rm.use_gpu=true", "ppo.placement.use_gpu=true",
    "ppo.placement.actor.colocate=all", "ppo.placement.critic.colocate=all",
    "ppo.placement.reward.colocate=all", "ppo.placement.reference.colocate=all",
    "sft.trainer.total_steps=40", "rm.trainer.total_steps=40", "ppo.trainer.total_steps=3",
    "ppo.trainer.eval_every=3", "strict_expectations=false",
]


def check_quickstart_ray(ctx: Context) -> dict:
    for module in ("ray", "hydra", "deepspeed"):
        need(module, "the Ray-hosted quickstart")
    if ctx.device != "cuda":
        raise Skip("the Ray quickstart check is for a GPU (the CPU quickstart is tests/recipes)")
    run_dir = ctx.work / "quickstart"
    cmd = [sys.executable, "-m", "rlhf.cli", "recipe=quickstart", f"run_dir={run_dir}", *QUICKSTART_GPU_OVERRIDES]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=420)
    details = {"exit_status": proc.returncode, "command": " ".join(cmd[2:])}
    require(proc.returncode == 0, f"rlhf exited {proc.returncode}: {proc.stderr[-1500:]}", details)
    summary = json.loads((run_dir / "summary.json").read_text())
    details.update(ppo_steps=summary.get("ppo", {}).get("steps"))
    return details


CHECK_FNS = {"environment": check_environment, "engines": check_engines, "recompute_logprobs": check_recompute_logprobs,
             "ppo_steps": check_ppo_steps, "rollout_throughput": check_rollout_throughput,
             "vllm_rollout": check_vllm_rollout, "quickstart_ray": check_quickstart_ray}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="rlhf-gpu-smoke-") as work:
        ctx = Context(device, QUICK if args.quick else FULL, Path(work), args.out)
        results = []
        for name in args.checks:
            results.append(run_check(name, ctx))
            print(f"[gpu_smoke] {name}: {results[-1].status} ({results[-1].seconds:.1f} s)", flush=True)
    meta = {"device": device, "quick": args.quick, "checks": args.checks, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    json_path, md_path = write_report(results, args.out, meta)
    print(markdown_table(results))
    print(f"[gpu_smoke] wrote {json_path} and {md_path}")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
