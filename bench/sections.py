"""Measurements of our stack; each runs in its own process (see run.py) and returns a JSON-able dict.

    ppo(..., mode="ray")    four roles as Ray actors (use_gpu=false, fractional CPUs)
    ppo(..., mode="hybrid") the hybrid layout: one Ray actor hosting the four roles, all cores (issue 17)
    ppo(..., mode="local")  the same worker classes in this process (LocalWorkerGroup): no Ray
    generation(...)         our rollout vs bare `model.generate` on the same model and batch
    reward_model(...)       RewardModelWorker.train_step, 16 pairs per optimizer step
    matmul(...)             dense fp32 matmul FLOP/s (the hardware reference)
    scaling(...)            Ray PPO seconds per iteration over (response length, batch) points

Every PPO iteration is `PPOTrainer.train_step` exactly as `fit()` runs it (no eval, no checkpoints).
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from bench.monitor import Policy, measure_loop, peak_rss_mb, rss_mb
from bench.workload import Assets, Workload, load_pairs, load_prompts, ppo_config, ppo_flops

REPO = Path(__file__).resolve().parents[1]


def set_threads(threads: int) -> None:
    import torch

    from rlhf.workers.base import THREADS_ENV

    os.environ[THREADS_ENV] = str(threads)
    torch.set_num_threads(threads)


def single_process_dist_env() -> None:
    """What DeepSpeed needs to start a world of one in this process, listening on nothing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      GLOO_SOCKET_IFNAME="lo",
                      RLHF_DIST_INIT_METHOD=f"file://{tempfile.mkdtemp(prefix='rlhf-bench-')}/rendezvous")


# --- our PPO ---------------------------------------------------------------------------------------
def start_ray_groups(cfg, actor_threads: int):
    """`ppo_setup.start_worker_groups` with the timed worker classes and the bench's thread count."""
    from rlhf.trainers.ppo_setup import start_worker_groups
    from rlhf.workers.base import THREADS_ENV
    from bench.timed_workers import TIMED_WORKERS

    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           THREADS_ENV: str(actor_threads), "OMP_NUM_THREADS": str(actor_threads)}
    return start_worker_groups(cfg, env_vars=env, worker_classes=TIMED_WORKERS)


def start_local_groups(cfg):
    from rlhf.distributed.local import LocalRoleGroups, LocalWorkerGroup
    from rlhf.trainers.ppo_setup import init_models
    from bench.timed_workers import TIMED_WORKERS

    single_process_dist_env()
    groups = LocalRoleGroups({r: LocalWorkerGroup(r, [TIMED_WORKERS[r](r, 0, 1, cfg.trainer.seed)])
                              for r in cfg.roles()})
    init_models(cfg, groups)
    return groups


def stage_record(seconds: float, metrics: dict, worker: dict[str, float], w: Workload, concurrent: bool) -> dict:
    """One iteration: end-to-end, controller-side stage walls, worker-side stage times, and `sync`.

    sync = end-to-end − the worker-side critical path: generate + scorers + advantages + updaters,
    where with Ray (`concurrent`) the three scorers and the two updaters overlap, so only the slowest
    of each counts. It is what moving batches between processes and waiting on them costs.
    """
    combine = max if concurrent else sum
    critical = (worker.get("generate", 0.0) + combine([worker.get(k, 0.0) for k in ("reference", "values", "reward")])
                + metrics.get("time/advantages", 0.0)
                + combine([worker.get("actor_update", 0.0), worker.get("critic_update", 0.0)]))
    rec = {"seconds": seconds, "tokens_per_s": w.generated_tokens / seconds,
           **{f"stage/{k}": v for k, v in worker.items()},
           "stage/advantages": metrics.get("time/advantages", 0.0), "stage/sync": max(seconds - critical, 0.0)}
    for k in ("generate", "score", "advantages", "update"):
        rec[f"wall/{k}"] = metrics.get(f"time/{k}", 0.0)
    rec["rows_valid_tokens"] = metrics.get("response_length/mean", 0.0) * w.batch
    return rec


def take_worker_timings(groups, roles) -> dict[str, float]:
    from bench.timed_workers import STAGES

    per_role = {r: groups[r].call("bench_take_timings")[0] for r in roles}
    return {stage: per_role[role].get(method, 0.0) for stage, (role, method) in STAGES.items() if role in per_role}


