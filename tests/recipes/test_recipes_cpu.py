"""Every recipe end to end on CPU through the real `rlhf` command, with tiny step counts (DESIGN.md §7):
quickstart's four stages, resume/skip/overwrite rules on its run_dir, and 1–2 steps of the GRPO and
real-model recipes with model and data swapped for tiny ones by overrides (as their READMEs document).
Each `rlhf` process starts its own local Ray on loopback (~5 s) plus DeepSpeed engines."""
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

RLHF = Path(sys.executable).parent / "rlhf"
QUICKSTART_SMOKE = [
    "logging=quiet",
    "prepare.task_kwargs.num_train_prompts=200", "prepare.task_kwargs.num_eval_prompts=16",
    "prepare.task_kwargs.num_train_pairs=64", "prepare.task_kwargs.num_eval_pairs=16",
    "sft.trainer.total_steps=2", "sft.trainer.batch_size=8", "sft.trainer.micro_batch_size=8",
    "sft.engine.warmup_steps=0", "rm.engine.warmup_steps=0",  # the cosine schedule needs steps > warm-up
    "rm.trainer.total_steps=2", "rm.trainer.batch_size=8", "rm.trainer.micro_batch_size=8",
    "ppo.trainer.total_steps=2", "ppo.rollout.prompts_per_step=8", "ppo.algorithm.update.micro_batch_size=4",
    "ppo.engines.forward_micro_batch_size=8", "ppo.data.max_eval_prompts=8",
]


# A GRPO-family recipe's PPO stage alone, a few small steps, on the quickstart smoke's copied data/base/sft
# (whose task files were written with 200 train and 16 eval prompts).
PPO_STAGE_SMOKE = [
    "stages=[ppo]", "logging=quiet", "ppo.rollout.prompts_per_step=4", "ppo.algorithm.update.micro_batch_size=4",
    "ppo.engines.forward_micro_batch_size=8", "ppo.data.max_eval_prompts=8",
    "prepare.task_kwargs.num_train_prompts=200", "prepare.task_kwargs.num_eval_prompts=16",
]


USER_CODE = Path(__file__).with_name("user_code")  # a user's modules: run from here, never on sys.path


def without_path_entry(environ, directory: Path) -> dict:
    """`environ` with `directory` taken out of PYTHONPATH (the user's module must be found as the cwd's)."""
    env = dict(environ)
    entries = [e for e in env.get("PYTHONPATH", "").split(os.pathsep) if e and Path(e).resolve() != directory.resolve()]
    if entries:
        env["PYTHONPATH"] = os.pathsep.join(entries)
    else:
        env.pop("PYTHONPATH", None)
    return env


# A multi-turn recipe's smoke: small task files, 2 SFT steps, 2 GRPO steps of 4 prompts x 4 episodes.
EPISODE_SMOKE = [
    "logging=quiet", "prepare.task_kwargs.num_train_prompts=64", "prepare.task_kwargs.num_eval_prompts=8",
    "sft.trainer.total_steps=2", "sft.trainer.batch_size=8", "sft.trainer.micro_batch_size=8",
    "sft.engine.warmup_steps=0", "ppo.trainer.total_steps=2", "ppo.rollout.prompts_per_step=4",
    "ppo.algorithm.update.micro_batch_size=8", "ppo.engines.forward_micro_batch_size=16", "ppo.data.max_eval_prompts=8",
]


def episode_steps(run_dir: Path, episodes_per_step: int, steps: int = 2) -> list[dict]:
    """The PPO steps' records of an environment run, checked: every episode ended with one reason, none for
    the environment's fault."""
    rows = [r for r in records(run_dir) if r.get("stage") == "ppo" and "reward/mean" in r]
    assert len(rows) == steps
    reasons = ("done", "max_turns", "max_tokens", "env_error", "env_timeout")
    for r in rows:
        assert sum(r[f"episode/end_{reason}"] for reason in reasons) == episodes_per_step, r
        assert r["episode/end_env_error"] == 0 and r["episode/end_env_timeout"] == 0
    return rows


def rlhf(*args, timeout=600):
    result = subprocess.run([str(RLHF), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ})
    return result


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 (a dual-stack socket)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class ListenerWatch(threading.Thread):
    """Every listening socket opened by the processes of one run, whichever session they start.

    Ray's daemons leave the run's process tree (they start sessions of their own), so the whole
    machine is polled: a process belongs to the run when its environment carries the run's marker,
    which the driver's children (GCS, raylet, agents) and their children (every worker) inherit.
    """

    def __init__(self, marker: str) -> None:
        super().__init__(daemon=True)
        self.marker, self.listeners, self.stopping = marker, set(), threading.Event()
        self.checked: dict[int, bool] = {}

    def ours(self, proc: psutil.Process) -> bool:
        if proc.pid not in self.checked:
            try:
                self.checked[proc.pid] = proc.environ().get("RLHF_LISTENER_PROBE") == self.marker
            except (psutil.Error, OSError):
                return False  # gone, or a zombie: asked again next round
        return self.checked[proc.pid]

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            for proc in psutil.process_iter(["name"]):
                try:
                    if self.ours(proc):
                        self.listeners |= {(c.laddr.ip, c.laddr.port, proc.info["name"])
                                           for c in proc.net_connections("inet") if c.status == "LISTEN"}
                except (psutil.Error, OSError):
                    continue


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """The smoke quickstart, as a user's shell runs it: without the test suite's Ray variable
    (conftest sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which a user's shell does not), every
    listener of the run recorded."""
    run_dir = tmp_path_factory.mktemp("quickstart") / "run"
    marker = f"quickstart-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    watch = ListenerWatch(marker)
    watch.start()
    try:
        result = subprocess.run([str(RLHF), "recipe=quickstart", f"run_dir={run_dir}", *QUICKSTART_SMOKE],
                                capture_output=True, text=True, timeout=600,
                                env={**env, "RLHF_LISTENER_PROBE": marker})
    finally:
        watch.stopping.set()
        watch.join()
    ok(result)
    return run_dir, watch.listeners


@pytest.fixture(scope="module")
def quickstart(quickstart_run):
    return quickstart_run[0]


