"""A rule-based reward function that raises, hangs or returns NaN gets a counted fallback, never a dead job."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from reward_fns_for_tests import flaky_reward, length_reward  # noqa: E402

from rlhf.workers.reward_fn import RewardFunctionRunner  # noqa: E402


def test_scores_come_back_in_row_order():
    runner = RewardFunctionRunner(length_reward, timeout_s=300)  # real work: room on a busy CI
    try:
        assert runner(["a", "abc", ""], [None, None, None]) == [1.0, 3.0, 0.0]
        assert runner.stats.errors == runner.stats.timeouts == 0
    finally:
        runner.close()


def test_raise_hang_and_nan_give_fallbacks_and_are_counted():
    # 10 s: the hang must expire, and the child restarted after it must start within it on a slow CI
    runner = RewardFunctionRunner(flaky_reward, timeout_s=10, fallback=-1.0)
    try:
        runner(["warm"], ["x"])  # child start-up is not part of the measured timeout below
        start = time.monotonic()
        scores = runner(["ok", "raise", "hang", "nan", "ok"], ["ok", "x", "x", "x", "no"])
        elapsed = time.monotonic() - start
        assert scores == [1.0, -1.0, -1.0, -1.0, 0.0]
        assert (runner.stats.errors, runner.stats.timeouts, runner.stats.non_finite) == (1, 1, 1)
        assert any("row 1: RuntimeError: cannot score this" in e for e in runner.stats.examples)
        assert any("row 2: no result within 10 s" in e for e in runner.stats.examples)
        assert elapsed < 50  # the hang cost one timeout, not the 60 s sleep
        assert runner.failure_codes() == [0, 1, 2, 3, 0]  # per row: none, error, timeout, non-finite, none
    finally:
        runner.close()


def test_a_reward_that_always_hangs_costs_two_timeouts_per_batch_not_one_per_row():
    """After HANG_LIMIT consecutive timeouts the rest of the batch is not tried (counted as timeouts)."""
    from rlhf.workers.reward_fn import HANG_LIMIT

    runner = RewardFunctionRunner(flaky_reward, timeout_s=300, fallback=-1.0)  # start-up has room on a busy CI
    try:
        runner(["warm"], ["x"])
        runner.timeout_s = 1  # meant to expire: every row hangs for 60 s
        scores = runner(["hang"] * 6 + ["ok"], ["x"] * 6 + ["ok"])
        assert scores == [-1.0] * 7  # the last row comes after the limit too
        assert runner.stats.timeouts == 7 and runner.failure_codes() == [2] * 7
        tried = [e for e in runner.stats.examples if "no result within" in e]
        assert len(tried) == HANG_LIMIT == 2
        assert any(f"row 2: not tried after {HANG_LIMIT} consecutive timeouts" in e for e in runner.stats.examples)
        runner.timeout_s = 300  # the restarted child needs its start-up time again
        assert runner(["ok"], ["ok"]) == [1.0]  # the next batch is tried again
    finally:
        runner.close()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, waiting to be reaped
    except FileNotFoundError:
        return False


def test_memory_and_cpu_limits_stop_a_call_as_a_counted_error(tmp_path):
    """Issue 16 §2: a call that allocates without bound, or burns CPU in several threads, is stopped by
    the child's limits (not by the wall-clock timeout) and counted as an error naming the limit."""
    from reward_fns_for_tests import greedy_reward

    from rlhf.workers.reward_fn import RewardFnLimits

    runner = RewardFunctionRunner(greedy_reward, timeout_s=300, fallback=-1.0,
                                  limits=RewardFnLimits(memory_mb=256, cpu_s=2))
    try:
        start = time.monotonic()
        assert runner(["alloc", "spin", "ok"], ["x", "x", "x"]) == [-1.0, -1.0, 1.0]
        assert time.monotonic() - start < 200  # the spin stopped at its CPU limit, not at 60 s or the timeout
        assert runner.failure_codes() == [1, 1, 0] and runner.stats.errors == 2 and runner.stats.timeouts == 0
        assert any("row 0: MemoryError" in e for e in runner.stats.examples), runner.stats.examples
        assert any("row 1: CPUTimeLimitExceeded: used more than its CPU-time limit of 2 s" in e
                   for e in runner.stats.examples), runner.stats.examples
    finally:
        runner.close()


def test_a_timeout_kills_what_the_function_forked(tmp_path):
    from reward_fns_for_tests import greedy_reward

    runner = RewardFunctionRunner(greedy_reward, timeout_s=300, fallback=-1.0)
    pid_file = tmp_path / "pid"
    try:
        runner(["warm"], ["x"])
        runner.timeout_s = 20  # meant to expire: the call hangs for 60 s after forking (room to fork first)
        assert runner(["fork"], [str(pid_file)]) == [-1.0] and runner.stats.timeouts == 1
        pid = int(pid_file.read_text())
        deadline = time.monotonic() + 60
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(pid), f"the function's child {pid} outlived the timeout"
    finally:
        runner.close()
