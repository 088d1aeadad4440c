"""The quickstart_offline recipe learns from stored rollouts alone (issue 14): a short GRPO run saves its
rollouts, then the SFT model is trained on them with the DRO loss, no sampling, through the real `rlhf`
command with the recipe's expectations strict (exit 3 on a miss).

Slow (~2.5 min on 2 cores): `python -m pytest -m slow tests/recipes/test_offline_learns.py`, a step of
`.ci/run`. The recipe README (recipes/quickstart_offline.md) has the table over seeds and kernel paths.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

RLHF = Path(sys.executable).parent / "rlhf"


@pytest.mark.slow
def test_offline_dro_on_saved_rollouts_beats_the_starting_policy(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run([str(RLHF), "recipe=quickstart_offline", f"run_dir={run_dir}", "seed=1", "logging=quiet",
                             "strict_expectations=true"], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    offline = summary["offline"]
    assert offline["expectations_met"] is True
    assert offline["data_rows"] == 30 * 32 * 4  # every saved row of the 30 PPO steps was read
    # the starting policy is the SFT model: its accuracy before the offline stage is the SFT stage's
    assert offline["gold_accuracy_initial"] == pytest.approx(summary["sft"]["gold_accuracy"])
    assert offline["gold_accuracy_sampled_gain"] >= 0.08 and offline["gold_accuracy_gain"] >= 0.15, offline
