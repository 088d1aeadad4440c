"""Issue 16 §8: two processes on one run_dir — the second is refused, naming the first; a holder that
dies (even by SIGKILL) leaves no stale lock."""
import json
import os
import signal
import subprocess
import sys

import pytest

from rlhf.trainers.run_lock import LOCK_NAME, RunDirLocked, run_dir_lock

HOLD = ("import sys, time; from pathlib import Path; from rlhf.trainers.run_lock import run_dir_lock\n"
        "with run_dir_lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True); time.sleep(600)\n")


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"  # waits for the lock, however slow the machine
    return proc


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holder_frees_it(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunDirLocked, match=rf"run_dir {tmp_path} is in use by another rlhf process \(pid "
                                               rf"{proc.pid} on host .*, since .*\)"):
            with run_dir_lock(tmp_path):
                pass
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == proc.pid  # the refused attempt did not overwrite the holder's record
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with run_dir_lock(tmp_path):  # the kernel released it with the process
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    with run_dir_lock(tmp_path):  # and a normal exit releases it too
        pass


def test_the_rlhf_command_refuses_a_locked_run_dir_with_exit_2(tmp_path):
    run_dir = tmp_path / "run"
    proc = _holder(run_dir)
    try:
        result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rlhf"), "recipe=quickstart",
                                 f"run_dir={run_dir}", "stages=[prepare]", "logging=quiet"],
                                capture_output=True, text=True, timeout=300)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"in use by another rlhf process (pid {proc.pid}" in result.stderr and "Traceback" not in result.stderr
