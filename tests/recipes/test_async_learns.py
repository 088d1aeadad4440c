"""The quickstart_async recipe learns with every batch one update behind the policy (issue 14): prepare →
SFT → GRPO with `ppo.trainer.max_staleness=1`, through the real `rlhf` command with the recipe's
expectations strict (exit 3 on a miss).

Slow (~3 min on 2 cores): `python -m pytest -m slow tests/recipes/test_async_learns.py`, a step of
`.ci/run`. The recipe README (recipes/quickstart_async.md) has the table over seeds and kernel paths.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

RLHF = Path(sys.executable).parent / "rlhf"


@pytest.mark.slow
def test_grpo_one_update_behind_raises_the_gold_accuracy(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run([str(RLHF), "recipe=quickstart_async", f"run_dir={run_dir}", "seed=1", "logging=quiet",
                             "strict_expectations=true"], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ppo = json.loads((run_dir / "summary.json").read_text())["ppo"]
    assert ppo["expectations_met"] is True
    steps = ppo["steps"]
    assert ppo["async_staleness_mean"] == pytest.approx((steps - 1) / steps)  # one behind after step 1
    assert ppo["async_waited"] == ppo["async_dropped"] == 0
