"""The `rlhf` console script, run as a user runs it (in a subprocess)."""
import os
import subprocess
import sys
from pathlib import Path

RLHF = Path(sys.executable).parent / "rlhf"


def run(*args):
    return subprocess.run([str(RLHF), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ})


def test_installation_check_passes():
    result = run()
    assert result.returncode == 0, result.stderr
    assert "installation OK" in result.stdout


def test_help_lists_usage():
    result = run("--help")
    assert result.returncode == 0
    assert "usage: rlhf" in result.stdout


def test_unknown_arguments_are_refused_clearly():
    result = run("recipe=quickstart")
    assert result.returncode == 2
    assert "no recipes" in result.stderr
