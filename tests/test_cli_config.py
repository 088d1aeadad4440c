"""The `rlhf` command's configuration path, run as a user runs it: help, refused overrides (exit 2,
one paragraph naming the field, no traceback), dry runs of every recipe (no Ray), and the run-config
rules (stage subsets, resume decisions, missing inputs) through `rlhf.cli.build_config` in process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.cli import available_recipes, build_config, config_roots, main

RLHF = Path(sys.executable).parent / "rlhf"
RECIPES = sorted(available_recipes(config_roots()[1]))


def rlhf(*args, timeout=300):
    return subprocess.run([str(RLHF), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ})


def test_help_lists_recipes_and_main_fields():
    result = rlhf("--help")
    assert result.returncode == 0
    assert "usage: rlhf recipe=NAME" in result.stdout
    for name in ("quickstart", "quickstart_grpo", "hh_rlhf_llama8b", "gsm8k_qwen05b"):
        assert name in result.stdout
    for field in ("stages=", "run_dir=", "resume=", "dry_run=", "sft.*", "rm.*", "ppo.*"):
        assert field in result.stdout


@pytest.mark.parametrize("override, names", [
    ("ppo.rollout.temperature=-1", ["ppo.rollout", "temperature=-1.0", "> 0"]),
    ("ppo.rollout.tempurature=1", ["ppo.rollout.tempurature"]),  # unknown key
    ("ppo.trainer.total_steps=abc", ["ppo.trainer.total_steps", "Integer"]),  # wrong type
    ("stages=[rm,bogus]", ["stages", "bogus", "prepare", "sft", "rm", "ppo"]),  # unknown stage
    ("ppo.algorithm.advantage.estimator=foo", ["estimator='foo'", "grpo"]),
    ("engine@ppo.engines.actor=nope", ["engine/nope", "zero3_bf16"]),
    ("sft.trainer.batch_size=10", ["sft", "batch_size=10", "divisible"]),
    ("sft.gold_eval.task=nope", ["sft.gold_eval.task='nope'", "arithmetic"]),
    ("sft.gold_eval.task=null", ["gold_eval.task=None", "a task name"]),
    ("torch_threads=0", ["torch_threads=0", ">= 1"]),
    ("rm.expectations.eval_accuracy.atleast=0.9", ["rm.expectations.eval_accuracy.atleast"]),  # unknown key
    ("ppo.trainer.hacking_patience=-1", ["hacking_patience=-1", ">= 0"]),
    ("prepare.tiny_model.tokenizer=gpt4", ["prepare.tiny_model", "tokenizer", "gpt4", "mistral"]),
])
def test_bad_overrides_exit_2_with_a_message_naming_the_field(tmp_path, override, names):
    result = rlhf("recipe=quickstart", f"run_dir={tmp_path}", "dry_run=true", override)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("rlhf: error:") and "Traceback" not in result.stderr
    for name in names:
        assert name in result.stderr, (name, result.stderr)


def test_missing_or_unknown_recipe_is_refused():
    assert "quickstart" in rlhf("stages=[ppo]").stderr
    result = rlhf("recipe=nope")
    assert result.returncode == 2 and "recipe='nope'" in result.stderr and "quickstart" in result.stderr


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_dry_runs_against_its_cluster(tmp_path, recipe):
    result = rlhf(f"recipe={recipe}", f"run_dir={tmp_path / 'run'}", "dry_run=true")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing was started" in result.stdout + result.stderr
    assert "placement ==" in result.stdout and "ZeRO-" in result.stdout
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_real_model_recipe_plans_on_its_described_cluster(tmp_path):
    result = rlhf("recipe=hh_rlhf_llama8b", f"run_dir={tmp_path}", "dry_run=true")
    assert result.returncode == 0, result.stderr
    assert "described (ppo.placement.cluster)" in result.stdout
    assert "roles=actor+reference  1 node(s) × 8 GPU(s) on node0" in result.stdout
    assert "roles=critic+reward  1 node(s) × 8 GPU(s) on node1" in result.stdout
    assert "ZeRO-3" in result.stdout
    # vLLM rollouts: one engine per actor rank on the actor's GPUs, its reservation in the memory plan
    assert "rollout: vllm, 8 engine(s), one per actor rank, colocated on the actor's GPUs" in result.stdout
    rollout_row = next(line for line in result.stdout.splitlines() if line.startswith("rollout "))
    assert float(rollout_row.split()[-1]) == pytest.approx(0.4 * 79, abs=0.01)  # gpu_memory_utilization × GPU
    assert "[policy] actor+reference+rollout on 8 GPU(s)" in result.stdout


def test_impossible_cluster_is_refused_with_exit_2(tmp_path):
    result = rlhf("recipe=hh_rlhf_llama8b", f"run_dir={tmp_path}", "dry_run=true",
                  "ppo.placement.cluster=[{gpus:8,cpus:96,gpu_memory_gb:79}]")
    assert result.returncode == 2
    assert "placement does not fit the cluster" in result.stderr and "Traceback" not in result.stderr


def test_dry_run_starts_no_ray(tmp_path, capsys):
    """In process: the dry run never imports Ray, so no raylet or actor can have started."""
    code = subprocess.run([sys.executable, "-c", (
        "import sys; from rlhf.cli import main\n"
        f"rc = main(['recipe=quickstart', 'run_dir={tmp_path}', 'dry_run=true'])\n"
        "assert rc == 0, rc\n"
        "assert 'ray' not in sys.modules, 'the dry run imported ray'\n"
        f"rc = main(['recipe=hh_rlhf_llama8b', 'run_dir={tmp_path}', 'dry_run=true', 'ppo.placement.cluster=[{{gpus:1}}]'])\n"
        "assert rc == 2, rc\n"
        "assert 'ray' not in sys.modules\n")], capture_output=True, text=True, timeout=120, env={**os.environ})
    assert code.returncode == 0, code.stderr


# --- run-config rules, in process (no subprocess, no Ray) ------------------------------------------
def test_interpolations_follow_run_dir_and_stages_default_to_the_recipe(tmp_path):
    cfg = build_config("quickstart", [f"run_dir={tmp_path}"])
    assert cfg.selected_stages == ["prepare", "sft", "rm", "ppo"]
    assert cfg.ppo.actor.path == f"{tmp_path}/sft/final" and cfg.rm.model.path == f"{tmp_path}/sft/final"
    assert cfg.ppo.reward.path == f"{tmp_path}/rm/final" and cfg.ppo.critic_path() == f"{tmp_path}/rm/final"
    assert cfg.sft.data.train == f"{tmp_path}/data/sft.jsonl"
    assert cfg.ppo.task.kwargs == cfg.prepare.task_kwargs


def test_default_run_dir_is_outputs_recipe_time():
    from datetime import datetime

    cfg = build_config("quickstart", [], now=datetime(2025, 1, 2, 3, 4, 5))
    assert cfg.run_dir == str(Path("outputs/quickstart/20250102-030405").resolve())


def test_reward_norm_from_rm_and_explicit_values_conflict(tmp_path):
    with pytest.raises(ValueError, match="ppo_reward_norm_from_rm"):
        build_config("quickstart", [f"run_dir={tmp_path}", "ppo.algorithm.reward.normalize_std=2.0"])
    cfg = build_config("quickstart", [f"run_dir={tmp_path}", "ppo_reward_norm_from_rm=false",
                                      "ppo.algorithm.reward.normalize_std=2.0"])
    assert cfg.ppo.algorithm.reward.normalize_std == 2.0  # the user's value, untouched


def test_skipped_stage_output_must_exist(tmp_path):
    result = rlhf("recipe=quickstart", f"run_dir={tmp_path}", "stages=[rm,ppo]", "dry_run=true")
    assert result.returncode == 2
    assert f"{tmp_path}/sft/final does not exist" in result.stderr and "stage 'sft'" in result.stderr


def test_resume_decisions(tmp_path):
    from rlhf.trainers.pipeline import decide

    cfg = build_config("quickstart", [f"run_dir={tmp_path}", "resume=true"])
    (tmp_path / "sft" / "final").mkdir(parents=True)
    (tmp_path / "rm" / "checkpoints").mkdir(parents=True)
    (tmp_path / "summary.json").write_text(json.dumps({"sft": {"steps": cfg.sft.trainer.total_steps}}))
    actions = {d.stage: d.action for d in decide(cfg, tmp_path)}
    assert actions == {"prepare": "run", "sft": "skip", "rm": "resume", "ppo": "run"}
    # More steps than the finished run did: the stage is continued, not skipped.
    more = cfg.sft.trainer.total_steps + 500
    longer = build_config("quickstart", [f"run_dir={tmp_path}", "resume=true", f"sft.trainer.total_steps={more}"])
    assert {d.stage: d.action for d in decide(longer, tmp_path)}["sft"] == "resume"
    # Without resume, existing outputs are refused unless overwrite=true.
    fresh = build_config("quickstart", [f"run_dir={tmp_path}"])
    from rlhf.trainers.pipeline import PipelineError

    with pytest.raises(PipelineError, match="overwrite=true"):
        decide(fresh, tmp_path)
    forced = build_config("quickstart", [f"run_dir={tmp_path}", "overwrite=true"])
    assert [d.clear for d in decide(forced, tmp_path)] == [False, True, True, False]


def test_resume_refuses_a_run_dir_that_holds_no_run(tmp_path):
    """Issue 16 §5: a missing, empty or mistyped run_dir with resume=true is an error, not a fresh run."""
    for run_dir, says in ((tmp_path / "typo", "does not exist"), (tmp_path, "holds no earlier run")):
        result = rlhf("recipe=quickstart", f"run_dir={run_dir}", "resume=true", "dry_run=true")
        assert result.returncode == 2, result.stderr
        assert f"resume=true but run_dir {run_dir} {says}" in result.stderr and "leave out resume=true" in result.stderr
    assert not (tmp_path / "typo").exists()  # nothing was created
    (tmp_path / "metrics.jsonl").write_text("")  # an interrupted run that logged nothing yet still counts
    assert rlhf("recipe=quickstart", f"run_dir={tmp_path}", "resume=true", "dry_run=true").returncode == 0


def test_a_reward_function_path_that_does_not_import_is_refused_before_ray(tmp_path, capsys):
    code = main(["recipe=quickstart_grpo", f"run_dir={tmp_path}", "dry_run=true", "ppo.reward_role.use_task_reward=false",
                 "ppo.reward_role.reward_fn=rlhf.tasks.arithmetic:no_such_function"])
    err = capsys.readouterr().err
    assert code == 2 and "ppo.reward_role.reward_fn" in err and "no attribute 'no_such_function'" in err, err
    assert main(["recipe=quickstart_grpo", f"run_dir={tmp_path / 'ok'}", "dry_run=true",
                 "ppo.reward_role.use_task_reward=false",
                 "ppo.reward_role.reward_fn=rlhf.tasks.arithmetic:arithmetic_reward"]) == 0


def test_no_arguments_checks_the_installation(capsys):
    assert main([]) == 0
    assert "installation OK" in capsys.readouterr().out


def test_prompts_without_the_reference_a_task_reward_needs_are_refused_before_anything_starts(tmp_path):
    """Issue 16 §1: a rule reward on rows without references would score every response 0, silently."""
    from rlhf.trainers.pipeline import PipelineError, preflight

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"question": f"{i}+1="}) for i in range(4)) + "\n")
    overrides = [f"run_dir={tmp_path / 'run'}", f"ppo.data.train={prompts}", "ppo.data.eval=null",
                 "ppo.data.train_split=train", "ppo.data.prompt_key=question"]
    with pytest.raises(PipelineError, match=r"ppo.data.train=.*prompts.jsonl: no field 'answer' \(ppo.data.reference_key\) "
                                            r"\(the task's reward needs it\); the rows have fields \['question'\]"):
        preflight(build_config("gsm8k_qwen05b", overrides))
    with pytest.raises(PipelineError, match=r"no field 'prompt' \(ppo.data.prompt_key\)"):
        preflight(build_config("gsm8k_qwen05b", overrides + ["ppo.data.prompt_key=prompt"]))
    prompts.write_text("\n".join(json.dumps({"question": f"{i}+1=", "answer": str(i + 1)}) for i in range(4)) + "\n")
    preflight(build_config("gsm8k_qwen05b", overrides))  # the fields are there: accepted


@pytest.mark.parametrize("override, names", [
    ("sft.placement.devices_per_node=0", "placement.devices_per_node"),  # was a ZeroDivisionError
    ("rm.placement.num_nodes=0", "placement.num_nodes"),
    ("ppo.rollout.top_p=0", "rollout.top_p"),
    ("ppo.rollout.top_k=-3", "rollout.top_k"),
    ("ppo.algorithm.advantage.eps=-1", "advantage.eps"),
    ("ppo.engines.forward_micro_batch_size=0", "engines.forward_micro_batch_size"),
    ("ppo.trainer.call_timeout_s=0", "trainer.call_timeout_s"),
    ("ppo.trainer.max_restarts=-1", "trainer.max_restarts"),
    ("ppo.reward_role.fn_memory_mb=-1", "reward_role.fn_memory_mb"),
    ("ppo.reward_role.fn_cpu_s=0", "reward_role.fn_cpu_s"),
    ("ppo.trainer.eval_temperature=0", "trainer.eval_temperature"),
    ("ppo.trainer.eval_samples_per_prompt=0", "trainer.eval_samples_per_prompt"),
    ("ppo.data.max_eval_prompts=0", "data.max_eval_prompts"),
    ("sft.trainer.eval_every=-1", "trainer.eval_every"),
    ("rm.trainer.call_timeout_s=-5", "trainer.call_timeout_s"),
    ("rm.data.max_eval_rows=0", "data.max_eval_rows"),
    ("rm.calibration_bins=0", "rm.calibration_bins"),
    ("ppo.reward_role.max_fn_failure_frac=1.5", "reward_role.max_fn_failure_frac"),
    ("ppo.reward_role.server_url=localhost:8000", "reward_role.server_url"),
    ("ppo.reward_role.server_concurrency=0", "reward_role.server_concurrency"),
    ("ppo.reward_role.server_max_retries=-1", "reward_role.server_max_retries"),
    ("ppo.reward_role.server_url=http://127.0.0.1:1/score", "reward.path"),  # the quickstart's RM is still set
    ("ppo.reward_role.reward_fn=rlhf.tasks.arithmetic:arithmetic_reward", "reward.path"),  # the RM is still set
    ("ppo.reward_role.reward_fn=not_a_dotted_path", "reward_role.reward_fn"),
    ("ppo.task.name=no_such_user_module:Task", "ppo.task.name"),
])
def test_numeric_fields_out_of_range_are_refused_before_ray_naming_the_field(tmp_path, capsys, override, names):
    """Issue 16 §13: one paragraph naming the field and what is allowed, exit 2, no traceback."""
    assert main(["recipe=quickstart", f"run_dir={tmp_path}", "dry_run=true", override]) == 2
    err = capsys.readouterr().err
    assert names in err and "Traceback" not in err and "ZeroDivisionError" not in err, err


def test_resume_refuses_a_changed_configuration_or_input_file_listing_each_change(tmp_path):
    """Issue 16 §7: before, resume=true with another temperature, model or data file silently mixed two
    runs in one run_dir. Now each change is listed; more steps (and logging) may change freely, and
    resume_allow_changes accepts a deliberate change."""
    from rlhf.config.io import save_yaml
    from rlhf.trainers.pipeline import PipelineError, preflight
    from rlhf.trainers.resume_check import input_changes

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    run_dir = tmp_path / "run"
    base = [f"run_dir={run_dir}", f"ppo.data.train={prompts}", "ppo.data.eval=null", "ppo.data.prompt_key=prompt"]
    first = build_config("gsm8k_qwen05b", base)
    run_dir.mkdir()
    save_yaml(first, run_dir / "config.yaml")  # what run_pipeline saves when the run starts
    (run_dir / "summary.json").write_text("{}")
    input_changes({"ppo.data.train": str(prompts)}, run_dir, [], refresh=True)

    def resume(*extra):
        return preflight(build_config("gsm8k_qwen05b", [*base, "resume=true", *extra]))

    resume("ppo.trainer.total_steps=500", "ppo.trainer.save_every=7")  # safe: no error
    with pytest.raises(PipelineError, match=r"would not continue the run .* exactly: ppo.rollout.temperature: 1.0 → 0.7; "
                                            r"ppo.trainer.seed: 0 → 3; seed: 0 → 3\. Accept the change\(s\) with "
                                            r"resume_allow_changes=\[ppo.rollout.temperature,ppo.trainer.seed,seed\]"):
        resume("ppo.rollout.temperature=0.7", "seed=3")
    resume("ppo.rollout.temperature=0.7", "resume_allow_changes=[ppo.rollout]")
    prompts.write_text(json.dumps({"prompt": "2+2=", "answer": "4"}) + "\n")
    with pytest.raises(PipelineError, match=r"ppo.data.train: the file .*prompts.jsonl changed since the run started"):
        resume()
    resume("resume_allow_changes=[ppo.data.train]")


def test_a_moved_run_dir_resumes_although_its_paths_changed():
    """Paths under the saved run_dir (interpolated from it) follow the directory when it is moved."""
    from rlhf.trainers.resume_check import config_changes

    saved = {"run_dir": "/old/run", "ppo": {"actor": {"path": "/old/run/sft/final"}, "data": {"train": "/data/x"}}}
    moved = {"run_dir": "/new/run", "ppo": {"actor": {"path": "/new/run/sft/final"}, "data": {"train": "/data/x"}}}
    assert config_changes(saved, moved, []) == []
    moved["ppo"]["data"]["train"] = "/data/y"
    assert config_changes(saved, moved, []) == ["ppo.data.train: '/data/x' → '/data/y'"]


def prepared_run_dir(run_dir: Path) -> Path:
    """A run_dir as the quickstart's prepare stage leaves it (files written by hand; no model needed:
    pre-flight only checks that the base model's directory exists)."""
    (run_dir / "base").mkdir(parents=True)
    data = run_dir / "data"
    data.mkdir()
    files = {
        "sft.jsonl": [{"prompt": f"{i}+1=", "response": str(i + 1)} for i in range(4)],
        "eval_prompts.jsonl": [{"prompt": f"{i}+2=", "answer": str(i + 2)} for i in range(4)],
        "train_prompts.jsonl": [{"prompt": f"{i}+3=", "answer": str(i + 3)} for i in range(4)],
        "preferences_train.jsonl": [{"prompt": f"{i}+4=", "chosen": str(i + 4), "rejected": str(i + 5),
                                     "negative_type": "plus_1"} for i in range(4)],
        "preferences_eval.jsonl": [{"prompt": f"{i}+5=", "chosen": str(i + 5), "rejected": str(i + 6),
                                    "negative_type": "plus_1"} for i in range(4)],
    }
    for name, rows in files.items():
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


