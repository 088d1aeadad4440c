"""Does a recipe learn on any machine? Run it over seeds × CPU kernel paths and tabulate every run.

Another CPU runs other floating-point kernels, with other summation orders: a recipe tuned at the edge
of a phase transition crosses it on one machine and not on another (issue 18). One machine can run
the kernels of another CPU class: `--kernels avx2` sets `MKL_ENABLE_INSTRUCTIONS=AVX2` (MKL's BLAS
takes its AVX2 code path) and `ATEN_CPU_CAPABILITY=avx2` (torch's own vectorised kernels: softmax,
norms, reductions) for the whole run — driver and Ray workers — which is what an AVX2-only CPU such as
the AMD EPYC of issue 18 runs. On an AVX-512 machine both change results bit for bit (on an AVX2-only
CPU `avx2` is the native path; `--kernels sse`, MKL's SSE4.2 and torch's unvectorised kernels, is the
other path there: it changes most matmul outputs in their last bits); the torch thread
count does not (measured: 1 and 2 threads gave bit-identical SFT losses over 650 steps), so threads are
an axis only when asked for. Seeds change everything else. A recipe that meets its expectations in
every cell does not hinge on the machine it was tuned on.

    python bench/recipe_matrix.py                              # quickstart, seeds 0 1 2 × kernels native avx2
    python bench/recipe_matrix.py --recipe quickstart_grpo
    python bench/recipe_matrix.py --recipe quickstart_offline
    python bench/recipe_matrix.py --recipe quickstart_async
    python bench/recipe_matrix.py --threads 1 default --kernels native
    python bench/recipe_matrix.py --out /tmp/matrix -- ppo.trainer.total_steps=80   # extra overrides

Each run is the real `rlhf` command (`seed=S`, `torch_threads=T`), one after another (they would share
the cores otherwise, and wall time is one of the targets). Threads "default" leaves the count to Ray:
a rank that holds both cores (the quickstart's SFT and RM) uses 2, the PPO roles, which share the
cores, 1 each. Prints a Markdown table and writes `matrix.json`; exits 1 if any run failed or missed its
recipe's expectations.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RLHF = Path(sys.executable).parent / "rlhf"
# The environment that makes this machine run another CPU class's kernels (read at process start).
KERNELS = {"native": {}, "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
           # An older CPU's path: MKL's SSE4.2 kernels and torch's unvectorised ones. On an AVX2-only CPU
           # (where "avx2" IS the native path) this is the other kernel path that one machine can run.
           "sse": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ATEN_CPU_CAPABILITY": "default"}}
COLUMNS = [  # (header, stage, summary key, format)
    ("SFT loss", "sft", "train_loss", "{:.3f}"), ("SFT gold", "sft", "gold_accuracy", "{:.3f}"),
    ("RM acc", "rm", "eval_accuracy", "{:.3f}"),
    ("sampled gold", "ppo", ("gold_reward_initial", "gold_reward_final"), "{:.3f} → {:.3f}"),
    ("greedy gold", "ppo", ("gold_greedy_initial", "gold_greedy_final"), "{:.3f} → {:.3f}"),
    ("RM–gold corr", "ppo", "rm_gold_corr_final", "{:.2f}"),
    ("staleness", "ppo", "async_staleness_mean", "{:.2f}"),  # asynchronous rollout: mean updates behind
    ("data gold", "offline", "data_gold_mean", "{:.3f}"),  # the stored rollouts' own accuracy
    ("offline sampled gold", "offline", ("gold_accuracy_sampled_initial", "gold_accuracy_sampled"), "{:.3f} → {:.3f}"),
    ("offline greedy gold", "offline", ("gold_accuracy_initial", "gold_accuracy"), "{:.3f} → {:.3f}"),
]


def run_one(recipe: str, seed: int, kernels: str, threads: str, out: Path, extra: list[str]) -> dict:
    run_dir = out / f"{recipe}-seed{seed}-{kernels}-threads{threads}"
    args = [str(RLHF), f"recipe={recipe}", f"run_dir={run_dir}", f"seed={seed}", "logging=quiet", *extra]
    if threads != "default":
        args.append(f"torch_threads={threads}")
    if run_dir.exists():
        args.append("overwrite=true")
    start = time.monotonic()
    with open(out / f"{run_dir.name}.log", "w") as log:
        code = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **KERNELS[kernels]}).returncode
    minutes = (time.monotonic() - start) / 60
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    met = code == 0 and all(entry.get("expectations_met", True) for entry in summary.values())
    return {"recipe": recipe, "seed": seed, "kernels": kernels, "threads": threads, "exit": code, "minutes": minutes,
            "expectations_met": met, "summary": summary, "run_dir": str(run_dir)}


def cell(summary: dict, stage: str, key, fmt: str) -> str:
    entry = summary.get(stage, {})
    keys = key if isinstance(key, tuple) else (key,)
    values = [entry.get(k) for k in keys]
    if stage not in summary:
        return "—"
    if any(v is None for v in values):
        return "n/a"
    return fmt.format(*values)


def table(results: list[dict]) -> str:
    stages = {stage for r in results for stage in r["summary"]}
    columns = [c for c in COLUMNS if c[1] in stages  # and that some run reports
               and any(cell(r["summary"], *c[1:]) not in ("—", "n/a") for r in results)]
    head = ["seed", "kernels", "threads"] + [c[0] for c in columns] + ["minutes", "expectations"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        failed = [f"{stage}.{m}" for stage, entry in r["summary"].items()
                  for m, check in entry.get("expectations", {}).items() if not check.get("ok")]
        verdict = "met" if r["expectations_met"] else ("missed: " + ", ".join(failed) if failed else f"exit {r['exit']}")
        row = [str(r["seed"]), r["kernels"], r["threads"]] + [cell(r["summary"], *c[1:]) for c in columns]
        lines.append("| " + " | ".join(row + [f"{r['minutes']:.1f}", verdict]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kernels", nargs="+", default=["native", "avx2"], choices=sorted(KERNELS))
    parser.add_argument("--threads", nargs="+", default=["default"], help="torch_threads values, or 'default'")
    parser.add_argument("--out", type=Path, default=Path("outputs") / "matrix")
    parser.add_argument("overrides", nargs="*", help="extra `rlhf` overrides (after --)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    cells = [(s, k, t) for s in args.seeds for k in args.kernels for t in args.threads]
    for seed, kernels, threads in cells:
        result = run_one(args.recipe, seed, kernels, threads, args.out, args.overrides)
        results.append(result)
        print(f"seed {seed} kernels {kernels} threads {threads}: exit {result['exit']}, {result['minutes']:.1f} min, "
              f"expectations {'met' if result['expectations_met'] else 'NOT met'}", flush=True)
        (args.out / "matrix.json").write_text(json.dumps(results, indent=1))
    print("\n" + table(results))
    return 0 if all(r["expectations_met"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
