"""Does a recipe learn on any machine? Run it over seeds × torch thread counts and tabulate every run.

Another CPU picks other floating-point kernels (other summation orders); a different torch thread
count does the same on one machine, and seeds change everything else. A recipe that meets its
expectations in every cell does not hinge on the machine it was tuned on (issue 18).

    python bench/recipe_matrix.py                                   # quickstart, seeds 0 1 2 × threads 1 default
    python bench/recipe_matrix.py --recipe quickstart_grpo --seeds 0 1 2
    python bench/recipe_matrix.py --out /tmp/matrix -- ppo.trainer.total_steps=80   # extra overrides

Each run is the real `rlhf` command (`seed=S`, `torch_threads=T`, `strict_expectations=false`), one
after another (they would share the cores otherwise, and wall time is one of the targets). Threads
"default" leaves the count to Ray: a rank that holds both cores (the quickstart's SFT and RM) uses 2,
the PPO roles, which share the cores, 1 each. Prints a Markdown table and writes `matrix.json`; exits 1
if any run failed or missed its recipe's expectations.
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
COLUMNS = [  # (header, stage, summary key, format)
    ("SFT loss", "sft", "train_loss", "{:.3f}"), ("SFT gold", "sft", "gold_accuracy", "{:.3f}"),
    ("RM acc", "rm", "eval_accuracy", "{:.3f}"),
    ("sampled gold", "ppo", ("gold_reward_initial", "gold_reward_final"), "{:.3f} → {:.3f}"),
    ("greedy gold", "ppo", ("gold_greedy_initial", "gold_greedy_final"), "{:.3f} → {:.3f}"),
    ("RM–gold corr", "ppo", "rm_gold_corr_final", "{:.2f}"),
]


def run_one(recipe: str, seed: int, threads: str, out: Path, extra: list[str]) -> dict:
    run_dir = out / f"{recipe}-seed{seed}-threads{threads}"
    args = [str(RLHF), f"recipe={recipe}", f"run_dir={run_dir}", f"seed={seed}", "logging=quiet", *extra]
    if threads != "default":
        args.append(f"torch_threads={threads}")
    if run_dir.exists():
        args.append("overwrite=true")
    start = time.monotonic()
    with open(out / f"{run_dir.name}.log", "w") as log:
        code = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ}).returncode
    minutes = (time.monotonic() - start) / 60
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    met = code == 0 and all(entry.get("expectations_met", True) for entry in summary.values())
    return {"recipe": recipe, "seed": seed, "threads": threads, "exit": code, "minutes": minutes,
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
    columns = [c for c in COLUMNS if c[1] in stages]
    head = ["seed", "threads"] + [c[0] for c in columns] + ["minutes", "expectations"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        failed = [f"{stage}.{m}" for stage, entry in r["summary"].items()
                  for m, check in entry.get("expectations", {}).items() if not check.get("ok")]
        verdict = "met" if r["expectations_met"] else ("missed: " + ", ".join(failed) if failed else f"exit {r['exit']}")
        row = [str(r["seed"]), r["threads"]] + [cell(r["summary"], *c[1:]) for c in columns]
        lines.append("| " + " | ".join(row + [f"{r['minutes']:.1f}", verdict]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", nargs="+", default=["1", "default"], help="torch_threads values, or 'default'")
    parser.add_argument("--out", type=Path, default=Path("outputs") / "matrix")
    parser.add_argument("overrides", nargs="*", help="extra `rlhf` overrides (after --)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        for threads in args.threads:
            result = run_one(args.recipe, seed, threads, args.out, args.overrides)
            results.append(result)
            print(f"seed {seed} threads {threads}: exit {result['exit']}, {result['minutes']:.1f} min, "
                  f"expectations {'met' if result['expectations_met'] else 'NOT met'}", flush=True)
            (args.out / "matrix.json").write_text(json.dumps(results, indent=1))
    print("\n" + table(results))
    return 0 if all(r["expectations_met"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