@pytest.mark.parametrize("file, text, error", [
    ("preferences_train.jsonl", '{"prompt": "1+1=", "chosen": "2", "negative_type": "plus_1"}\n',
     r"rm.data.train=\S*preferences_train.jsonl: no field 'rejected' \(rm.data.rejected_key\); the rows have fields"),
    ("sft.jsonl", '{"prompt": "1+1=", "answer": "2"}\n',
     r"sft.data.train=\S*sft.jsonl: no field 'messages' \(sft.data.messages_key\), or 'prompt' \(sft.data.prompt_key\) "
     r"and 'response' \(sft.data.response_key\)"),
    ("sft.jsonl", '{"messages": [{"role": "user", "content": "1+1="}, {"role": "asistant", "content": "2"}]}\n',
     r"sft.data.train: \S*sft.jsonl, row 0 \(line 1\), field 'messages': message 1: unknown role 'asistant'"),
    ("eval_prompts.jsonl", '{"prompt": "1+1=", "gold": "2"}\n',
     r"sft.gold_eval.prompts=\S*eval_prompts.jsonl: no field 'answer' \(sft.gold_eval.reference_key\)"),
    ("train_prompts.jsonl", '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": 4\n',
     r"ppo.data.train: \S*train_prompts.jsonl, row 1 \(line 2\): malformed JSON"),
    ("preferences_eval.jsonl", '{"prompt": "1+1=", "chosen": 2, "rejected": "3"}\n',
     r"rm.data.eval: \S*preferences_eval.jsonl, row 0 \(line 1\), field 'chosen': expected a non-empty string"),
])
def test_every_stage_s_data_is_checked_before_the_first_stage_trains(tmp_path, file, text, error):
    """Issue 16 §11: a bad RM or PPO file used to be found after SFT (and RM) had trained; now the
    run is refused at pre-flight, naming the config field, the file, and the row/line/field."""
    from rlhf.trainers.pipeline import PipelineError, preflight

    run_dir = tmp_path / "run"
    data = prepared_run_dir(run_dir)
    cfg = build_config("quickstart", [f"run_dir={run_dir}", "stages=[sft,rm,ppo]"])
    preflight(cfg)  # every file as prepare writes it: accepted
    (data / file).write_text(text)
    with pytest.raises(PipelineError, match=error):
        preflight(cfg)


