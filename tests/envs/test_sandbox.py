"""The sandbox (rlhf/envs/sandbox.py) against hostile programs: each is contained, reported with its
reason, scores 0, and the batch around it is still scored.

Limits are generous where a test only needs the program to finish (a loaded CI machine must not turn
a correct program into a timeout); only the sleeper relies on the wall clock, and it sleeps far past it.
"""
import os
import tempfile
from pathlib import Path

import pytest

from rlhf.envs.sandbox import REASONS, Program, ProgramResult, SandboxLimits, network_isolated, reason_counts, run_programs

ADD_TESTS = (([1, 2], 3), ([2, 2], 4), ([-1, 1], 0))
GENEROUS = SandboxLimits(timeout_s=120, cpu_s=2, memory_mb=256)
GRADER_FILE = Path(__file__).resolve()  # a file of "the grader's": the program must not read it

HOSTILE = {
    # name: (source of add(a, b), expected reason)
    "infinite_loop": ("def add(a, b):\n    while True:\n        pass\n", "cpu_time"),
    "fork_bomb": ("import os\ndef add(a, b):\n    while True:\n        os.fork()\n", "violation"),
    "fork_at_import": ("import os\nos.fork()\ndef add(a, b):\n    return a + b\n", "violation"),
    "subprocess": ("import subprocess\ndef add(a, b):\n    return a + b\n", "violation"),
    "system": ("import os\ndef add(a, b):\n    os.system('echo hi')\n    return a + b\n", "violation"),
    "huge_allocation": ("def add(a, b):\n    x = bytearray(10 ** 11)\n    return a + b\n", "memory"),
    "growing_allocation": ("def add(a, b):\n    x = []\n    while True:\n        x.append(bytes(10 ** 7))\n",
                           "memory"),
    "write_home": ("import os\ndef add(a, b):\n    open(os.path.join('/root', 'pwned.txt'), 'w').write('x')\n"
                   "    return a + b\n", "violation"),
    "write_outside_caught": ("def add(a, b):\n    try:\n        open('/tmp/rlhf_sandbox_escape.txt', 'w')\n"
                             "    except OSError:\n        pass\n    return a + b\n", "violation"),
    "delete_outside": ("import os\ndef add(a, b):\n    os.remove('/tmp/rlhf_sandbox_victim.txt')\n"
                       "    return a + b\n", "violation"),
    "socket": ("import socket\ndef add(a, b):\n    socket.create_connection(('127.0.0.1', 9))\n"
               "    return a + b\n", "violation"),
    "exit_hard": ("import os\ndef add(a, b):\n    os._exit(0)\n", "exited"),
    "segfault": ("import faulthandler\ndef add(a, b):\n    faulthandler._sigsegv()\n", "exited"),
    "read_grader": (f"def add(a, b):\n    return open({str(GRADER_FILE)!r}).read()\n", "violation"),
    "kill_parent": ("import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGKILL)\n", "violation"),
    "ctypes": ("import ctypes\ndef add(a, b):\n    return a + b\n", "violation"),
    "raise_limits": ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (10 ** 6, 10 ** 6))\n"
                     "def add(a, b):\n    return a + b\n", "violation"),
    "flood_output": ("def add(a, b):\n    while True:\n        print('x' * 10000)\n", "output_limit"),
    "deep_recursion": ("import sys\nsys.setrecursionlimit(10 ** 7)\ndef add(a, b):\n    return add(a, b)\n",
                       None),  # a crash (segfault) or the CPU limit, whichever the C stack meets first
    "syntax": ("def add(a, b) return a + b", "syntax_error"),
    "raises_at_import": ("raise RuntimeError('boom')\n", "load_error"),
    "no_function": ("def sub(a, b):\n    return a - b\n", "load_error"),
}


@pytest.fixture(scope="module")
def hostile_results(tmp_path_factory):
    """Every hostile program plus two honest ones, in one concurrent batch (as a training step runs them)."""
    victim = Path("/tmp/rlhf_sandbox_victim.txt")
    victim.write_text("keep me")
    programs = [Program("def add(a, b):\n    return a + b\n", "add", ADD_TESTS)]
    programs += [Program(source, "add", ADD_TESTS) for source, _ in HOSTILE.values()]
    programs += [Program("def add(a, b):\n    return 3\n", "add", ADD_TESTS)]
    before = set(Path(tempfile.gettempdir()).glob("rlhf-sandbox-*"))
    results = run_programs(programs, SandboxLimits(timeout_s=120, cpu_s=2, memory_mb=256,
                                                    max_output_bytes=1 << 20))
    after = set(Path(tempfile.gettempdir()).glob("rlhf-sandbox-*"))
    yield results, victim, after - before
    victim.unlink(missing_ok=True)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_is_contained_with_its_reason(hostile_results, name):
    results, _, _ = hostile_results
    result = results[1 + list(HOSTILE).index(name)]
    expected = HOSTILE[name][1]
    if expected is None:
        assert result.reason in ("exited", "cpu_time"), result
    else:
        assert result.reason == expected, result
    assert result.score == 0.0