def test_a_plain_run_listens_on_loopback_only(quickstart_run):
    """Issue 16 §15: a plain `rlhf` run (every stage: SFT's and RM's rank, PPO's four roles) opens no
    listener beyond 127.0.0.1 / ::1 — Ray's GCS, raylet, agents and every worker included."""
    listeners = quickstart_run[1]
    names = {name for _, _, name in listeners}
    assert {"gcs_server", "raylet"} <= names and len(listeners) >= 6, listeners  # the probe saw the run
    exposed = sorted(entry for entry in listeners if not is_loopback(entry[0]))
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_quickstart_runs_every_stage_and_writes_the_contracted_outputs(quickstart):
    summary = json.loads((quickstart / "summary.json").read_text())
    assert set(summary) == {"sft", "rm", "ppo"}
    assert "eval_accuracy" in summary["rm"]
    assert {"gold_reward_initial", "gold_reward_final"} <= set(summary["ppo"])
    for stage in ("sft", "rm", "ppo"):
        final = quickstart / stage / "final"
        assert (final / "config.json").exists() and (final / "tokenizer.json").exists(), stage
        assert summary[stage]["steps"] == 2
    logged = records(quickstart)
    assert {r["stage"] for r in logged} == {"sft", "rm", "ppo"} and all("step" in r for r in logged)
    assert (quickstart / "config.yaml").exists() and (quickstart / "data" / "sft.jsonl").exists()
    # The RM's held-out score mean/std became PPO's reward normalisation (ppo_reward_norm_from_rm).
    from omegaconf import OmegaConf

    stored = OmegaConf.load(quickstart / "config.yaml")
    assert stored.ppo_reward_norm_from_rm is True


def test_each_stage_checks_its_expectations_and_says_so(quickstart):
    """Two steps per stage cannot learn: every stage records its checks, and the non-strict run warns
    (exit 0) instead of reporting a success."""
    summary = json.loads((quickstart / "summary.json").read_text())
    assert 0.0 <= summary["sft"]["gold_accuracy"] <= 1.0 and summary["sft"]["gold_eval_prompts"] == 16
    for stage, metrics in (("sft", {"gold_accuracy", "train_loss"}), ("rm", {"eval_accuracy"}),
                           ("ppo", {"gold_reward_gain", "gold_greedy_gain", "hacking_alarm"})):
        assert set(summary[stage]["expectations"]) == metrics, stage
    assert summary["sft"]["expectations_met"] is False
    assert summary["sft"]["expectations"]["train_loss"]["ok"] is False  # 2 steps: the loss is still ~2.8
    ppo = summary["ppo"]
    assert ppo["gold_reward_gain"] == ppo["gold_reward_final"] - ppo["gold_reward_initial"]
    assert {"rm_gold_corr_final", "hacking_alarm", "hacking_divergent_evals"} <= set(ppo)


def test_strict_expectations_stop_the_run_at_the_failing_stage_with_exit_3(quickstart, tmp_path):
    run_dir = tmp_path / "run"
    for part in ("data", "base"):
        shutil.copytree(quickstart / part, run_dir / part)
    result = rlhf("recipe=quickstart", f"run_dir={run_dir}", "strict_expectations=true", "torch_threads=1",
                  *QUICKSTART_SMOKE)
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stage 'sft' did not meet its recipe's expectations" in result.stderr
    assert "train_loss" in result.stderr and "expected <= 0.2" in result.stderr
    assert "FAILED" in result.stdout and "torch_threads=1" in result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) == {"sft"} and summary["sft"]["expectations_met"] is False  # rm and ppo never started


def test_resume_skips_finished_stages_without_starting_anything(quickstart):
    result = ok(rlhf("recipe=quickstart", f"run_dir={quickstart}", "resume=true", *QUICKSTART_SMOKE, timeout=400))
    for stage in ("sft", "rm", "ppo"):
        assert f"stage {stage}: skip" in result.stderr
    assert "Ray" not in result.stderr.replace("rlhf.trainers", "")


def test_fresh_rerun_into_a_used_run_dir_is_refused(quickstart):
    result = rlhf("recipe=quickstart", f"run_dir={quickstart}", "stages=[rm,ppo]", *QUICKSTART_SMOKE, timeout=400)
    assert result.returncode == 2 and "resume=true" in result.stderr and "overwrite=true" in result.stderr


