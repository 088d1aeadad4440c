"""rlhf.trainers.metrics / plots: every sink receives the step, the JSONL survives crashes and resumes
byte-exactly, and a broken sink never stops the others. CPU only, no network (wandb is offline)."""
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.trainers import metrics as metrics_mod
from rlhf.trainers.metrics import (
    MetricsLogger,
    plot_curves,
    read_jsonl,
    summary_table,
    truncate_after,
    write_summary,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def quiet_logger(run_dir, stage, **kwargs):
    """JSONL only unless a test asks for more: keeps each test to the sink it is about."""
    return MetricsLogger(run_dir, stage, **{"tensorboard": False, "progress": False, **kwargs})


def strict_json_lines(path):
    """Parse every line, refusing the NaN/Infinity tokens that Python's json accepts by default."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return [json.loads(line, parse_constant=refuse) for line in Path(path).read_text().splitlines()]


def test_one_json_object_per_log_with_stage_and_step(tmp_path):
    with quiet_logger(tmp_path, "ppo") as m:
        for step in range(1, 4):
            m.log(step, {"reward/mean": 0.1 * step, "samples": 8})
    records = strict_json_lines(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["stage"] == "ppo" for r in records)
    assert records[1] == {"stage": "ppo", "step": 2, "reward/mean": pytest.approx(0.2), "samples": 8}
    assert m.history() == records == read_jsonl(tmp_path / "metrics.jsonl")


def test_non_finite_values_are_written_as_null(tmp_path):
    torch = pytest.importorskip("torch")
    with quiet_logger(tmp_path, "ppo") as m:
        m.log(1, {"a": math.nan, "b": math.inf, "c": -math.inf, "d": torch.tensor(1.5), "e": 2.0})
    (record,) = strict_json_lines(tmp_path / "metrics.jsonl")
    assert record == {"stage": "ppo", "step": 1, "a": None, "b": None, "c": None, "d": 1.5, "e": 2.0}


def test_bad_metric_names_and_values_raise(tmp_path):
    with quiet_logger(tmp_path, "ppo") as m:
        with pytest.raises(ValueError, match="reserved"):
            m.log(1, {"step": 1.0})
        with pytest.raises(TypeError, match="'note'"):
            m.log(1, {"note": "hello"})


def test_two_stages_share_one_file(tmp_path):
    with quiet_logger(tmp_path, "rm") as rm:
        rm.log(1, {"loss": 0.7})
        rm.log(2, {"loss": 0.5})
    with quiet_logger(tmp_path, "ppo") as ppo:
        ppo.log(1, {"reward/mean": 0.2})
    path = tmp_path / "metrics.jsonl"
    assert [(r["stage"], r["step"]) for r in read_jsonl(path)] == [("rm", 1), ("rm", 2), ("ppo", 1)]
    assert [r["loss"] for r in read_jsonl(path, stage="rm")] == [0.7, 0.5]
    assert ppo.history() == read_jsonl(path, stage="ppo")


def test_read_jsonl_skips_a_torn_last_line_and_a_new_logger_repairs_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with quiet_logger(tmp_path, "ppo") as m:
        m.log(1, {"x": 1.0})
    with open(path, "a") as f:
        f.write('{"stage": "ppo", "step": 2, "x": 0.')  # crash mid-write
    assert [r["step"] for r in read_jsonl(path)] == [1]
    with quiet_logger(tmp_path, "ppo") as m:  # restart without resume: the fragment must not glue on
        m.log(2, {"x": 2.0})
    assert [r["step"] for r in strict_json_lines(path)] == [1, 2]


def test_read_jsonl_raises_on_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"stage": "rm", "step": 1}\nnot json\n{"stage": "rm", "step": 2}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_jsonl(path)


def test_truncate_after_drops_one_stages_later_records_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"stage": "rm", "step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)]
    lines += [{"stage": "ppo", "step": s, "kl/mean": 0.01 * s} for s in (1, 2, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"stage": "ppo", "st')
    assert truncate_after(path, "ppo", 2) == 2
    assert [(r["stage"], r["step"]) for r in read_jsonl(path)] == (
        [("rm", s) for s in (1, 2, 3, 4)] + [("ppo", 1), ("ppo", 2)])
    assert path.read_text().endswith("\n")  # the torn fragment went too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temp file left behind
    assert truncate_after(tmp_path / "missing.jsonl", "ppo", 2) == 0


def test_resume_from_checkpoint_reproduces_an_uninterrupted_file_exactly(tmp_path):
    def ppo_metrics(step):
        return {"reward/mean": step / 10, "kl/mean": math.nan if step == 3 else step / 100}

    def run(run_dir, crash_after=None, resume_step=None):
        with quiet_logger(run_dir, "ppo", resume_step=resume_step) as m:
            for step in range((resume_step or 0) + 1, 7):
                m.log(step, ppo_metrics(step))
                if step == crash_after:
                    return

    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    for run_dir in (clean, crashed):
        with quiet_logger(run_dir, "rm") as m:
            m.log(1, {"loss": 0.6})
    run(clean)
    run(crashed, crash_after=4)  # last checkpoint was at step 2; steps 3-4 were logged after it
    with open(crashed / "metrics.jsonl", "a") as f:
        f.write('{"stage": "ppo", "step": 5, "rew')
    run(crashed, resume_step=2)
    assert (crashed / "metrics.jsonl").read_bytes() == (clean / "metrics.jsonl").read_bytes()


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, "ppo", progress=False) as m:
        for step in (1, 2, 3):
            m.log(step, {"reward/mean": 0.5 * step, "actor/loss": -0.1})
    log_dir = tmp_path / "tensorboard" / "ppo"
    assert list(log_dir.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    assert {"reward/mean", "actor/loss"} <= set(acc.Tags()["scalars"])
    events = acc.Scalars("reward/mean")
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.value for e in events] == pytest.approx([0.5, 1.0, 1.5])


def test_wandb_offline_run_is_created_under_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with quiet_logger(tmp_path, "rm", wandb=True, config={"lr": 1e-5}) as m:
        assert "wandb" in m._sinks, "wandb sink failed to start (see the warning in the log)"
        m.log(1, {"loss": 0.7})
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))


def test_wandb_mode_is_offline_unless_configured(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert metrics_mod._wandb_mode(None) == "offline"
    assert metrics_mod._wandb_mode("online") == "online"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert metrics_mod._wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert metrics_mod._wandb_mode(None) is None  # wandb reads WANDB_MODE itself


def test_a_sink_that_fails_to_start_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    import torch.utils.tensorboard

    def broken_writer(*args, **kwargs):
        raise OSError("disk quota exceeded")

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", broken_writer)
    with caplog.at_level(logging.WARNING, logger="rlhf.trainers.metrics"):
        with MetricsLogger(tmp_path, "ppo", progress=False) as m:
            m.log(1, {"x": 1.0})
    assert "tensorboard sink failed to start" in caplog.text
    assert [r["x"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1.0]


def test_a_sink_that_fails_mid_run_is_switched_off_and_the_others_continue(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="rlhf.trainers.metrics"):
        with MetricsLogger(tmp_path, "ppo", progress=False) as m:
            m.log(1, {"x": 1.0})

            def broken_add_scalar(*args, **kwargs):
                raise RuntimeError("writer died")

            m._sinks["tensorboard"].writer.add_scalar = broken_add_scalar
            m.log(2, {"x": 2.0})
            m.log(3, {"x": 3.0})
    assert caplog.text.count("tensorboard sink failed at step 2") == 1
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_progress_bar_shows_step_and_key_metrics(tmp_path, capsys):
    with MetricsLogger(tmp_path, "ppo", tensorboard=False, total_steps=4, console_every=0,
                       progress_keys=("reward/mean",)) as m:
        for step in range(1, 5):
            m.log(step, {"reward/mean": 0.25, "other": 9.0})
    err = capsys.readouterr().err
    assert "4/4" in err and "reward/mean=0.25" in err and "other" not in err


def test_console_line_every_n_steps(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="rlhf.trainers.metrics"):
        with quiet_logger(tmp_path, "rm", console_every=2) as m:
            for step in range(1, 6):
                m.log(step, {"loss": 0.123456, "accuracy": math.nan})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["[rm] step 2 loss=0.1235 accuracy=n/a", "[rm] step 4 loss=0.1235 accuracy=n/a"]


def test_close_is_idempotent_and_log_after_close_raises(tmp_path):
    m = MetricsLogger(tmp_path, "ppo", progress=False)
    m.log(1, {"x": 1.0})
    m.close()
    m.close()
    with pytest.raises(RuntimeError, match="closed"):
        m.log(2, {"x": 2.0})


def test_plot_is_a_png_and_tolerates_missing_keys_and_none(tmp_path):
    records = [{"stage": "ppo", "step": s, "reward/mean": None if s == 2 else s / 10, "kl/mean": 0.01}
               for s in range(1, 6)]
    records.append({"stage": "ppo", "step": 6, "kl/mean": None})  # a key missing from one record
    out = plot_curves(records, ["reward/mean", "kl/mean", "not/logged"], tmp_path / "plots" / "ppo.png")
    assert out == tmp_path / "plots" / "ppo.png"
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    empty = plot_curves([], ["reward/mean"], tmp_path / "empty.png")
    assert empty.read_bytes().startswith(PNG_SIGNATURE)


def test_summary_table_is_aligned():
    table = summary_table({"eval_accuracy": 0.91234, "gold_reward": math.nan, "steps": 200}, "rm")
    lines = table.splitlines()
    assert lines[0] == "rm"
    rows = lines[2:-1]
    assert [r.split() for r in rows] == [["eval_accuracy", "0.9123"], ["gold_reward", "n/a"], ["steps", "200"]]
    assert len({len(r) for r in rows}) == 1  # values right-aligned in one column


def test_write_summary_merges_stages_atomically(tmp_path):
    path = tmp_path / "summary.json"
    write_summary(path, "rm", {"eval_accuracy": 0.91})
    write_summary(path, "ppo", {"gold_reward_initial": 0.3, "kl_final": math.nan})
    merged = write_summary(path, "ppo", {"gold_reward_final": 0.7})
    expected = {"rm": {"eval_accuracy": 0.91},
                "ppo": {"gold_reward_initial": 0.3, "kl_final": None, "gold_reward_final": 0.7}}
    assert merged == expected
    assert json.loads(path.read_text(), parse_constant=lambda t: pytest.fail(t)) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_importing_the_module_does_not_import_sink_libraries():
    code = ("import sys, rlhf.trainers.metrics\n"
            "heavy = ['matplotlib', 'tensorboard', 'torch.utils.tensorboard', 'wandb', 'tqdm']\n"
            "print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_resume_hides_tensorboard_events_logged_after_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, "ppo", progress=False) as m:
        for step in (1, 2, 3, 4):
            m.log(step, {"x": float(step)})
    with MetricsLogger(tmp_path, "ppo", progress=False, resume_step=2) as m:
        for step in (3, 4):
            m.log(step, {"x": 10.0 * step})
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "ppo"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("x")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_a_failed_jsonl_append_is_retried_and_a_torn_half_line_repaired(tmp_path, monkeypatch):
    """Issue 16 §3: one failing append (e.g. a full disk that frees up) loses nothing."""
    monkeypatch.setattr(metrics_mod, "JSONL_RETRY_WAIT_S", 0.0)
    real_open, failures = open, []

    class HalfWriter:
        def __init__(self, path):
            self.f = real_open(path, "a", encoding="utf-8")

        def __enter__(self):
            return self

        def write(self, text):
            self.f.write(text[:5])  # half a record reaches the disk, then the device is full
            raise OSError(28, "No space left on device")

        def __exit__(self, *exc):
            self.f.close()

    def flaky_open(path, mode="r", *args, **kwargs):
        if mode == "a" and not failures:
            failures.append(path)
            return HalfWriter(path)
        return real_open(path, mode, *args, **kwargs)

    with MetricsLogger(tmp_path, "ppo", progress=False, tensorboard=False) as m:
        m.log(1, {"x": 1.0})
        monkeypatch.setattr(metrics_mod, "open", flaky_open, raising=False)
        m.log(2, {"x": 2.0})
        m.log(3, {"x": 3.0})
    assert failures and [r["step"] for r in strict_json_lines(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_a_jsonl_that_cannot_be_written_stops_the_run_naming_the_file(tmp_path, monkeypatch):
    """Issue 16 §3: before, the JSONL sink was switched off after its first error and the run trained on
    without its record; now the run stops with MetricsWriteError after the retries."""
    monkeypatch.setattr(metrics_mod, "JSONL_RETRY_WAIT_S", 0.0)
    m = MetricsLogger(tmp_path, "ppo", progress=False, tensorboard=False)
    m.log(1, {"x": 1.0})

    def full_disk(path, mode="r", *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics_mod, "open", full_disk, raising=False)
    with pytest.raises(metrics_mod.MetricsWriteError, match=r"could not append step 2 of stage 'ppo' to .*metrics.jsonl "
                                                            r"after 3 attempts .*No space left on device"):
        m.log(2, {"x": 2.0})
    monkeypatch.undo()
    m.close()