@pytest.mark.parametrize("file, text, error", [
    ("preferences_train.jsonl", '{"prompt": "1+1=", "chosen": "2"}\n',
     r"dpo.data.train=\S*preferences_train.jsonl: no field 'rejected' \(dpo.data.rejected_key\)"),
    ("eval_prompts.jsonl", '{"prompt": "1+1=", "gold": "2"}\n',
     r"dpo.gold_eval.prompts=\S*eval_prompts.jsonl: no field 'answer' \(dpo.gold_eval.reference_key\)"),
])
def test_the_dpo_stage_s_pairs_and_gold_prompts_are_checked_at_preflight(tmp_path, file, text, error):
    from rlhf.trainers.pipeline import PipelineError, preflight

    run_dir = tmp_path / "run"
    data = prepared_run_dir(run_dir)
    (run_dir / "sft" / "final").mkdir(parents=True)  # the DPO policy's directory exists (not read here)
    cfg = build_config("quickstart_dpo", [f"run_dir={run_dir}", "stages=[dpo]"])
    preflight(cfg)
    (data / file).write_text(text)
    with pytest.raises(PipelineError, match=error):
        preflight(cfg)


def test_bad_ppo_data_stops_the_real_command_before_sft_starts(tmp_path):
    run_dir = tmp_path / "run"
    data = prepared_run_dir(run_dir)
    (data / "train_prompts.jsonl").write_text('{"question": "1+1=", "answer": "2"}\n')
    result = rlhf("recipe=quickstart", f"run_dir={run_dir}", "stages=[sft,rm,ppo]")
    assert result.returncode == 2, result.stderr
    assert "ppo.data.train=" in result.stderr and "no field 'prompt' (ppo.data.prompt_key)" in result.stderr
    assert "Traceback" not in result.stderr and not (run_dir / "sft").exists()


