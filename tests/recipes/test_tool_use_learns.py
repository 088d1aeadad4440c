"""The tool_use recipe learns to use its calculator (issue 13): GRPO on multi-turn episodes of the
`calculator` environment, after SFT on transcripts half of which skip the tool, through the real
`rlhf` command with the recipe's expectations strict (exit 3 on a miss).

Slow (~3.5 min per seed on 2 cores): `python -m pytest -m slow tests/recipes/test_tool_use_learns.py`, a
step of `.ci/run`. The recipe README (recipes/tool_use.md) has the table over seeds.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

RLHF = Path(sys.executable).parent / "rlhf"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_tool_use_recipe_learns_to_call_the_calculator(tmp_path, seed):
    run_dir = tmp_path / "run"
    result = subprocess.run([str(RLHF), "recipe=tool_use", f"run_dir={run_dir}", f"seed={seed}", "logging=quiet",
                             "strict_expectations=true"], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ppo = json.loads((run_dir / "summary.json").read_text())["ppo"]
    assert ppo["expectations_met"] is True
    assert ppo["gold_reward_gain"] >= 0.2, ppo  # sampled gold accuracy of the episodes, held-out prompts
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("stage") == "ppo" and "eval/sampled/env_tool_calls" in r]
    assert evals[-1]["eval/sampled/env_tool_calls"] > evals[0]["eval/sampled/env_tool_calls"] + 0.2  # it learned the tool