def test_ppo_resumes_from_its_checkpoint_when_given_more_steps(quickstart, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(quickstart, run_dir)
    smoke = [o for o in QUICKSTART_SMOKE if not o.startswith("ppo.trainer.total_steps")]
    result = ok(rlhf("recipe=quickstart", f"run_dir={run_dir}", "stages=[ppo]", "resume=true",
                     "ppo.trainer.total_steps=3", *smoke))
    assert "stage ppo: resuming" in result.stderr
    steps = [r["step"] for r in records(run_dir) if r["stage"] == "ppo"]
    assert steps == [0, 1, 2, 3]  # step 0 = the initial evaluation; nothing repeated
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ppo"]["steps"] == 3 and summary["rm"] == json.loads((quickstart / "summary.json").read_text())["rm"]


def test_ppo_resumes_in_the_hybrid_layout(quickstart, tmp_path):
    """Issue 17 through the real command: the quickstart's PPO (four roles, checkpointed in the separate
    layout) resumes with `placement@ppo.placement=cpu_hybrid`: one process hosts the four roles, the idle
    ones releasing their states between phases; the dry run says so; the run ends with the stage's outputs."""
    run_dir = tmp_path / "run"
    shutil.copytree(quickstart, run_dir)
    smoke = [o for o in QUICKSTART_SMOKE if not o.startswith("ppo.trainer.total_steps")]
    args = ["recipe=quickstart", f"run_dir={run_dir}", "stages=[ppo]", "resume=true", "ppo.trainer.total_steps=3",
            "placement@ppo.placement=cpu_hybrid", "ppo.placement.actor.offload_when_idle=optimizer",
            "ppo.placement.critic.offload_when_idle=all", "ppo.placement.reference.offload_when_idle=all", *smoke]
    plan = ok(rlhf(*args, "dry_run=true"))
    assert "[hybrid] roles=actor+critic+reference+reward" in plan.stdout
    assert "one process hosting all 4 roles (hybrid layout" in plan.stdout
    result = ok(rlhf(*args))
    assert "stage ppo: resuming" in result.stderr
    assert [r["step"] for r in records(run_dir) if r["stage"] == "ppo"] == [0, 1, 2, 3]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ppo"]["steps"] == 3 and (run_dir / "ppo" / "final_critic").exists()
    from omegaconf import OmegaConf

    assert OmegaConf.load(run_dir / "config.yaml").ppo.placement.layout == "hybrid"


def test_quickstart_grpo_reuses_earlier_stage_outputs(quickstart, tmp_path):
    """GRPO with the verifier as reward; its prepare and sft outputs are taken from the quickstart run;
    micro-batches packed to token budgets."""
    run_dir = tmp_path / "run"
    for part in ("data", "base", "sft"):
        shutil.copytree(quickstart / part, run_dir / part)
    ok(rlhf("recipe=quickstart_grpo", f"run_dir={run_dir}", "stages=[ppo]", "logging=quiet",
            "ppo.trainer.total_steps=2", "ppo.rollout.prompts_per_step=4", "ppo.algorithm.update.micro_batch_size=4",
            "ppo.engines.forward_micro_batch_size=8", "ppo.data.max_eval_prompts=8",
            # the copied data was written with the quickstart smoke's task size
            "prepare.task_kwargs.num_train_prompts=200", "prepare.task_kwargs.num_eval_prompts=16",
            "ppo.trainer.save_rollouts=true",
            # updates and forwards packed to token budgets (issue 17) instead of row counts
            "ppo.algorithm.update.max_tokens_per_micro_batch=48", "ppo.engines.forward_max_tokens_per_micro_batch=64"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ppo"]["steps"] == 2 and "gold_reward_final" in summary["ppo"]
    assert not (run_dir / "ppo" / "final_critic").exists()  # critic-free
    # the saved rollouts: one shard per step, loadable by `datasets`, matching the step's metrics
    import datasets

    shards = sorted(p.name for p in (run_dir / "ppo" / "rollouts").iterdir())
    assert shards == ["step_000001.parquet", "step_000002.parquet"]
    rows = datasets.load_dataset("parquet", data_files=str(run_dir / "ppo" / "rollouts" / "*.parquet"), split="train")
    assert len(rows) == 2 * 4 * 4 and sorted(set(rows["step"])) == [1, 2]  # steps x prompts x samples
    history = {r["step"]: r for r in records(run_dir) if r.get("stage") == "ppo" and "reward/mean" in r}
    for step in (1, 2):
        scores = [s for s, st in zip(rows["score"], rows["step"]) if st == step]
        assert abs(sum(scores) / len(scores) - history[step]["reward/mean"]) < 1e-5
    assert all(len(ids) == len(lp) == len(m) for ids, lp, m in
               zip(rows["response_ids"], rows["behaviour_logprobs"], rows["response_mask"]))
    versions = sorted(set(rows["weight_version"]))
    assert len(versions) == 2 and versions[0] < versions[1]  # step 2 sampled with the weights step 1 trained


def test_quickstart_async_samples_each_batch_one_update_behind(quickstart, tmp_path):
    """Issue 14 through the real command: with max_staleness=1 the batch of step k+1 is sampled before
    update k, so the saved rollouts of steps 1 and 2 carry the initial weight version and step 3's the
    version after update 1; the dry run says so, summary.json has the async figures."""
    run_dir = tmp_path / "run"
    for part in ("data", "base", "sft"):
        shutil.copytree(quickstart / part, run_dir / part)
    args = ["recipe=quickstart_async", f"run_dir={run_dir}", *PPO_STAGE_SMOKE, "ppo.trainer.total_steps=3",
            "ppo.trainer.eval_every=0", "ppo.trainer.save_rollouts=true"]
    plan = ok(rlhf(*args, "dry_run=true"))
    assert "asynchronous: step k+1..k+1 sampled before step k's update (trainer.max_staleness=1" in plan.stdout
    ok(rlhf(*args))
    history = [r for r in records(run_dir) if r.get("stage") == "ppo" and "reward/mean" in r]
    assert [r["async/staleness_mean"] for r in history] == [0.0, 1.0, 1.0]
    import datasets

    rows = datasets.load_dataset("parquet", data_files=str(run_dir / "ppo" / "rollouts" / "*.parquet"), split="train")
    version = {step: v for step, v in zip(rows["step"], rows["weight_version"])}
    assert version[1] == version[2] < version[3]  # step 2 sampled before update 1, step 3 before update 2
    summary = json.loads((run_dir / "summary.json").read_text())["ppo"]
    assert summary["async_max_staleness"] == 1 and abs(summary["async_staleness_mean"] - 2 / 3) < 1e-9
    assert summary["async_waited"] == summary["async_dropped"] == 0


def test_sigterm_preempts_with_exit_5_and_a_checkpoint_then_resume_finishes(quickstart, tmp_path):
    """Issue 16 §9 through the real command: SIGTERM during PPO step 1 (RLHF_CRASH_AT=term:...) ends the
    run after that step with a checkpoint and exit status 5; resume=true then finishes the stage."""
    run_dir = tmp_path / "run"
    for part in ("data", "base", "sft"):
        shutil.copytree(quickstart / part, run_dir / part)
    args = ["recipe=quickstart_grpo", f"run_dir={run_dir}", *PPO_STAGE_SMOKE, "ppo.trainer.total_steps=2",
            "ppo.trainer.save_every=0"]
    env = {**os.environ, "RLHF_CRASH_AT": "term:after_step@1"}
    first = subprocess.run([str(RLHF), *args], capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 5, first.stderr[-3000:]
    assert "preempted by a signal: stage ppo stopped after step 1" in first.stderr
    assert [p.name for p in (run_dir / "ppo" / "checkpoints").glob("step_*")] == ["step_00000001"]
    ok(rlhf(*args, "resume=true"))
    assert json.loads((run_dir / "summary.json").read_text())["ppo"]["steps"] == 2
    assert [r["step"] for r in records(run_dir) if r["stage"] == "ppo"] == [0, 1, 2]


def test_hh_rlhf_llama8b_smoke_on_cpu(quickstart, tmp_path):
    base, data = quickstart / "base", quickstart / "data"
    ok(rlhf("recipe=hh_rlhf_llama8b", f"run_dir={tmp_path}", "logging=quiet",
            f"rm.model.path={base}", f"rm.data.train={data}/preferences_train.jsonl",
            f"rm.data.eval={data}/preferences_eval.jsonl", "rm.data.eval_split=train", "rm.data.max_len=16",
            "rm.use_gpu=false", "rm.placement.num_nodes=1", "rm.placement.devices_per_node=1",
            "rm.placement.cpus_per_rank=1", "rm.engine.total_steps=2", "rm.engine.warmup_steps=0",
            "rm.trainer.total_steps=2", "rm.trainer.batch_size=8", "rm.trainer.micro_batch_size=8",
            f"ppo.actor.path={base}", f"ppo.data.train={data}/train_prompts.jsonl",
            f"ppo.data.eval={data}/eval_prompts.jsonl", "ppo.data.eval_split=train", "ppo.data.max_prompt_len=16",
            "ppo.data.max_eval_prompts=8", "placement@ppo.placement=cpu_local", "ppo.rollout.prompts_per_step=8",
            "ppo.rollout.max_new_tokens=4", "ppo.algorithm.update.micro_batch_size=2",
            "ppo.engines.forward_micro_batch_size=8", "ppo.trainer.total_steps=2", "ppo.rollout.engine=hf"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rm"]["steps"] == 2 and summary["ppo"]["steps"] == 2
    assert (tmp_path / "ppo" / "final_critic").exists()


def test_gsm8k_qwen05b_smoke_on_cpu(quickstart, tmp_path):
    base, data = quickstart / "base", quickstart / "data"
    ok(rlhf("recipe=gsm8k_qwen05b", f"run_dir={tmp_path}", "logging=quiet",
            f"ppo.actor.path={base}", f"ppo.data.train={data}/train_prompts.jsonl",
            f"ppo.data.eval={data}/eval_prompts.jsonl", "ppo.data.prompt_key=prompt", "ppo.data.eval_split=train",
            "ppo.data.max_prompt_len=16", "ppo.data.max_eval_prompts=8",
            "ppo.data.use_chat_template=false", "ppo.task.name=arithmetic", "placement@ppo.placement=cpu_local",
            "ppo.rollout.prompts_per_step=4", "ppo.rollout.samples_per_prompt=2", "ppo.rollout.max_new_tokens=4",
            "ppo.algorithm.update.micro_batch_size=2", "ppo.engines.forward_micro_batch_size=8",
            "ppo.trainer.total_steps=2", "ppo.rollout.engine=hf"))  # the recipe's vllm is a GPU setting
    assert json.loads((tmp_path / "summary.json").read_text())["ppo"]["steps"] == 2


class _ArithmeticJudge(BaseHTTPRequestHandler):
    """A reward service: 2·[response is the gold answer] − 0.5 per row; `/wrong_count` drops a score,
    the first request to `/flaky` gets HTTP 503."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.paths.append(self.path)
        if self.path == "/flaky" and self.server.paths.count("/flaky") == 1:
            self.send_response(503)
            self.end_headers()
            return
        scores = [2.0 * (r.strip() == str(ref)) - 0.5 for r, ref in zip(request["responses"], request["references"])]
        body = json.dumps({"scores": scores[:-1] if self.path == "/wrong_count" else scores}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def judge():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ArithmeticJudge)
    server.daemon_threads, server.paths = True, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_ppo_scores_with_a_reward_server_and_stops_on_one_that_mis_scores(quickstart, tmp_path, judge):
    """Issue 15 §3 through the real command: GRPO's scores come from an HTTP service (a 503 retried,
    not counted); a service that returns the wrong number of scores fails every row, counted and
    named, and the run stops instead of training on fallback scores."""
    url = f"http://127.0.0.1:{judge.server_address[1]}"
    for part in ("data", "base", "sft"):
        shutil.copytree(quickstart / part, tmp_path / "run" / part)
        shutil.copytree(quickstart / part, tmp_path / "bad" / part)
    args = ["recipe=quickstart_grpo", *PPO_STAGE_SMOKE, "ppo.reward_role.use_task_reward=false",
            "ppo.reward_role.server_backoff_s=0", "ppo.trainer.total_steps=2"]
    ok(rlhf(*args, f"run_dir={tmp_path / 'run'}", f"ppo.reward_role.server_url={url}/flaky"))
    steps = [r for r in records(tmp_path / "run") if r["stage"] == "ppo" and "reward/mean" in r]
    assert len(steps) == 2
    for r in steps:  # every row's score is the server's: 2·gold − 0.5, none a fallback
        assert r["reward/mean"] == pytest.approx(2 * r["gold/mean"] - 0.5)
        assert r["reward/fn_errors"] == 0 and r["reward/fn_failure_frac"] == 0
    assert judge.paths.count("/flaky") == 2 + 2 * 2 + 1  # 2 steps, 2 evaluations × (greedy, sampled), 1 retry
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["ppo"]
    assert summary["reward_fn_errors"] == 0

    bad = rlhf(*args, f"run_dir={tmp_path / 'bad'}", f"ppo.reward_role.server_url={url}/wrong_count")
    assert bad.returncode != 0
    assert "the reward server failed on 100% of 16 rows (errors 16" in bad.stderr
    assert "returned 15 scores for 16 rows" in bad.stderr


def test_a_reward_model_with_another_tokenizer_scores_the_decoded_text(quickstart, tmp_path):
    """Issue 15 §1 through the real command: a reward model whose tokenizer is a BPE with merges,
    other special tokens and ChatML (not the actor's character-level one). The default critic (the
    reward model) is refused before Ray starts, naming both tokenizers; with the critic from the actor's
    family the run scores the re-encoded text: its initial greedy evaluation equals the reward model run
    directly on the SFT model's greedy answers, encoded by the reward model's own tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf.models import load_reward_model, load_tokenizer, reward_scores
    from rlhf.models.tiny import build_tiny_bpe_tokenizer, build_tiny_reward_model

    build_tiny_bpe_tokenizer(tmp_path / "bpe")
    rm_dir = build_tiny_reward_model(tmp_path / "rm_bpe", tokenizer_dir=tmp_path / "bpe", num_layers=1,
                                     hidden_size=32, num_heads=2, max_positions=64, initializer_range=0.5)
    run_dir = tmp_path / "run"
    for part in ("data", "base", "sft", "rm"):
        shutil.copytree(quickstart / part, run_dir / part)
    args = ["recipe=quickstart", f"run_dir={run_dir}", "stages=[ppo]", f"ppo.reward.path={rm_dir}",
            "ppo_reward_norm_from_rm=false", *QUICKSTART_SMOKE]
    refused = rlhf(*args, timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert (f"ppo.critic: its tokenizer ({rm_dir}) is not the actor's ({run_dir}/sft/final): vocabulary sizes "
            "differ (21 vs 400)") in refused.stderr and "ppo.critic.path is null" in refused.stderr

    ok(rlhf(*args, f"ppo.critic.path={run_dir}/rm/final"))
    initial = next(r for r in records(run_dir) if r["stage"] == "ppo" and r["step"] == 0)
    actor, char = AutoModelForCausalLM.from_pretrained(run_dir / "sft" / "final").eval(), load_tokenizer(run_dir / "sft" / "final")
    rm, bpe = load_reward_model(rm_dir).eval(), load_tokenizer(rm_dir, padding_side="right")
    prompts = [json.loads(line)["prompt"] for line in (run_dir / "data" / "eval_prompts.jsonl").read_text().splitlines()[:8]]
    scores = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([char(prompt)["input_ids"]])
            out = actor.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6,
                                 eos_token_id=char.eos_token_id, pad_token_id=char.pad_token_id)[0, ids.shape[1]:].tolist()
            ended = char.eos_token_id in out
            response = char.decode(out[:out.index(char.eos_token_id)] if ended else out, skip_special_tokens=True)
            rm_ids = bpe(prompt)["input_ids"] + bpe(response, add_special_tokens=False)["input_ids"] + [bpe.eos_token_id] * ended
            scores.append(float(reward_scores(rm, torch.tensor([rm_ids]), torch.ones(1, len(rm_ids), dtype=torch.long))[0]))
    assert initial["eval/reward_greedy"] == pytest.approx(sum(scores) / len(scores), abs=1e-4)


def test_quickstart_dpo_trains_on_pairs_against_the_sft_reference_and_resumes(quickstart, tmp_path):
    """Issue 15 §4 through the real command: the DPO stage on the quickstart's SFT model and pairs. At
    its first update the policy is the reference, so the IPO loss is 1/(2β)² and the margins 0; the metrics
    users know are logged; the gold accuracy before/after is in the summary; dpo/final is a plain HF
    causal LM; resuming with more steps continues from the checkpoint and keeps the initial evaluation."""
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    for part in ("data", "base", "sft"):
        shutil.copytree(quickstart / part, run_dir / part)
    args = ["recipe=quickstart_dpo", f"run_dir={run_dir}", "stages=[dpo]", "logging=quiet",
            "dpo.trainer.batch_size=8", "dpo.trainer.micro_batch_size=4", "dpo.engine.warmup_steps=0",
            "dpo.engine.total_steps=3",  # the schedule of the 3-step run, so resuming it with 3 steps is exact
            "dpo.data.max_eval_rows=8", "dpo.gold_eval.max_prompts=8", "dpo.trainer.eval_every=1",
            "prepare.task_kwargs.num_train_prompts=200", "prepare.task_kwargs.num_eval_prompts=16",
            "prepare.task_kwargs.num_train_pairs=64", "prepare.task_kwargs.num_eval_pairs=16"]
    ok(rlhf(*args, "dpo.trainer.total_steps=2"))
    steps = [r for r in records(run_dir) if r["stage"] == "dpo"]
    assert [r["step"] for r in steps] == [1, 2]
    # IPO (the recipe's loss) at Δ = 0 with β = 0.1: (0 − 1/(2β))² = 25
    assert steps[0]["loss"] == pytest.approx(25.0, abs=1e-4) and steps[0]["rewards/margins"] == pytest.approx(0, abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "eval/loss",
                "eval/rewards/margins", "eval/rewards/accuracies", "grad_norm", "lr"):
        assert key in steps[1], key
    summary = json.loads((run_dir / "summary.json").read_text())["dpo"]
    assert summary["steps"] == 2 and summary["gold_eval_prompts"] == 8
    assert summary["gold_accuracy_gain"] == pytest.approx(summary["gold_accuracy"] - summary["gold_accuracy_initial"])
    assert "eval_rewards_accuracies" in summary and "expectations" in summary
    assert any(k.startswith("eval_accuracy_") for k in summary)  # per near-miss type, as the rm stage
    AutoModelForCausalLM.from_pretrained(run_dir / "dpo" / "final")

    result = ok(rlhf(*args, "dpo.trainer.total_steps=3", "resume=true"))
    assert "stage dpo: resuming" in result.stderr
    assert [r["step"] for r in records(run_dir) if r["stage"] == "dpo"] == [1, 2, 3]
    resumed = json.loads((run_dir / "summary.json").read_text())["dpo"]
    assert resumed["steps"] == 3 and resumed["gold_accuracy_initial"] == summary["gold_accuracy_initial"]


LORA_RANK = 4
LORA_ROLES = ["sft.model.options", "rm.model.options", "ppo.actor.options", "ppo.critic.options"]


def _lora_parameters(base_dir: Path, head: bool) -> int:
    """What LoRA rank LORA_RANK on every linear layer but the LM head trains: r·(in + out) per layer, plus
    the scalar head's trainable copy (hidden size weights, no bias) of a reward model or critic."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    adapted = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"]
    return sum(LORA_RANK * (m.in_features + m.out_features) for m in adapted) + (model.config.hidden_size if head else 0)


def test_quickstart_with_lora_on_every_trained_role_exports_plain_models_and_trains_only_adapters(quickstart, tmp_path):
    """Issue 15 §2 through the real command: SFT, RM, PPO's actor and critic all LoRA. Each stage's
    output is a plain HF directory (merged, loadable by transformers without peft) with its adapter
    under adapter/, which the next stage loads as it is; the summary counts only adapter weights as
    trained (r·(in+out) per linear layer); PPO changed only the adapted layers of the SFT model (merged
    in), never an embedding, norm or the LM head; and the LoRA PPO stage resumes from its checkpoint."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    run_dir = tmp_path / "run"
    for part in ("data", "base"):
        shutil.copytree(quickstart / part, run_dir / part)
    lora = [f"{role}.lora_rank={LORA_RANK}" for role in LORA_ROLES]
    smoke = [o for o in QUICKSTART_SMOKE if not o.startswith("ppo.trainer.total_steps")]
    ok(rlhf("recipe=quickstart", f"run_dir={run_dir}", "stages=[sft,rm,ppo]", "ppo.trainer.total_steps=2",
            *lora, *smoke))
    summary = json.loads((run_dir / "summary.json").read_text())
    policy, scalar = _lora_parameters(run_dir / "base", head=False), _lora_parameters(run_dir / "base", head=True)
    assert summary["sft"]["trainable_parameters"] == summary["ppo"]["actor_trainable_parameters"] == policy
    assert summary["rm"]["trainable_parameters"] == summary["ppo"]["critic_trainable_parameters"] == scalar
    assert policy < summary["sft"]["parameters"] / 5
    for stage, cls in (("sft", AutoModelForCausalLM), ("rm", AutoModelForSequenceClassification),
                       ("ppo", AutoModelForCausalLM)):
        final = run_dir / stage / "final"
        names = cls.from_pretrained(final).state_dict()  # plain transformers: no peft involved
        assert not any("lora" in n or "base_layer" in n or "modules_to_save" in n for n in names), stage
        assert (final / "adapter" / "adapter_config.json").is_file(), stage
    AutoModelForSequenceClassification.from_pretrained(run_dir / "ppo" / "final_critic")
    before, after = (load_file(run_dir / d / "final" / "model.safetensors") for d in ("sft", "ppo"))
    assert before.keys() == after.keys()
    adapted = {n for n in before if n.endswith("_proj.weight")}  # Llama's linear layers but the LM head
    assert adapted and all(torch.equal(before[n], after[n]) for n in before if n not in adapted)
    assert any(not torch.equal(before[n], after[n]) for n in adapted)

    result = ok(rlhf("recipe=quickstart", f"run_dir={run_dir}", "stages=[ppo]", "resume=true",
                     "ppo.trainer.total_steps=3", *lora, *smoke))
    assert "stage ppo: resuming" in result.stderr
    assert [r["step"] for r in records(run_dir) if r["stage"] == "ppo"] == [0, 1, 2, 3]


def test_user_task_and_reward_function_by_dotted_path_run_in_the_workers(quickstart, tmp_path):
    """A task and a reward function from a module outside the package, named by dotted path, from a
    directory that is not on sys.path: the driver imports them to check the config, the reward workers
    (other processes) import them to score; the gold metric is the user task's verifier."""
    run_dir, bad_dir = tmp_path / "run", tmp_path / "bad"
    for part in ("data", "base", "sft"):
        shutil.copytree(quickstart / part, run_dir / part)
        shutil.copytree(quickstart / part, bad_dir / part)
    common = ["recipe=quickstart_grpo", "stages=[ppo]", "logging=quiet", "ppo.trainer.total_steps=2",
              "ppo.rollout.prompts_per_step=4", "ppo.algorithm.update.micro_batch_size=4",
              "ppo.engines.forward_micro_batch_size=8", "ppo.data.max_eval_prompts=8",
              "prepare.task_kwargs.num_train_prompts=200", "prepare.task_kwargs.num_eval_prompts=16"]
    env = without_path_entry(os.environ, USER_CODE)
    user_dir = USER_CODE
    result = subprocess.run(
        [str(RLHF), *common, f"run_dir={run_dir}", "ppo.task.name=user_rewards:EvenAnswerTask",
         "ppo.reward_role.use_task_reward=false", "ppo.reward_role.reward_fn=user_rewards:short_answer_reward"],
        capture_output=True, text=True, timeout=600, cwd=user_dir, env=env)
    ok(result)
    history = [r for r in records(run_dir) if r.get("stage") == "ppo"]
    steps = [r for r in history if "reward/mean" in r]
    assert len(steps) == 2
    # the scores are the user function's (answers of <= 2 characters), the gold is the user task's (even)
    assert all(0.0 <= r["reward/mean"] <= 1.0 and 0.0 <= r["gold/mean"] <= 1.0 for r in steps)
    assert any(r["reward/mean"] != r["gold/mean"] for r in steps)
    summary = json.loads((run_dir / "summary.json").read_text())["ppo"]
    assert "gold_reward_final" in summary and summary["reward_fn_errors"] == 0

    bad = subprocess.run([str(RLHF), *common, f"run_dir={bad_dir}", "ppo.reward_role.use_task_reward=false",
                          "ppo.reward_role.reward_fn=user_rewards_missing:score"],
                         capture_output=True, text=True, timeout=600, cwd=user_dir, env=env)
    assert bad.returncode != 0
    assert "ppo.reward_role.reward_fn" in bad.stderr and "user_rewards_missing" in bad.stderr, bad.stderr[-2000:]


def test_code_sandbox_smoke_runs_programs_in_the_sandbox_through_the_real_command(tmp_path):
    """The code task end to end: prepare (problems + a code-tokenizer tiny model), SFT, GRPO whose reward is
    the unit tests run in the sandbox; every scored row has a sandbox outcome, counted per step and per run."""
    run_dir = tmp_path / "run"
    ok(rlhf("recipe=code_sandbox", f"run_dir={run_dir}", "logging=quiet",
            "prepare.task_kwargs.max_constant=4", "prepare.task_kwargs.num_train_prompts=20",
            "prepare.task_kwargs.num_eval_prompts=4", "sft.trainer.total_steps=2", "sft.trainer.batch_size=8",
            "sft.trainer.micro_batch_size=8", "sft.engine.warmup_steps=0", "sft.gold_eval.max_prompts=4",
            "ppo.trainer.total_steps=2", "ppo.rollout.prompts_per_step=4", "ppo.rollout.max_new_tokens=12",
            "ppo.algorithm.update.micro_batch_size=8", "ppo.engines.forward_micro_batch_size=16",
            "ppo.data.max_eval_prompts=4", "ppo.trainer.eval_samples_per_prompt=1"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.0 <= summary["sft"]["gold_accuracy"] <= 1.0
    ppo = summary["ppo"]
    outcomes = {k: v for k, v in ppo.items() if k.startswith("reward_outcome_")}
    assert sum(outcomes.values()) == 2 * 4 * 4  # steps x prompts x samples: every row scored by the sandbox
    assert ppo["reward_fn_errors"] == 0  # no sandbox failure
    steps = [r for r in records(run_dir) if r.get("stage") == "ppo" and "reward/mean" in r]
    assert all(sum(v for k, v in r.items() if k.startswith("reward/outcome_")) == 16 for r in steps)
    assert (run_dir / "data" / "eval_prompts.jsonl").exists() and (run_dir / "ppo" / "final").exists()


def test_code_as_a_multi_turn_environment_through_the_real_command(tmp_path):
    """The third built-in environment (issue 13): the code task played as episodes of the `code`
    environment — each attempt run in the sandbox, a failed one answered with the tests passed and the
    header, one retry — through the real command, with the environment's reward and gold."""
    run_dir = tmp_path / "run"
    ok(rlhf("recipe=code_sandbox", f"run_dir={run_dir}", "logging=quiet",
            "prepare.task_kwargs.max_constant=4", "prepare.task_kwargs.num_train_prompts=20",
            "prepare.task_kwargs.num_eval_prompts=4", "sft.trainer.total_steps=2", "sft.trainer.batch_size=8",
            "sft.trainer.micro_batch_size=8", "sft.engine.warmup_steps=0", "sft.gold_eval.max_prompts=4",
            "ppo.trainer.total_steps=2", "ppo.rollout.prompts_per_step=4", "ppo.rollout.max_new_tokens=12",
            "ppo.algorithm.update.micro_batch_size=8", "ppo.engines.forward_micro_batch_size=16",
            "ppo.data.max_eval_prompts=4", "ppo.trainer.eval_samples_per_prompt=1",
            "ppo.reward_role.use_task_reward=false", "ppo.env.name=code", "ppo.env.max_turns=2",
            "ppo.env.max_tokens=40", "+ppo.env.kwargs.max_attempts=2"))
    steps = episode_steps(run_dir, episodes_per_step=16)  # 4 prompts x 4 episodes
    assert all(1.0 <= r["episode/turns_mean"] <= 2.0 for r in steps)
    assert all(0.0 <= r["episode/env_pass_rate"] <= 1.0 and r["gold/mean"] == r["episode/env_gold"] for r in steps)
    summary = json.loads((run_dir / "summary.json").read_text())["ppo"]
    assert "gold_reward_final" in summary and "reward_outcome_passed" not in summary  # no reward role ran


@pytest.mark.parametrize("env_name", ["user_envs:RetryArithmetic", "user_envs:RetryArithmeticGroup"])
def test_a_user_environment_by_dotted_path_plays_multi_turn_episodes_through_the_real_command(quickstart, tmp_path,
                                                                                              env_name):
    """GRPO on two-turn episodes of an environment defined outside the package (a wrong answer gets a
    second try): no reward role, the environment's rewards and gold, episode metrics, saved rollouts whose
    masks leave the environment's tokens out. The same environment made by an EnvGroup: one prompt's 4
    episodes built together (each reports its group's size)."""
    run_dir = tmp_path / "run"
    for part in ("data", "base", "sft"):
        shutil.copytree(quickstart / part, run_dir / part)
    env = without_path_entry(os.environ, USER_CODE)
    result = subprocess.run(
        [str(RLHF), "recipe=quickstart_grpo", f"run_dir={run_dir}", "stages=[ppo]", "logging=quiet",
         "ppo.trainer.total_steps=2", "ppo.rollout.prompts_per_step=4", "ppo.algorithm.update.micro_batch_size=4",
         "ppo.engines.forward_micro_batch_size=8", "ppo.data.max_eval_prompts=8",
         "prepare.task_kwargs.num_train_prompts=200", "prepare.task_kwargs.num_eval_prompts=16",
         "ppo.reward_role.use_task_reward=false", f"ppo.env.name={env_name}",
         "ppo.env.max_turns=2", "ppo.env.max_tokens=12", "+ppo.env.kwargs.first_try_bonus=0.5",
         "ppo.trainer.save_rollouts=true"],
        capture_output=True, text=True, timeout=600, cwd=USER_CODE, env=env)
    ok(result)
    steps = episode_steps(run_dir, episodes_per_step=16)  # 4 prompts x 4 episodes
    assert all(1.0 <= r["episode/turns_mean"] <= 2.0 for r in steps)
    if env_name.endswith("Group"):
        assert all(r["episode/env_group_size"] == 4.0 for r in steps)
    evals = [r for r in records(run_dir) if r.get("stage") == "ppo" and "eval/gold_sampled" in r]
    assert evals and all("eval/sampled/end_done" in r for r in evals)
    import datasets

    rows = datasets.load_dataset("parquet", data_files=str(run_dir / "ppo" / "rollouts" / "*.parquet"), split="train")
    two_turn = [(m, s) for m, s in zip(rows["response_mask"], rows["score"]) if 0 in m]
    for mask, score in two_turn:  # policy turn, "=" from the environment (mask 0), policy turn
        assert mask.count(0) == 1 and score in (0.0, 1.0)
    firsts = [s for m, s in zip(rows["response_mask"], rows["score"]) if 0 not in m]
    assert all(s in (0.0, 1.5) for s in firsts)  # right on the first try: 1 + the bonus from env kwargs
    summary = json.loads((run_dir / "summary.json").read_text())["ppo"]
    assert "gold_reward_final" in summary


def test_tool_use_smoke_plays_calculator_episodes_through_the_real_command(tmp_path):
    """prepare → SFT on transcripts → GRPO on calculator episodes, a few steps each: the episodes run,
    their end reasons and tool calls are counted, the summary has the environment's gold."""
    run_dir = tmp_path / "run"
    # observations as chat turns (the tiny template's: the text itself after the policy's EOS)
    ok(rlhf("recipe=tool_use", f"run_dir={run_dir}", *EPISODE_SMOKE, "ppo.env.observations=chat"))
    steps = episode_steps(run_dir, episodes_per_step=16)
    assert all(0.0 <= r["episode/env_tool_calls"] <= 3.0 for r in steps)  # the calculator's own metric
    summary = json.loads((run_dir / "summary.json").read_text())["ppo"]
    assert "gold_reward_final" in summary and "critic_parameters" not in summary


def test_guess_number_smoke_plays_the_game_through_the_real_command(tmp_path):
    """The built-in guess_number environment end to end: prepare (secrets, played games, a code-tokenizer
    model), SFT, GRPO on games; every episode ends with a reason, the turns are counted. The games are
    saved, and an offline stage (added to the recipe's stages) trains the SFT model on step 1's: its first
    ratio is 1, so the stored masks with their environment-token holes line up with the training forward."""
    import datasets

    run_dir = tmp_path / "run"
    ok(rlhf("recipe=guess_number", f"run_dir={run_dir}", *EPISODE_SMOKE, "ppo.env.max_turns=3",
            "ppo.trainer.save_rollouts=true", "recipe_stages=[prepare,sft,ppo,offline]",
            "+engine@offline.engine=cpu_fp32", "+placement@offline.placement=cpu_local",
            "offline.actor.path=${run_dir}/sft/final", "offline.data.train=${run_dir}/ppo/rollouts/step_*1.parquet",
            "offline.trainer.total_steps=1", "offline.trainer.batch_size=16", "offline.trainer.micro_batch_size=8"))
    steps = episode_steps(run_dir, episodes_per_step=16)
    assert all(1.0 <= r["episode/turns_mean"] <= 3.0 for r in steps)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "gold_reward_final" in summary["ppo"]
    rows = datasets.load_dataset("parquet", data_files=str(run_dir / "ppo" / "rollouts" / "step_000001.parquet"),
                                 split="train")
    holes = sum(any(m == 0 for m in mask[:max(i for i, v in enumerate(mask) if v) + 1])
                for mask in rows["response_mask"])
    assert holes > 0  # games of several turns: the environment's answers inside the response block
    assert all(len(t) == len(m) for t, m in zip(rows["turn_rewards"], rows["response_mask"]))
    first = next(r for r in records(run_dir) if r["stage"] == "offline")
    assert first["actor/ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert first["actor/ratio_min"] == pytest.approx(1.0, abs=1e-4)
    assert summary["offline"]["data_rows"] == 16


OFFLINE_SMOKE = ["recipe=quickstart_offline", "logging=quiet",
                 "prepare.task_kwargs.num_train_prompts=200", "prepare.task_kwargs.num_eval_prompts=16",
                 "prepare.task_kwargs.num_train_pairs=64", "prepare.task_kwargs.num_eval_pairs=16",
                 "ppo.trainer.total_steps=2", "ppo.rollout.prompts_per_step=4", "ppo.algorithm.update.micro_batch_size=4",
                 "ppo.engines.forward_micro_batch_size=8", "ppo.data.max_eval_prompts=8",
                 "offline.trainer.batch_size=8", "offline.trainer.micro_batch_size=4", "offline.trainer.eval_every=2",
                 "offline.gold_eval.max_prompts=8", "offline.forward_micro_batch_size=4",
                 "offline.algorithm.policy_loss.kl_loss_coef=0.1"]  # the reference role too


def test_quickstart_offline_trains_on_saved_rollouts_and_resumes_exactly(quickstart, tmp_path):
    """Issue 14 (offline) through the real command: PPO saves its rollouts, the offline stage trains the SFT
    model on them with the DRO loss and the reference's KL. On step 1's shard alone the first update's
    importance ratio is exactly 1 (the stored behaviour log-probs are the SFT weights' own, token for token);
    the summary holds the data's statistics and the gold accuracy before/after; 2 steps resumed to 3 match
    an uninterrupted 3-step run bit for bit."""
    from transformers import AutoModelForCausalLM

    runs = {name: tmp_path / name for name in ("straight", "resumed")}
    for run_dir in runs.values():
        for part in ("data", "base", "sft"):
            shutil.copytree(quickstart / part, run_dir / part)
    first_shard = "offline.data.train=${run_dir}/ppo/rollouts/step_*1.parquet"  # a glob matching one shard
    straight = runs["straight"]
    ok(rlhf(*OFFLINE_SMOKE, f"run_dir={straight}", "stages=[ppo,offline]", first_shard,
            "offline.trainer.total_steps=3"))
    steps = [r for r in records(straight) if r["stage"] == "offline"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert steps[0]["actor/ratio_max"] == pytest.approx(1.0, abs=1e-5)
    assert steps[0]["actor/ratio_min"] == pytest.approx(1.0, abs=1e-5)
    assert steps[0]["actor/kl_loss"] == pytest.approx(0.0, abs=1e-6)  # the reference is the SFT model too
    assert "eval/gold_accuracy" in steps[1] and "eval/gold_accuracy_sampled" in steps[1]
    summary = json.loads((straight / "summary.json").read_text())["offline"]
    assert summary["data_rows"] == 4 * 4 and summary["data_groups"] == 4 and summary["data_files"] == 1
    assert summary["gold_accuracy_gain"] == pytest.approx(summary["gold_accuracy"] - summary["gold_accuracy_initial"])
    assert "gold_accuracy_sampled_gain" in summary and 0 <= summary["data_gold_mean"] <= 1
    AutoModelForCausalLM.from_pretrained(straight / "offline" / "final")

    resumed = runs["resumed"]
    shutil.copytree(straight / "ppo", resumed / "ppo")  # the same stored rollouts
    ok(rlhf(*OFFLINE_SMOKE, f"run_dir={resumed}", "stages=[offline]", first_shard, "offline.trainer.total_steps=2"))
    result = ok(rlhf(*OFFLINE_SMOKE, f"run_dir={resumed}", "stages=[offline]", first_shard,
                     "offline.trainer.total_steps=3", "resume=true", "resume_allow_changes=[offline.trainer.total_steps]"))
    assert "stage offline: resuming" in result.stderr
    again = [r for r in records(resumed) if r["stage"] == "offline"]
    assert [r["step"] for r in again] == [1, 2, 3]
    timeless = lambda r: {k: v for k, v in r.items() if not k.startswith(("time", "perf"))}  # noqa: E731
    assert timeless(again[2]) == timeless(steps[2])

    # a NaN reward in a shard: refused with the file, the row and the field, before any worker starts
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad" / "step_000001.parquet"
    bad.parent.mkdir()
    table = pq.read_table(straight / "ppo" / "rollouts" / "step_000001.parquet")
    scores = table.column("score").to_pylist()
    scores[5] = float("nan")
    pq.write_table(table.set_column(table.column_names.index("score"), "score", pa.array(scores, pa.float32())), bad)
    result = rlhf(*OFFLINE_SMOKE, f"run_dir={tmp_path / 'refused'}", "stages=[offline]", f"offline.data.train={bad.parent}",
                  f"offline.actor.path={straight / 'sft' / 'final'}",
                  f"offline.gold_eval.prompts={straight / 'data' / 'eval_prompts.jsonl'}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"{bad}, row 5, field 'score': expected the row's reward as a finite number, got nan" in result.stderr


def test_offline_data_that_does_not_exist_is_refused_before_anything_starts(quickstart, tmp_path):
    result = rlhf("recipe=quickstart_offline", f"run_dir={tmp_path / 'run'}", "stages=[offline]", "logging=quiet",
                  f"offline.actor.path={quickstart / 'sft' / 'final'}", f"offline.data.train={tmp_path / 'none'}/*.parquet",
                  f"offline.gold_eval.prompts={quickstart / 'data' / 'eval_prompts.jsonl'}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "offline.data.train=" in result.stderr and "does not exist" in result.stderr


def test_offline_on_prompt_response_reward_rows_takes_behaviour_logprobs_from_the_reference(quickstart, tmp_path):
    """Issue 14: any dataset with prompt, response and reward columns (here the quickstart's SFT demos,
    rewarded 1 where the demo is right), tokenized by the actor's tokenizer; its behaviour log-probs are
    the reference's, which is the SFT model the actor starts from: the first ratio is 1."""
    rows = [json.loads(line) for line in (quickstart / "data" / "sft.jsonl").read_text().splitlines()[:32]]
    data = tmp_path / "scored.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["response"],
                                        "reward": float(r["response"] == r["answer"])}) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    ok(rlhf(*OFFLINE_SMOKE, f"run_dir={run_dir}", "stages=[offline]", f"offline.data.train={data}",
            "offline.data.behaviour=reference", "offline.data.reward_key=reward", "offline.algorithm.advantage=none",
            f"offline.actor.path={quickstart / 'sft' / 'final'}", "offline.trainer.total_steps=2",
            f"offline.gold_eval.prompts={quickstart / 'data' / 'eval_prompts.jsonl'}"))
    steps = [r for r in records(run_dir) if r["stage"] == "offline"]
    assert steps[0]["actor/ratio_max"] == pytest.approx(1.0, abs=1e-5)
    assert steps[0]["actor/ratio_min"] == pytest.approx(1.0, abs=1e-5)
    summary = json.loads((run_dir / "summary.json").read_text())["offline"]
    assert summary["data_rows"] == 32 and summary["data_groups"] == len({r["prompt"] for r in rows})
    assert summary["data_reward_mean"] == pytest.approx(sum(r["response"] == r["answer"] for r in rows) / 32)