def ppo(assets: Assets, w: Workload, policy: Policy, mode: str, threads: int, actor_threads: int) -> dict:
    from rlhf.trainers.ppo import PPOTrainer

    set_threads(threads)
    cfg = ppo_config(assets, w)
    if mode == "hybrid":  # one process with every core: the roles' CPU shares add up to the machine
        cfg.placement.layout = "hybrid"
        for role in cfg.roles():
            cfg.placement.role(role).cpus_per_rank = (os.cpu_count() or 1) / len(cfg.roles())
    cfg.validate()
    prompts = load_prompts(assets)
    t0 = time.perf_counter()
    if mode in ("ray", "hybrid"):
        from rlhf.trainers.ppo_stage import init_ray

        init_ray(num_cpus=os.cpu_count())
        groups = start_ray_groups(cfg, threads if mode == "hybrid" else actor_threads)
    else:
        groups = start_local_groups(cfg)
    startup = time.perf_counter() - t0
    samplers = []
    try:
        roles = cfg.roles()
        if os.environ.get("RLHF_BENCH_PYSPY_DIR") and mode in ("ray", "hybrid"):  # --profile: sample driver and actors
            pids = {"driver": os.getpid(), **{r: groups[r].call("bench_info")[0]["pid"] for r in roles}}
            samplers = start_pyspy(pids, Path(os.environ["RLHF_BENCH_PYSPY_DIR"]))
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = PPOTrainer(cfg, groups, prompts, run_dir=run_dir)

            def step(i: int) -> dict:
                start = time.perf_counter()
                metrics = trainer.train_step(i + 1)
                seconds = time.perf_counter() - start
                if metrics.get("skipped"):
                    raise RuntimeError(f"PPO step {i + 1} was skipped (non-finite numbers): {metrics}")
                return stage_record(seconds, metrics, take_worker_timings(groups, roles), w, mode == "ray")

            measured = measure_loop(step, policy)
        memory = {"driver_peak_rss_mb": peak_rss_mb()}
        threads_seen = {"driver": threads}
        if mode in ("ray", "hybrid"):
            infos = {r: groups[r].call("bench_info")[0] for r in roles}
            memory.update({f"{r}_peak_rss_mb": i["peak_rss_mb"] for r, i in infos.items()})
            threads_seen.update({r: i["threads"] for r, i in infos.items()})
            import psutil

            actor_pids = {i["pid"] for i in infos.values()}
            system = [p for p in psutil.Process().children(recursive=True) if p.pid not in actor_pids]
            memory["ray_system_rss_mb_now"] = sum(filter(None, (rss_mb(p.pid) for p in system)))
    finally:
        stop_pyspy(samplers)
        groups.shutdown()
        if mode in ("ray", "hybrid"):
            import ray

            ray.shutdown()
    return {"mode": mode, "startup_s": startup, "threads": threads_seen, "memory": memory,
            "records": measured.records, **measured.summary(), "flops": ppo_flops(w, assets)}


def start_pyspy(pids: dict[str, int], out_dir: Path) -> list:
    """One `py-spy record` per process (Ray actors are not reachable through --subprocesses)."""
    import shutil
    import subprocess

    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen([pyspy, "record", "--pid", str(pid), "--format", "raw", "--rate", "100",
                               "-o", str(out_dir / f"{name}.raw.txt")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for name, pid in pids.items()]
    time.sleep(1.0)  # let the samplers attach
    return procs


def stop_pyspy(procs: list) -> None:
    import signal

    for p in procs:
        p.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for p in procs:
        try:
            p.wait(timeout=30)
        except Exception:
            p.kill()


# --- generation efficiency -------------------------------------------------------------------------
def generation(assets: Assets, w: Workload, policy: Policy, threads: int) -> dict:
    """Our `generate_rollouts` vs bare `model.generate` (KV cache), alternating which goes first."""
    import torch

    from rlhf.models import ModelOptions, SamplingParams, generate_rollouts, left_pad, load_causal_lm, load_tokenizer

    set_threads(threads)
    model = load_causal_lm(assets.policy, ModelOptions())
    tokenizer = load_tokenizer(assets.policy, padding_side="left")
    prompts = load_prompts(assets)

    def ours(batch, seed):
        params = SamplingParams(max_new_tokens=w.response_len, temperature=w.temperature, seed=seed)
        out = generate_rollouts(model, tokenizer, batch, params)
        assert out.mask_BT.sum() == w.generated_tokens, "a row stopped early: the workload must not stop"

    def bare(batch, seed):
        ids, mask = left_pad(batch, tokenizer.pad_token_id)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=w.temperature,
                                 top_k=0, top_p=1.0, max_new_tokens=w.response_len, pad_token_id=tokenizer.pad_token_id,
                                 use_cache=True)
        assert out.shape[1] - ids.shape[1] == w.response_len

    def step(i: int) -> dict:
        batch = [p.input_ids for p in prompts[(i * w.batch) % len(prompts):][:w.batch]]
        seconds = {}
        for name in (("ours", "bare") if i % 2 == 0 else ("bare", "ours")):
            start = time.perf_counter()
            (ours if name == "ours" else bare)(batch, i)
            seconds[name] = time.perf_counter() - start
        return {"seconds": seconds["ours"] + seconds["bare"], "ours_s": seconds["ours"], "bare_s": seconds["bare"],
                "ours_tokens_per_s": w.generated_tokens / seconds["ours"],
                "bare_tokens_per_s": w.generated_tokens / seconds["bare"]}

    measured = measure_loop(step, policy)
    return {"records": measured.records, **measured.summary(), "memory": {"peak_rss_mb": peak_rss_mb()}}


