"""launch/slurm/rlhf.sbatch end to end on one machine, with SLURM and Ray replaced by shims on PATH.

- `scontrol show hostnames` prints fake hostnames; `srun -w HOST cmd...` runs cmd here (exec, so
  signalling the background srun signals the command, as srun forwards signals to its tasks);
- `ray` records every call in a log: `start --head/--address ... --block` registers the node's
  `--num-gpus` (workers after a short delay, so the script really has to wait) and blocks until
  SIGTERM, logging the stop; `status` prints the `ray status` resource block for what registered.
The recipe command is a stub (RLHF_ENTRYPOINT). Asserted: head start → worker starts → GPUs
registered → entrypoint (with the recipe arguments and RAY_ADDRESS) → workers and head stopped, also
when the recipe fails or the GPUs never show up. No network traffic at all: the shims talk to nobody.
"""
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "launch" / "slurm" / "rlhf.sbatch"

SCONTROL = """\
#!/usr/bin/env bash
# scontrol show hostnames NODELIST → one fake host per line
[[ "$1" == "requeue" ]] && { echo "scontrol requeue $2" >> "$FAKE_RAY_LOG"; exit 0; }
[[ "$1 $2" == "show hostnames" ]] || { echo "fake scontrol: unsupported: $*" >&2; exit 1; }
for h in ${FAKE_HOSTS}; do echo "$h"; done
"""

SRUN = """\
#!/usr/bin/env bash
# srun [options] cmd... → run cmd on this machine as if on the -w host
host=local
while [[ $# -gt 0 && "$1" == -* ]]; do
    case "$1" in
        -w|--nodelist) host=$2; shift 2 ;;
        --nodelist=*) host=${1#*=}; shift ;;
        -N|-n|--nodes|--ntasks) shift 2 ;;
        *) shift ;;
    esac
done
echo "srun host=$host $1 ${2:-}" >> "$FAKE_RAY_LOG"
export SLURMD_NODENAME=$host
exec "$@"
"""

RAY = """\
#!/usr/bin/env bash
# A fake `ray`: records calls in $FAKE_RAY_LOG, keeps registered GPUs in $FAKE_RAY_STATE.
cmd=$1; shift
gpus=0; head=0
for a in "$@"; do
    case "$a" in --num-gpus=*) gpus=${a#*=} ;; --head) head=1 ;; esac
done
case "$cmd" in
  start)
    role=worker; [[ $head == 1 ]] && role=head
    echo "start $role host=$SLURMD_NODENAME gpus=$gpus args=$*" >> "$FAKE_RAY_LOG"
    trap 'echo "stop $role host=$SLURMD_NODENAME" >> "$FAKE_RAY_LOG"; exit 0' TERM
    if [[ $role == worker ]]; then sleep "${FAKE_WORKER_DELAY:-0.5}"; gpus=${FAKE_WORKER_GPUS:-$gpus}; fi
    echo "$gpus" >> "$FAKE_RAY_STATE"
    while true; do sleep 0.1 & wait $!; done ;;
  status)
    echo "status $*" >> "$FAKE_RAY_LOG"
    [[ -s "$FAKE_RAY_STATE" ]] || { echo "could not connect" >&2; exit 1; }
    total=$(awk '{ s += $1 } END { print s }' "$FAKE_RAY_STATE")
    printf 'Resources\\n---------\\nUsage:\\n 0.0/64.0 CPU\\n 0.0/%s.0 GPU\\n 0B/1.00GiB memory\\n' "$total" ;;
  *) echo "fake ray: unsupported command $cmd" >&2; exit 1 ;;
esac
"""

ENTRYPOINT = """\
#!/usr/bin/env bash
echo "entrypoint RAY_ADDRESS=$RAY_ADDRESS token=${RAY_AUTH_TOKEN:+set} args=$*" >> "$FAKE_RAY_LOG"
for a in "$@"; do echo "ARG:$a" >> "$FAKE_RAY_LOG"; done
if [[ -n "${FAKE_RECIPE_TRAINS:-}" ]]; then  # like rlhf: SIGTERM → finish the step, checkpoint, exit 5
    trap 'echo "entrypoint got SIGTERM" >> "$FAKE_RAY_LOG"; sleep 0.3; exit 5' TERM
    echo "training" >> "$FAKE_RAY_LOG"
    while true; do sleep 0.1 & wait $!; done
fi
exit "${FAKE_RECIPE_RC:-0}"
"""


@pytest.fixture
def shims(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", SCONTROL), ("srun", SRUN), ("ray", RAY), ("fake-rlhf", ENTRYPOINT)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "RAY_"))}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_RAY_LOG=str(tmp_path / "calls.log"),
               FAKE_RAY_STATE=str(tmp_path / "gpus.state"), FAKE_HOSTS="gpu-a01 gpu-a02 gpu-a03",
               SLURM_JOB_NODELIST="gpu-a[01-03]", SLURM_JOB_ID="4242", GPUS_PER_NODE="8",
               RAY_HEAD_IP="127.0.0.1", RAY_POLL_INTERVAL="0.2", RAY_WAIT_TIMEOUT="20",
               RLHF_ENTRYPOINT=str(bin_dir / "fake-rlhf"))
    return env, tmp_path / "calls.log"


def run_sbatch(env, *args, timeout=300):  # real work: room on a busy CI
    return subprocess.run(["bash", str(SBATCH), *args], env=env, capture_output=True, text=True, timeout=timeout)


