"""Stage expectations (rlhf.trainers.expectations) and the reward-hacking monitor (rlhf.trainers.monitor):
pure logic, hand-made cases. The end-to-end checks through the `rlhf` command are in
tests/recipes/test_recipes_cpu.py."""
import json
import math

import pytest
import torch

from rlhf.config.expectations import Expectation
from rlhf.trainers.expectations import (ExpectationsNotMet, check_expectations, check_stage, expectations_table,
                                        unmet_expectations)
from rlhf.trainers.metrics import write_summary
from rlhf.trainers.monitor import RewardHackingMonitor, pearson


# --- expectations -------------------------------------------------------------------------------
def test_bounds_are_inclusive_and_missing_or_nan_values_fail():
    expectations = {"a": Expectation(at_least=0.9), "b": Expectation(at_most=0.2), "c": Expectation(0.1, 0.3),
                    "missing": Expectation(at_least=0.0), "nan": Expectation(at_least=0.0),
                    "text": Expectation(at_least=0.0)}
    values = {"a": 0.9, "b": 0.2000001, "c": 0.3, "nan": math.nan, "text": "0.5"}
    results = {r.metric: r for r in check_expectations(values, expectations)}
    assert [results[m].ok for m in expectations] == [True, False, True, False, False, False]
    assert results["missing"].value is None and results["nan"].value is None
    table = expectations_table("rm", list(results.values()))
    assert table.startswith("WARNING rm: 4 of 6 expectations NOT met")
    assert "FAILED  b" in table and "ok      a" in table and "missing" in table


@pytest.mark.parametrize("kwargs, names", [({}, "at least one bound"), ({"at_least": 1.0, "at_most": 0.5}, "at_most"),
                                           ({"at_least": math.inf}, "finite")])
def test_an_expectation_without_a_usable_bound_is_refused(kwargs, names):
    with pytest.raises(ValueError, match=names):
        Expectation(**kwargs)


def test_check_stage_records_the_result_in_summary_json_and_strict_raises(tmp_path, capsys):
    path = tmp_path / "summary.json"
    write_summary(path, "rm", {"eval_accuracy": 0.85, "steps": 10})
    expectations = {"eval_accuracy": Expectation(at_least=0.9, note="RM must see the error")}
    check_stage("rm", expectations, path, strict=False)  # a warning, not an error
    summary = json.loads(path.read_text())
    assert summary["rm"]["expectations_met"] is False
    assert summary["rm"]["expectations"]["eval_accuracy"] == {"value": 0.85, "expected": ">= 0.9", "ok": False}
    assert unmet_expectations(summary) == {"rm": {"eval_accuracy": summary["rm"]["expectations"]["eval_accuracy"]}}
    assert "NOT met" in capsys.readouterr().out
    with pytest.raises(ExpectationsNotMet, match=r"eval_accuracy = 0.85, expected >= 0.9 \(RM must see the error\)"):
        check_stage("rm", expectations, path, strict=True)
    write_summary(path, "rm", {"eval_accuracy": 0.95})
    check_stage("rm", expectations, path, strict=True)
    assert json.loads(path.read_text())["rm"]["expectations_met"] is True
    assert unmet_expectations(json.loads(path.read_text())) == {}


# --- reward-hacking monitor ---------------------------------------------------------------------
def test_pearson_matches_a_hand_case_and_is_nan_when_constant():
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0])) == pytest.approx(0.9933992677987828)
    assert math.isnan(pearson(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])))
    assert math.isnan(pearson(torch.tensor([1.0]), torch.tensor([1.0])))


def test_alarm_after_patience_divergent_evaluations_and_the_last_good_step():
    monitor = RewardHackingMonitor(patience=2, gold_tolerance=0.01)
    # (step, RM score, gold): healthy rise, a noise-sized gold dip, then score up / gold down twice.
    trace = [(0, 0.0, 0.50), (20, 0.5, 0.60), (40, 0.6, 0.595), (60, 0.8, 0.55), (80, 0.9, 0.50), (100, 1.0, 0.45)]
    alarms = []
    for step, reward, gold in trace:
        metrics = monitor.observe(step, reward, gold)
        alarms.append(metrics["hacking/alarm"])
    assert alarms == [0, 0, 0, 0, 1, 1]
    assert monitor.alarm_step == 80 and monitor.last_good_step == 40 and monitor.divergent_total == 3
    assert "3 evaluations in a row" in monitor.describe() and "step 40" in monitor.describe()


def test_recovery_resets_the_streak_and_patience_zero_never_alarms():
    monitor = RewardHackingMonitor(patience=2)
    for step, reward, gold in [(0, 0.0, 0.5), (1, 1.0, 0.4), (2, 0.5, 0.6), (3, 1.0, 0.5)]:
        metrics = monitor.observe(step, reward, gold)
    assert metrics["hacking/streak"] == 1 and not monitor.alarmed and monitor.last_good_step == 2
    off = RewardHackingMonitor(patience=0)
    for step in range(5):
        assert off.observe(step, float(step), 1.0 - step / 10)["hacking/alarm"] == 0


def test_monitor_state_round_trips_for_resume():
    monitor = RewardHackingMonitor(patience=3)
    for step, reward, gold in [(0, 0.0, 0.5), (1, 1.0, 0.4)]:
        monitor.observe(step, reward, gold, torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))
    restored = RewardHackingMonitor(patience=3)
    restored.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert restored == monitor
    assert restored.observe(2, 2.0, 0.3) == monitor.observe(2, 2.0, 0.3)


def test_a_strict_resume_refuses_to_build_on_a_stage_recorded_as_failed(tmp_path):
    from rlhf.trainers.expectations import refuse_unmet

    path = tmp_path / "summary.json"
    write_summary(path, "sft", {"train_loss": 0.8})
    check_stage("sft", {"train_loss": Expectation(at_most=0.2)}, path, strict=False)
    summary = json.loads(path.read_text())
    with pytest.raises(ExpectationsNotMet, match=r"stage 'sft'.*train_loss = 0.8, expected <= 0.2 \(recorded"):
        refuse_unmet("sft", summary)
    refuse_unmet("rm", summary)  # no entry: nothing to refuse