def test_the_batch_around_hostile_programs_is_scored(hostile_results):
    results, victim, left_behind = hostile_results
    assert results[0].reason == "passed" and results[0].score == 1.0
    assert results[-1].reason == "failed_tests" and results[-1].score == pytest.approx(1 / 3)
    assert victim.read_text() == "keep me"  # the delete was refused
    assert not Path("/root/pwned.txt").exists() and not Path("/tmp/rlhf_sandbox_escape.txt").exists()
    assert left_behind == set()  # every working directory removed
    counts = reason_counts(results)
    assert set(counts) == set(REASONS) and sum(counts.values()) == len(results)


def test_a_refused_event_is_named(hostile_results):
    results, _, _ = hostile_results
    by_name = dict(zip(HOSTILE, results[1:-1]))
    assert "os.fork" in by_name["fork_bomb"].detail
    assert "pwned.txt" in by_name["write_home"].detail and "writing" in by_name["write_home"].detail
    assert GRADER_FILE.name in by_name["read_grader"].detail and "reading" in by_name["read_grader"].detail
    assert "os.kill" in by_name["kill_parent"].detail


def test_wall_clock_timeout_kills_a_sleeper_and_its_session():
    sleeper = Program("import time\ndef add(a, b):\n    time.sleep(3600)\n", "add", ADD_TESTS)
    [result] = run_programs([sleeper], SandboxLimits(timeout_s=2, cpu_s=5))
    assert result.reason == "timeout" and result.score == 0.0
    assert result.seconds < 600  # killed, not waited for


def test_expected_values_never_reach_the_program(tmp_path):
    """The program sees the arguments only: a function that looks for the answer in its caller's frames,
    the calls file or its working directory finds nothing to copy."""
    snoop = ("import json, os, sys\n"
             "def add(a, b):\n"
             "    text = open('calls.json').read() + ' '.join(os.listdir('.'))\n"
             "    frame, seen = sys._getframe(1), []\n"
             "    while frame is not None:\n"
             "        seen.append(repr(frame.f_locals)[:100000])\n"
             "        frame = frame.f_back\n"
             "    return '424242' in text + ''.join(seen)\n")
    [result] = run_programs([Program(snoop, "add", (([1, 2], 424242),))], GENEROUS)
    assert result.reason == "failed_tests", result  # it ran, and returned False: the answer was nowhere


def test_results_compare_as_json():
    program = Program("def pair(a):\n    return (a, [a])\n", "pair", (([1], [1, [1]]), ([2], [2, [3]])))
    [result] = run_programs([program], GENEROUS)
    assert (result.reason, result.passed, result.total) == ("failed_tests", 1, 2)
    unserializable = Program("def f():\n    return object()\n", "f", (([], None),))
    [result] = run_programs([unserializable], GENEROUS)
    assert result.reason == "failed_tests" and "Unserializable" in result.detail


def test_programs_run_concurrently_and_in_order():
    programs = [Program(f"def f():\n    return {i}\n", "f", (([], i),)) for i in range(8)]
    results = run_programs(programs, SandboxLimits(timeout_s=120, workers=4))
    assert [r.reason for r in results] == ["passed"] * 8


@pytest.mark.skipif(not network_isolated(), reason="no unprivileged network namespaces on this machine")
def test_programs_run_in_a_network_namespace_of_their_own():
    """The layer under the audit hook: even a program that got past the hook's socket refusal would be
    in a namespace without the host's interfaces."""
    own = os.readlink("/proc/self/ns/net")
    probe = Program("import os\ndef f():\n    return os.readlink('/proc/self/ns/net')\n", "f", (([], own),))
    [result] = run_programs([probe], GENEROUS)
    assert result.reason == "failed_tests", result  # it ran, and its namespace is not ours


def test_limits_are_validated():
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="max_output_bytes"):
        SandboxLimits(max_output_bytes=10)


def test_score_is_zero_unless_the_program_ran():
    assert ProgramResult("violation", passed=3, total=3).score == 0.0
    assert ProgramResult("failed_tests", passed=1, total=4).score == 0.25
