"""Benchmark of the rlhf PPO stack on a fixed CPU workload, against TRL and against our own baselines.

What: one command runs every measurement of bench/README.md (issue 8) — our four-role PPO on Ray,
the same stages in-process, TRL's PPOTrainer, generation vs bare `generate`, reward-model training vs
TRL's RewardTrainer, achieved vs matmul FLOP/s, and a scaling grid — prints a table of ratios and
writes bench/results/<timestamp>.json.

How it departs from a plain timing loop: each section runs in its own process (clean memory
figures, no framework sharing a process with another), and every measured iteration records how
much CPU other processes used; disturbed iterations are replaced, and a section left without enough
clean ones is marked UNRELIABLE in the table and the JSON (bench/monitor.py).

    python bench/run.py                       # the full benchmark (~10–15 min on 2 quiet cores)
    python bench/run.py --quick --skip-trl    # smoke test of the whole pipeline (CI)
    python bench/run.py --profile             # where the time goes (cProfile, torch profiler, py-spy)
    python bench/run.py --sections ray_ppo,local_ppo --iterations 20
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# `python bench/run.py` puts bench/ first on sys.path: import the harness as the package `bench` instead,
# so that its module names cannot shadow others.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")  # no CUDA here; silences DeepSpeed's detection warning
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray listens on loopback only

SECTIONS = ("matmul", "generation", "local_ppo", "ray_ppo", "hybrid_ppo", "trl_ppo", "rm_ours", "rm_trl", "rm_trl_current", "scaling")
TRL_SECTIONS = ("trl_ppo", "rm_trl", "rm_trl_current")
SCALING_GRIDS = {
    "off": [],
    "quick": [(16, 8), (32, 8)],  # smoke test of the section only: small and fast
    "cross": [(32, 16), (64, 16), (128, 16), (32, 32), (32, 64)],  # each axis from the default point
    "full": [(t, b) for t in (32, 64, 128) for b in (16, 32, 64)],
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 3 measured iterations after 1 warm-up, none replaced; scaling grid 'quick'")
    p.add_argument("--skip-trl", action="store_true", help="leave out the TRL sections (no bench extra needed)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list out of {','.join(SECTIONS)}")
    p.add_argument("--scaling", choices=sorted(SCALING_GRIDS), default=None,
                   help="(response_len, batch) grid: cross (default: 5 points), full (3×3), quick, off")
    p.add_argument("--iterations", type=int, default=None, help="PPO iterations per section incl. warm-up (12)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations not reported (2)")
    p.add_argument("--scaling-iterations", type=int, default=4, help="iterations per scaling point incl. 1 warm-up")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads per process (= cores)")
    p.add_argument("--actor-threads", type=int, default=1,
                   help="torch threads in each Ray actor (default 1: what Ray gives a fractional-CPU actor)")
    p.add_argument("--busy-threshold", type=float, default=0.1,
                   help="an iteration is disturbed when other processes used more than this many cores")
    p.add_argument("--max-extra", type=int, default=None, help="extra iterations to replace disturbed ones")
    p.add_argument("--trl-current", metavar="DIR", default=None,
                   help="a directory holding the current TRL release (pip install --target DIR --no-deps trl==X): "
                        "also measure its RewardTrainer (section rm_trl_current); the pinned trl==1.12.0 keeps "
                        "PPOTrainer, which later releases removed")
    p.add_argument("--section-timeout", type=float, default=1800, help="seconds before a section is killed")
    p.add_argument("--results", default=str(REPO / "bench" / "results"), help="where the JSON goes")
    p.add_argument("--profile", action="store_true", help="profile instead of benchmarking (bench/profiling.py)")
    p.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section from a spec file
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- one section, in a child process ------------------------------------------------------------------
def run_section(spec_path: str) -> None:
    from bench import sections
    from bench.monitor import Policy
    from bench.workload import Assets, Workload

    spec = json.loads(Path(spec_path).read_text())
    name = spec["section"]
    w = Workload(**{**spec["workload"], "prompt_len": tuple(spec["workload"]["prompt_len"])})
    policy = Policy(**spec["policy"])
    assets = Assets.load(spec["assets"])
    threads, actor_threads = spec["threads"], spec["actor_threads"]
    if spec.get("cprofile_out"):  # --profile: the same section under cProfile and torch.profiler
        from bench.profiling import profiled_section

        spec_plain = {k: v for k, v in spec.items() if k not in ("cprofile_out", "torch_out")}
        spec_path_plain = Path(spec["out"]).with_suffix(".plain-spec.json")
        spec_path_plain.write_text(json.dumps(spec_plain))
        profiled_section(spec, lambda: run_section(str(spec_path_plain)))
        return
    if name == "matmul":
        result = sections.matmul(policy, threads)
    elif name == "generation":
        result = sections.generation(assets, w, policy, threads)
    elif name in ("ray_ppo", "local_ppo", "hybrid_ppo"):
        result = sections.ppo(assets, w, policy, name.split("_")[0], threads, actor_threads)
    elif name == "rm_ours":
        result = sections.reward_model(assets, w, policy, threads)
    elif name == "trl_ppo":
        from bench.trl_sections import trl_ppo

        result = trl_ppo(assets, w, policy, threads)
    elif name in ("rm_trl", "rm_trl_current"):
        from bench.trl_sections import trl_reward

        result = trl_reward(assets, w, policy, threads)
    elif name == "scaling":
        result = sections.scaling(assets, w, policy, threads, actor_threads, [tuple(p) for p in spec["points"]])
    else:
        raise SystemExit(f"unknown section {name!r}")
    Path(spec["out"]).write_text(json.dumps(result, default=float))


def launch(name: str, spec: dict, workdir: Path, logdir: Path, timeout: float, pythonpath: str | None = None) -> dict:
    """Run one section in a child process; its result dict, or {"error": ...}. Its output goes to logdir."""
    spec_path, out = workdir / f"{name}.spec.json", workdir / f"{name}.out.json"
    spec_path.write_text(json.dumps({**spec, "section": name, "out": str(out)}))
    log = logdir / f"{name}.log"
    env = dict(os.environ)
    if pythonpath:  # e.g. a newer TRL put first on the path of this section only
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    with open(log, "w") as f:
        try:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--section", name,
                                   "--spec", str(spec_path)], stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                  cwd=REPO, env=env)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    elapsed = time.perf_counter() - start
    if code != 0 or not out.exists():
        tail = log.read_text()[-3000:]
        return {"error": f"exit {code} after {elapsed:.0f} s; log {log}:\n{tail}"}
    result = json.loads(out.read_text())
    result["section_wall_s"] = elapsed
    return result


def trl_available() -> tuple[bool, str]:
    try:
        from importlib.metadata import version

        v = version("trl")
    except Exception:
        return False, "trl is not installed (pip install -e '.[bench]')"
    return True, v


def machine_info(threads: int) -> dict:
    import platform

    import torch

    info = {"cpus": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "hostname": platform.node()}
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        info["cpu_model"] = model
    except (OSError, StopIteration):
        pass
    try:
        info["mem_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError):
        pass
    for pkg in ("transformers", "deepspeed", "ray", "trl", "accelerate"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg)
        except Exception:
            info[pkg] = None
    info["load_avg_at_start"] = os.getloadavg()
    return info


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.section:
        run_section(args.spec)
        return 0
    if args.profile:
        from bench.profiling import profile

        return profile(args)

    from bench.monitor import Policy
    from bench.report import comparisons, table
    from bench.workload import Workload, build_assets

    w = Workload()
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else w.warmup)
    iterations = args.iterations if args.iterations is not None else (warmup + 3 if args.quick else w.iterations)
    w = replace(w, iterations=iterations, warmup=warmup)
    measured = iterations - warmup
    policy = Policy(warmup=warmup, iterations=measured, threshold_cores=args.busy_threshold,
                    max_extra=args.max_extra if args.max_extra is not None else (0 if args.quick else measured))
    scaling_iterations = 2 if args.quick else args.scaling_iterations
    scaling_policy = Policy(warmup=1, iterations=max(scaling_iterations - 1, 1), threshold_cores=args.busy_threshold,
                            max_extra=0 if args.quick else 2)
    grid = SCALING_GRIDS[args.scaling or ("quick" if args.quick else "cross")]
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if args.skip_trl:
        chosen = [s for s in chosen if s not in TRL_SECTIONS]
    if not grid:
        chosen = [s for s in chosen if s != "scaling"]
    if not args.trl_current:
        chosen = [s for s in chosen if s != "rm_trl_current"]
    results: dict = {}
    have_trl, trl_note = trl_available()
    if not have_trl:
        for s in [s for s in chosen if s in TRL_SECTIONS]:
            results[s] = {"error": trl_note}
        chosen = [s for s in chosen if s not in TRL_SECTIONS]

    stamp = time.strftime("%Y%m%d-%H%M%S")
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    threads = args.threads
    logdir = results_dir / f"{stamp}{'-quick' if args.quick else ''}-logs"
    logdir.mkdir()
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-") as tmp:
        workdir = Path(tmp)
        print(f"building assets in {workdir} ...", flush=True)
        assets = build_assets(workdir / "assets", w)
        spec = {"workload": asdict(w), "policy": asdict(policy), "assets": assets.root, "threads": threads,
                "actor_threads": args.actor_threads or threads, "points": grid}
        for name in chosen:
            print(f"[{time.strftime('%H:%M:%S')}] section {name} ...", flush=True)
            section_spec = {**spec, "policy": asdict(scaling_policy)} if name == "scaling" else spec
            results[name] = launch(name, section_spec, workdir, logdir, args.section_timeout,
                                   args.trl_current if name == "rm_trl_current" else None)
            status = "FAILED" if "error" in results[name] else f"{results[name]['section_wall_s']:.0f} s"
            if "error" not in results[name] and results[name].get("reliable") is False:
                status += " (UNRELIABLE: machine busy)"
            print(f"    {name}: {status}", flush=True)
            if "error" in results[name]:
                print(results[name]["error"][-1500:], flush=True)

    rows = comparisons(results)
    unreliable = sorted(k for k, v in results.items() if isinstance(v, dict) and v.get("reliable") is False)
    doc = {"timestamp": stamp, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
           "machine": machine_info(threads), "workload": w.describe(),
           "measurement_policy": {**asdict(policy), "scaling": asdict(scaling_policy), "scaling_grid": grid},
           "actor_threads": args.actor_threads or threads, "quick": args.quick,
           "reliable": not unreliable and all(r["reliable"] for r in rows), "unreliable_sections": unreliable,
           "comparisons": rows, "sections": results}
    out = results_dir / f"{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(doc, indent=1, default=float))
    print()
    print(table(results, rows))
    if not doc["reliable"]:
        print("\nWARNING: other processes used the CPU during the measurement; the figures above are not "
              "reliable. Re-run on a quiet machine.")
    print(f"\nwrote {out} (section logs in {logdir})")
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v and k not in TRL_SECTIONS]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