def events(log: Path) -> list[str]:
    """The calls in order, without the repeated status polls."""
    return [line for line in log.read_text().splitlines() if not line.startswith("status")]


def test_scripts_have_valid_bash_syntax():
    for script in (SBATCH, ROOT / "launch" / "local.sh"):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_head_then_workers_then_wait_then_recipe_then_teardown(shims):
    env, log = shims
    result = run_sbatch(env, "recipe=arithmetic", "stages=[rm,ppo]", "trainer.run_name=my run")
    assert result.returncode == 0, result.stderr
    calls = events(log)
    starts = [c for c in calls if c.startswith("start")]
    assert starts[0].startswith("start head host=gpu-a01 gpus=8")
    assert "--node-ip-address=127.0.0.1" in starts[0] and "--port=6379" in starts[0] and "--block" in starts[0]
    assert sorted(s.split()[2] for s in starts[1:]) == ["host=gpu-a02", "host=gpu-a03"]
    assert all(s.startswith("start worker") and "--address=127.0.0.1:6379" in s for s in starts[1:])
    entry = next(i for i, c in enumerate(calls) if c.startswith("entrypoint"))
    assert all(calls.index(s) < entry for s in starts)
    assert calls[entry].startswith("entrypoint RAY_ADDRESS=127.0.0.1:6379 token=set")
    assert calls[entry + 1: entry + 4] == ["ARG:recipe=arithmetic", "ARG:stages=[rm,ppo]", "ARG:trainer.run_name=my run"]
    stops = calls[entry + 4:]
    assert sorted(stops[:2]) == ["stop worker host=gpu-a02", "stop worker host=gpu-a03"]
    assert stops[2:] == ["stop head host=gpu-a01"]  # the head goes last
    # The wait really waited: some poll saw fewer than the 24 GPUs before the recipe ran.
    polls = [line for line in log.read_text().splitlines() if line.startswith("status")]
    assert len(polls) >= 2
    assert "all 24 GPUs registered" in result.stderr


def test_failing_recipe_still_tears_down_and_returns_its_status(shims):
    env, log = shims
    result = run_sbatch({**env, "FAKE_RECIPE_RC": "3"}, "recipe=arithmetic")
    assert result.returncode == 3
    calls = events(log)
    assert calls[-1] == "stop head host=gpu-a01" and sum(c.startswith("stop") for c in calls) == 3


def test_missing_gpus_time_out_without_running_the_recipe(shims):
    env, log = shims
    result = run_sbatch({**env, "FAKE_WORKER_GPUS": "0", "RAY_WAIT_TIMEOUT": "1"}, "recipe=arithmetic")
    assert result.returncode != 0
    assert "8 of 24 GPUs registered" in result.stderr
    calls = events(log)
    assert not any(c.startswith("entrypoint") for c in calls)
    assert sum(c.startswith("stop") for c in calls) == 3  # every started node is torn down


def test_gpu_total_parses_ray_status_output():
    status = textwrap.dedent("""\
        ======== Autoscaler status: 2026-01-01 00:00:00 ========
        Node status
        ---------------------------------------------------------------
        Active:
         1 node_abc
        Resources
        ---------------------------------------------------------------
        Usage:
         1.0/64.0 CPU
         2.0/16.0 GPU
         0.0/2.0 accelerator_type:H100
         0B/1.00TiB memory
        """)
    script = f'RLHF_SOURCE_ONLY=1 source "{SBATCH}"; gpu_total'
    out = subprocess.run(["bash", "-c", script], input=status, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "16"
    out = subprocess.run(["bash", "-c", script], input="no resources\n", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_no_arguments_prints_usage(shims):
    env, _ = shims
    result = run_sbatch(env)
    assert result.returncode == 2 and "recipe=NAME" in result.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sbatch_header_declares_the_allocation():
    header = [line for line in SBATCH.read_text().splitlines() if line.startswith("#SBATCH")]
    for option in ("--nodes=", "--gpus-per-node=", "--ntasks-per-node=1"):
        assert any(option in line for line in header), option


def test_a_signal_is_forwarded_to_rlhf_and_its_exit_5_requeues_the_job(shims):
    """Issue 16 §9: SLURM's USR1 (ahead of the time limit) or SIGTERM reaches rlhf through the script;
    rlhf's exit 5 (preempted, checkpoint saved) requeues the job, and the requeued one resumes."""
    import signal
    import time

    env, log = shims
    proc = subprocess.Popen(["bash", str(SBATCH), "recipe=arithmetic"], env={**env, "FAKE_RECIPE_TRAINS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while "training" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 5, stderr
    calls = events(log)
    assert "entrypoint got SIGTERM" in calls and "scontrol requeue 4242" in calls
    assert calls.index("scontrol requeue 4242") > calls.index("entrypoint got SIGTERM")
    assert sum(c.startswith("stop") for c in calls) == 3  # Ray still torn down
    assert "forwarding SIGTERM" in stderr and "requeueing job 4242" in stderr
    log.unlink()
    (log.parent / "gpus.state").unlink()
    again = run_sbatch({**env, "SLURM_RESTART_COUNT": "1"}, "recipe=arithmetic")
    assert again.returncode == 0, again.stderr
    assert "ARG:resume=true" in log.read_text().splitlines()