# --- reward-model training -------------------------------------------------------------------------
def reward_model(assets: Assets, w: Workload, policy: Policy, threads: int) -> dict:
    """RewardModelWorker (our RM stage's worker, in-process) from the policy backbone, new score head."""
    from rlhf.config.engine import EngineConfig
    from rlhf.data.preferences import PreferenceExample
    from rlhf.models import ModelOptions
    from rlhf.workers.supervised import RewardModelWorker

    set_threads(threads)
    single_process_dist_env()
    worker = RewardModelWorker("reward_model", 0, 1, w.seed)
    worker.init_model(assets.policy, ModelOptions(), EngineConfig(lr=w.lr), w.rm_pairs, 1, assets.tokenizer)
    pairs = load_pairs(assets)
    examples = [PreferenceExample(index=i, prompt="", chosen_ids=p["chosen"], rejected_ids=p["rejected"],
                                  prompt_len=p["prompt_len"]) for i, p in enumerate(pairs)]

    def step(i: int) -> dict:
        start = (i * w.rm_pairs) % len(examples)
        batch = examples[start:start + w.rm_pairs]
        t = time.perf_counter()
        worker.train_step(batch)
        seconds = time.perf_counter() - t
        return {"seconds": seconds, "pairs_per_s": len(batch) / seconds}

    measured = measure_loop(step, policy)
    return {"records": measured.records, **measured.summary(), "memory": {"peak_rss_mb": peak_rss_mb()}}


# --- hardware reference ----------------------------------------------------------------------------
def matmul(policy: Policy, threads: int, n: int = 1024) -> dict:
    from bench.monitor import matmul_flops

    def step(i: int) -> dict:
        start = time.perf_counter()
        result = matmul_flops(threads, n=n, reps=10)
        return {"seconds": time.perf_counter() - start, "best_flops": result["best_flops"],
                "median_flops": result["median_flops"]}

    measured = measure_loop(step, policy)
    summary = measured.summary()
    return {"n": n, "threads": threads, "records": measured.records, **summary}


# --- scaling -----------------------------------------------------------------------------------------
def scaling(assets: Assets, w: Workload, policy: Policy, threads: int, actor_threads: int,
            points: list[tuple[int, int]]) -> dict:
    """Ray PPO seconds per iteration at each (response_len, batch); one Ray cluster, fresh actors per point."""
    from dataclasses import replace

    from rlhf.trainers.ppo import PPOTrainer
    from rlhf.trainers.ppo_stage import init_ray

    set_threads(threads)
    init_ray(num_cpus=os.cpu_count())
    prompts = load_prompts(assets)
    out = []
    try:
        for response_len, batch in points:
            pw = replace(w, response_len=response_len, batch=batch)
            cfg = ppo_config(assets, pw)
            groups = start_ray_groups(cfg, actor_threads)
            try:
                with tempfile.TemporaryDirectory() as run_dir:
                    trainer = PPOTrainer(cfg, groups, prompts, run_dir=run_dir)

                    def step(i: int) -> dict:
                        start = time.perf_counter()
                        trainer.train_step(i + 1)
                        seconds = time.perf_counter() - start
                        return {"seconds": seconds, "tokens_per_s": pw.generated_tokens / seconds}

                    measured = measure_loop(step, policy)
            finally:
                groups.shutdown()
            out.append({"response_len": response_len, "batch": batch, **measured.summary(),
                        "records": measured.records})
            print(f"  scaling T={response_len} B={batch}: {out[-1]['median'].get('seconds', float('nan')):.3f} s/it",
                  file=sys.stderr, flush=True)
    finally:
        import ray

        ray.shutdown()
    return {"points": out, "reliable": all(p["reliable"] for p in out)}