def test_bad_data_a_stage_finds_while_loading_is_one_line_and_exit_2(tmp_path):
    """Issue 16 §14: pre-flight reads the first rows; a bad row further down is found when the stage
    loads its data — still a one-line error naming file, row and field, exit 2, no traceback (the
    traceback only with RLHF_DEBUG=1)."""
    from rlhf.models.tiny import build_tiny_model
    from rlhf.trainers.preflight_data import FIRST_ROWS

    run_dir = tmp_path / "run"
    data = prepared_run_dir(run_dir)
    build_tiny_model(run_dir / "base", max_positions=64)
    rows = [{"prompt": f"{i}+1=", "response": str(i + 1)} for i in range(FIRST_ROWS + 4)]
    rows[FIRST_ROWS + 2]["response"] = "  "
    (data / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ("recipe=quickstart", f"run_dir={run_dir}", "stages=[sft]", "logging=quiet")
    result = rlhf(*args)
    assert result.returncode == 2, result.stderr[-3000:]
    row = FIRST_ROWS + 2
    assert (f"sft.jsonl, row {row} (line {row + 1}), field 'response': expected a non-empty string, got str '  '"
            in result.stderr), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    debug = subprocess.run([str(RLHF), *args, "overwrite=true"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "RLHF_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr and f"row {row}" in debug.stderr
