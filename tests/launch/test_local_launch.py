"""launch/local.sh with a real Ray head, and launch/submit.py against that head's job server.

One head start (~10 s) serves the whole round trip: local.sh starts a loopback-only head with token
authentication, runs its entrypoint — here a driver script standing in for `rlhf` — which checks that
every Ray listener is on loopback and submits a job through submit.py (a stub recipe receiving the
quoted overrides and an --env variable); then local.sh stops the head it started, and only that head.
The reuse paths (RAY_ADDRESS given, or a head already on the port) start nothing: RAY_BIN=false proves it.
"""
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "launch" / "local.sh"
BIN = Path(sys.executable).parent  # the venv's ray / python

FAKE_RLHF = """\
#!/usr/bin/env bash
for a in "$@"; do echo "ARG:$a"; done
echo "ENV:FOO=${FOO:-}"
exit "${FAKE_RC:-0}"
"""

DRIVER = """\
import json, os, subprocess, sys
import psutil

run_dir = os.environ["RLHF_RAY_TEMP_DIR"]
ray_procs = [p for p in psutil.process_iter(["cmdline"]) if run_dir in " ".join(p.info["cmdline"] or [])]
listeners = sorted({c.laddr.ip for p in ray_procs for c in p.net_connections("inet") if c.status == "LISTEN"})
submit = [sys.executable, os.environ["SUBMIT_PY"], "--address", "http://127.0.0.1:" + os.environ["DASHBOARD_PORT"],
          "--entrypoint-command", os.environ["FAKE_RLHF"], "--env", "FOO=bar baz"]
ok = subprocess.run(submit + sys.argv[1:], capture_output=True, text=True, timeout=800)  # a slow CPU: room
json.dump(dict(args=sys.argv[1:], address=os.environ["RAY_ADDRESS"], auth=os.environ.get("RAY_AUTH_MODE"),
               n_ray_procs=len(ray_procs), listeners=listeners, ok=[ok.returncode, ok.stdout, ok.stderr],
               run_dir=run_dir),
          open(os.environ["RESULT_FILE"], "w"))
"""


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 (a dual-stack socket)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_in_own_session(argv, env, timeout) -> subprocess.CompletedProcess:
    """Run `argv` as the leader of a new process group; on timeout SIGTERM the whole group (the
    script, the Ray head it started and the driver), so a hung run leaves nothing behind."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=180)  # the group's teardown, after the test already failed
        raise AssertionError(f"{argv} timed out after {timeout}s:\n{err}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    env.update(extra)
    return env


def test_local_head_runs_the_recipe_and_submit_round_trip(tmp_path):
    fake = tmp_path / "fake-rlhf"
    fake.write_text(FAKE_RLHF)
    fake.chmod(0o755)
    result_file = tmp_path / "result.json"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    port, dashboard = free_port(), free_port()
    # Every fixed Ray port on free ones: other Ray instances may run on this machine.
    env = clean_env(RAY_PORT=str(port), RAY_DASHBOARD_PORT=str(dashboard), DASHBOARD_PORT=str(dashboard),
                    RAY_AGENT_PORT=str(free_port()), RAY_CLIENT_PORT=str(free_port()),
                    RAY_NUM_CPUS="2", RAY_NUM_GPUS="0", RLHF_ENTRYPOINT=f"{sys.executable} {driver}",
                    SUBMIT_PY=str(ROOT / "launch" / "submit.py"), FAKE_RLHF=str(fake), RESULT_FILE=str(result_file))
    args = ["recipe=arithmetic", "stages=[rm,ppo]", "trainer.run_name=my run"]
    proc = run_in_own_session(["bash", str(LOCAL), *args], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(result_file.read_text())

    assert result["args"] == args  # local.sh passes the recipe arguments through unchanged
    assert result["address"] == f"127.0.0.1:{port}" and result["auth"] == "token"
    assert result["n_ray_procs"] >= 2 and result["listeners"]
    assert all(is_loopback(ip) for ip in result["listeners"]), result["listeners"]

    code, out, err = result["ok"]
    assert code == 0, err
    assert "ARG:recipe=arithmetic\nARG:stages=[rm,ppo]\nARG:trainer.run_name=my run\n" in out
    assert "ENV:FOO=bar baz" in out and "SUCCEEDED" in err  # FAILED/STOPPED codes: test_submit_job.py

    assert "stopping the Ray head started here" in proc.stderr
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"])
                 if result["run_dir"] in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []  # the head and all its processes are gone
    assert not Path(result["run_dir"]).exists()


def _print_address(tmp_path) -> str:
    script = tmp_path / "print-address"
    script.write_text('#!/usr/bin/env bash\necho "ADDRESS=$RAY_ADDRESS ARGS=$*"\n')
    script.chmod(0o755)
    return str(script)


def test_reuses_a_given_cluster_and_never_starts_or_stops_one(tmp_path):
    env = clean_env(RAY_ADDRESS="127.0.0.1:1", RAY_BIN="false", RLHF_ENTRYPOINT=_print_address(tmp_path))
    proc = subprocess.run(["bash", str(LOCAL), "recipe=x"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ADDRESS=127.0.0.1:1 ARGS=recipe=x" in proc.stdout and "stopping" not in proc.stderr


def test_token_auth_by_default_with_a_per_run_token(tmp_path):
    """No token configured (HOME without ~/.ray/auth_token): one is generated for the run, in memory."""
    show = tmp_path / "show-auth"
    show.write_text('#!/usr/bin/env bash\necho "MODE=$RAY_AUTH_MODE TOKEN=${RAY_AUTH_TOKEN:-}"\n')
    show.chmod(0o755)
    env = clean_env(HOME=str(tmp_path), RAY_ADDRESS="127.0.0.1:1", RAY_BIN="false", RLHF_ENTRYPOINT=str(show))
    out = subprocess.run(["bash", str(LOCAL), "recipe=x"], env=env, capture_output=True, text=True).stdout
    mode, token = (field.split("=", 1)[1] for field in out.split())
    assert mode == "token" and len(token) == 64 and int(token, 16) >= 0
    assert not (tmp_path / ".ray").exists()  # written nowhere
    out = subprocess.run(["bash", str(LOCAL), "recipe=x"], env={**env, "RAY_AUTH_MODE": "disabled"},
                         capture_output=True, text=True).stdout
    assert out.split() == ["MODE=disabled", "TOKEN="]


def test_reuses_a_head_already_listening_on_the_port(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        env = clean_env(RAY_PORT=str(port), RAY_BIN="false", RLHF_ENTRYPOINT=_print_address(tmp_path))
        proc = subprocess.run(["bash", str(LOCAL), "recipe=x"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"ADDRESS=127.0.0.1:{port}" in proc.stdout


def test_entrypoint_status_is_returned_and_usage_without_arguments(tmp_path):
    env = clean_env(RAY_ADDRESS="127.0.0.1:1", RLHF_ENTRYPOINT="false")
    assert subprocess.run(["bash", str(LOCAL), "recipe=x"], env=env, capture_output=True).returncode == 1
    usage = subprocess.run(["bash", str(LOCAL)], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "recipe=" in usage.stdout


def test_quickstart_runs_through_ray_job_submit(tmp_path):
    """The real thing: local.sh starts a loopback head, the driver submits `rlhf recipe=quickstart` (a
    few steps per stage) with submit.py, the job runs all four stages on that cluster and succeeds."""
    sys.path.insert(0, str(ROOT / "tests" / "recipes"))
    from test_recipes_cpu import QUICKSTART_SMOKE

    result_file, driver = tmp_path / "result.json", tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run_dir = tmp_path / "run"
    port, dashboard = free_port(), free_port()
    env = clean_env(RAY_PORT=str(port), RAY_DASHBOARD_PORT=str(dashboard), DASHBOARD_PORT=str(dashboard),
                    RAY_AGENT_PORT=str(free_port()), RAY_CLIENT_PORT=str(free_port()),
                    RAY_NUM_CPUS="2", RAY_NUM_GPUS="0", RLHF_ENTRYPOINT=f"{sys.executable} {driver}",
                    SUBMIT_PY=str(ROOT / "launch" / "submit.py"), FAKE_RLHF=str(BIN / "rlhf"),
                    RESULT_FILE=str(result_file))
    args = ["recipe=quickstart", f"run_dir={run_dir}", *QUICKSTART_SMOKE]
    proc = run_in_own_session(["bash", str(LOCAL), *args], env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    code, out, err = json.loads(result_file.read_text())["ok"]
    assert code == 0 and "SUCCEEDED" in err, out[-3000:] + err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) == {"sft", "rm", "ppo"} and summary["ppo"]["steps"] == 2
