"""launch/submit.py without a cluster: the pure submission builder (entrypoint quoting, runtime env) and
the exit-code / retry / stop logic against a fake JobSubmissionClient. The real round trip (a Ray head
with its job server) is in test_local_launch.py."""
import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_submit():
    spec = importlib.util.spec_from_file_location("rlhf_launch_submit", ROOT / "launch" / "submit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


submit = _load_submit()

TRICKY = ["recipe=arithmetic", "stages=[rm,ppo]", "trainer.run_name=my run", "note=it's", 'q="x y"', "home=$HOME",
          "glob=*", "+extra.key=1", "~trainer.wandb"]


def build(*argv: str):
    return submit.build_submission(submit.parser().parse_args(list(argv)))


def test_entrypoint_round_trips_through_the_shell(tmp_path):
    """Ray runs the entrypoint with a shell: every override must reach rlhf as one unchanged argument."""
    entrypoint = build(*TRICKY).entrypoint
    assert shlex.split(entrypoint) == ["rlhf", *TRICKY]
    assert "'stages=[rm,ppo]'" in entrypoint  # quoted: [..] is a glob pattern to the shell
    fake = tmp_path / "rlhf"
    fake.write_text('#!/usr/bin/env bash\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    for name in ("stages=r", "glob=oops"):  # files the unquoted patterns stages=[rm,ppo] and glob=* would match
        (tmp_path / name).write_text("")
    out = subprocess.run(["bash", "-c", entrypoint], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert out.stdout.splitlines() == TRICKY


def test_runtime_env_holds_only_what_was_asked(monkeypatch):
    assert build("recipe=x").runtime_env == {}
    monkeypatch.setenv("WANDB_API_KEY", "secret")
    sub = build("--working-dir", ".", "--pip", "peft==0.11", "--env", "NCCL_SOCKET_IFNAME=eth0",
                "--env", "NCCL_IB_HCA=mlx5_0,mlx5_1", "--env", "EXTRA=a=b c", "--env", "WANDB_API_KEY", "recipe=x")
    assert sub.runtime_env == {
        "working_dir": ".", "excludes": submit.DEFAULT_EXCLUDES, "pip": ["peft==0.11"],
        "env_vars": {"NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_HCA": "mlx5_0,mlx5_1", "EXTRA": "a=b c",
                     "WANDB_API_KEY": "secret"}}
    assert build("--working-dir", ".", "--exclude", "data", "recipe=x").runtime_env["excludes"] == ["data"]


def test_submission_id_and_metadata_name_the_recipe():
    sub = build("recipe=my recipe/v2", "a=1")
    assert sub.submission_id.startswith("rlhf-my-recipe-v2-") and sub.metadata["recipe"] == "my recipe/v2"
    assert build("--job-id", "run-7", "recipe=x").submission_id == "run-7"
    assert build("--entrypoint-command", "python -m rlhf.cli", "recipe=x").entrypoint == "python -m rlhf.cli recipe=x"


@pytest.mark.parametrize("argv, message", [
    (["a=1"], "recipe=NAME"),
    (["recipe=a", "recipe=b"], "recipe=NAME"),
    (["--env", "1BAD=x", "recipe=a"], "KEY=VALUE"),
    (["--env", "SURELY_NOT_SET_ANYWHERE_42", "recipe=a"], "not set"),
])
def test_bad_arguments_are_refused_before_any_connection(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(submit, "follow", lambda *a: pytest.fail("must not contact a cluster"))
    assert submit.main(["--address", "http://127.0.0.1:1", *argv]) == 2
    assert message in capsys.readouterr().err


class FakeClient:
    """The JobSubmissionClient calls submit.py makes, with scripted answers."""

    def __init__(self, address, final="SUCCEEDED", busy_agents=0):
        self.address, self.final, self.busy_agents = address, final, busy_agents
        self.submitted, self.stopped, self.polls = [], [], 0

    def submit_job(self, **kwargs):
        if self.busy_agents:
            self.busy_agents -= 1
            raise RuntimeError("Request failed with status code 500: No available agent to submit job")
        self.submitted.append(kwargs)
        return kwargs["submission_id"]

    async def tail_job_logs(self, job_id):
        yield "step 1\n"
        yield "done\n"

    def get_job_status(self, job_id):
        self.polls += 1
        return "STOPPED" if self.stopped else ("RUNNING" if self.polls < 2 else self.final)

    def stop_job(self, job_id):
        self.stopped.append(job_id)
        return True


@pytest.fixture
def fake_client(monkeypatch):
    import ray.job_submission

    made = []

    def factory(final="SUCCEEDED", busy_agents=0):
        def make(address):
            made.append(FakeClient(address, final, busy_agents))
            return made[-1]
        monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", make)
        monkeypatch.setattr(submit.time, "sleep", lambda s: None)
        return made
    return factory


@pytest.mark.parametrize("final, code", [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 3)])
def test_exit_code_reflects_the_job_status(fake_client, final, code, capsys):
    made = fake_client(final=final, busy_agents=2)  # the job agent is still starting: retried
    assert submit.main(["--address", "http://127.0.0.1:8265", "--env", "NCCL_DEBUG=INFO", "recipe=x",
                        "stages=[rm,ppo]"]) == code
    client = made[0]
    assert client.address == "http://127.0.0.1:8265"
    (call,) = client.submitted
    assert call["entrypoint"] == "rlhf recipe=x 'stages=[rm,ppo]'"
    assert call["runtime_env"] == {"env_vars": {"NCCL_DEBUG": "INFO"}}
    out = capsys.readouterr()
    assert "step 1\ndone\n" in out.out and final in out.err


def test_stop_and_no_wait(fake_client, capsys):
    made = fake_client()
    assert submit.main(["--address", "http://h:8265", "--stop", "rlhf-x-1"]) == 0
    assert made[0].stopped == ["rlhf-x-1"] and "STOPPED" in capsys.readouterr().out
    assert submit.main(["--address", "http://h:8265", "--no-wait", "recipe=x"]) == 0
    assert made[1].polls == 0 and len(made[1].submitted) == 1
