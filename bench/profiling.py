"""`python bench/run.py --profile`: where each system's iteration time goes.

Runs the sections with few iterations under profilers and writes text reports to
bench/results/profile-<timestamp>/:
  <section>.cprofile.txt   cProfile of the section process, top functions by cumulative and by own time
  <section>.torch.txt      torch.profiler operator table (self CPU time) of the measured iterations
  ray_ppo.pyspy.txt        py-spy sampling of the driver AND every Ray actor (cProfile cannot see into
                           actors), top functions per process by own samples; raw stacks beside it
In-process sections: local_ppo, rm_ours, generation, and (with the bench extra) trl_ppo, rm_trl.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def profiled_section(spec: dict, run) -> None:
    """Run `run()` with its measured loop under cProfile and torch.profiler; write the reports in `spec`."""
    import contextlib
    import cProfile
    import io
    import pstats

    import torch

    from bench import monitor

    profiler = cProfile.Profile()
    holder = {}

    @contextlib.contextmanager
    def loop():
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        prof.__enter__()
        profiler.enable()
        try:
            yield
        finally:  # also when TRL's loop is left by the bench's stop exception
            profiler.disable()
            prof.__exit__(None, None, None)
            holder["torch"] = prof

    monitor.LOOP_PROFILER = loop
    run()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    out.write("=== measured loop (warm-up included, set-up excluded), by cumulative time ===\n")
    stats.sort_stats("cumulative").print_stats(45)
    out.write("\n=== by own (total) time ===\n")
    stats.sort_stats("tottime").print_stats(35)
    Path(spec["cprofile_out"]).write_text(out.getvalue())
    if "torch" in holder:
        Path(spec["torch_out"]).write_text(holder["torch"].key_averages().table(sort_by="self_cpu_time_total",
                                                                                row_limit=40))


def summarize_pyspy(raw: Path, top: int = 25) -> str:
    """py-spy's raw (collapsed) stacks → top functions by own samples, per process."""
    own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    total: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        process = frames[0]
        own[process][frames[-1]] += int(count)
        total[process] += int(count)
    lines = []
    for process, n in total.most_common():
        lines.append(f"\n=== {process}: {n} samples; top functions by own samples ===")
        for frame, c in own[process].most_common(top):
            lines.append(f"{100 * c / n:6.1f}%  {frame}")
    return "\n".join(lines)


def profile(args) -> int:
    from bench.monitor import Policy
    from bench.run import trl_available
    from bench.workload import Workload, build_assets

    w = replace(Workload(), iterations=4, warmup=1)
    policy = Policy(warmup=1, iterations=3, threshold_cores=args.busy_threshold, max_extra=0)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.results) / f"profile-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = ["local_ppo", "rm_ours", "generation"]
    if trl_available()[0] and not args.skip_trl:
        sections += ["trl_ppo", "rm_trl"]
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-profile-") as tmp:
        assets = build_assets(Path(tmp) / "assets", w)
        base = {"workload": asdict(w), "policy": asdict(policy), "assets": assets.root, "threads": args.threads,
                "actor_threads": args.actor_threads or args.threads, "points": []}
        for name in sections:
            spec = {**base, "section": name, "out": str(out_dir / f"{name}.result.json"),
                    "cprofile_out": str(out_dir / f"{name}.cprofile.txt"), "torch_out": str(out_dir / f"{name}.torch.txt")}
            spec_path = Path(tmp) / f"{name}.spec.json"
            spec_path.write_text(json.dumps(spec))
            print(f"profiling {name} ...", flush=True)
            with open(out_dir / f"{name}.log", "w") as log:
                code = subprocess.call([sys.executable, str(REPO / "bench" / "run.py"), "--section", name,
                                        "--spec", str(spec_path)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            print(f"    exit {code}; {out_dir / (name + '.cprofile.txt')}", flush=True)
        # Ray: cProfile cannot see into actors; py-spy samples the driver and each actor (own process each).
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if Path(pyspy).exists():
            spec = {**base, "section": "ray_ppo", "out": str(out_dir / "ray_ppo.result.json")}
            spec_path = Path(tmp) / "ray_ppo.spec.json"
            spec_path.write_text(json.dumps(spec))
            raw_dir = out_dir / "ray_ppo.pyspy"
            print("profiling ray_ppo with py-spy (driver + each actor) ...", flush=True)
            env = {**os.environ, "RLHF_BENCH_PYSPY_DIR": str(raw_dir)}
            with open(out_dir / "ray_ppo.log", "w") as log:
                code = subprocess.call([sys.executable, str(REPO / "bench" / "run.py"), "--section", "ray_ppo",
                                        "--spec", str(spec_path)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                       env=env)
            report = [f"\n##### {raw.stem.replace('.raw', '')} #####" + summarize_pyspy(raw)
                      for raw in sorted(raw_dir.glob("*.raw.txt"))]
            (out_dir / "ray_ppo.pyspy.txt").write_text("\n".join(report))
            print(f"    exit {code}; {out_dir / 'ray_ppo.pyspy.txt'}", flush=True)
        else:
            print("py-spy not found: skipping the Ray profile (pip install py-spy)")
    print(f"\nprofiles in {out_dir}")
    return 0
