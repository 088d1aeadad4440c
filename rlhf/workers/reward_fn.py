"""Running a rule-based reward function safely: a raising or hanging function never kills the job.

A task's reward function (e.g. the arithmetic verifier, a unit-test runner for code) is user code.
It runs in a separate process so that a hang can be cut off: each call gets `timeout_s`; an
exception or a timeout gives the configured fallback score, is counted, and is logged with the row.
After a timeout the process is replaced (a hung process cannot be interrupted from outside), and
after `HANG_LIMIT` consecutive timeouts in one batch the batch's remaining rows are counted as
timeouts without being tried, so a function that always hangs costs at most HANG_LIMIT × timeout_s
per batch, not per row. `last_failures` says, per row of the last call, which failure (if any) gave
its score: the reward worker turns it into `fn_failures_B` for the per-step metrics.

Limits (`RewardFnLimits`) bound what one call may take besides wall time: memory (address space the
child may add to what it holds after start-up; an allocation beyond it is a MemoryError) and CPU
seconds (a multi-threaded or busy call is stopped by SIGXCPU, raised in the child as
CPUTimeLimitExceeded). Both count as errors, naming the limit. The child leads its own process group,
so a timeout kills whatever the function forked along with it.
"""
from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import resource
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)

FAILURE_KINDS = ("errors", "timeouts", "non_finite")  # codes 1, 2, 3 of `failure_codes`; 0 = a real score
HANG_LIMIT = 2  # consecutive timeouts in one batch after which its remaining rows are not tried


@dataclass
class RewardFnStats:
    """Counts of calls that did not return a usable score."""

    errors: int = 0
    timeouts: int = 0
    non_finite: int = 0
    examples: list[str] = field(default_factory=list)  # first few failure descriptions

    def record(self, kind: str, description: str, count: int = 1) -> None:
        setattr(self, kind, getattr(self, kind) + count)
        if len(self.examples) < 5:
            self.examples.append(description)


@dataclass(frozen=True)
class RewardFnLimits:
    """What one reward-function call may use besides wall time (None or 0 = unlimited)."""

    memory_mb: int | None = 2048  # address space the child may add beyond its size after start-up
    cpu_s: float | None = None  # CPU seconds per call (all threads); None = no limit but the timeout


class CPUTimeLimitExceeded(Exception):
    """Raised inside the child when a call used up its CPU-time limit."""


_INSTALLED_FN: Callable[[str, Any], float] | None = None  # the reward function, in the child process
_CPU_S: float | None = None


def _install(fn: Callable[[str, Any], float], limits: RewardFnLimits = RewardFnLimits()) -> None:
    """Pool initializer, in the child: lead a process group, apply the limits, keep the function."""
    global _INSTALLED_FN, _CPU_S
    os.setsid()  # a timeout kills this group: the function's own children with it
    if limits.memory_mb:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm") as f:  # size in pages, after the function's imports
            size = int(f.read().split()[0]) * resource.getpagesize()
        soft = size + limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    if limits.cpu_s:
        signal.signal(signal.SIGXCPU, _cpu_exceeded)
    _INSTALLED_FN, _CPU_S = fn, limits.cpu_s


def _cpu_exceeded(signum, frame) -> None:
    raise CPUTimeLimitExceeded(f"used more than its CPU-time limit of {_CPU_S:g} s")


def _call(response: str, reference: Any) -> float:
    if not _CPU_S:
        return float(_INSTALLED_FN(response, reference))
    used = resource.getrusage(resource.RUSAGE_SELF)
    budget = math.ceil(used.ru_utime + used.ru_stime + _CPU_S)  # RLIMIT_CPU counts whole seconds of the process
    resource.setrlimit(resource.RLIMIT_CPU, (budget, resource.RLIM_INFINITY))
    try:
        return float(_INSTALLED_FN(response, reference))
    finally:
        resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


class RewardFunctionRunner:
    """Scores (response, reference) pairs with `fn` in a child process, one call at a time.

    `fn` must be picklable (a module-level function, as task rewards are). `__call__` returns one
    float per row: fn's value, or `fallback` when fn raised, hung past `timeout_s`, or returned a
    non-finite number. `stats` accumulates the failures for the metrics.
    """

    def __init__(self, fn: Callable[[str, Any], float], timeout_s: float = 10.0, fallback: float = 0.0,
                 limits: RewardFnLimits = RewardFnLimits()) -> None:
        if timeout_s <= 0:
            raise ValueError(f"reward function timeout_s must be > 0, got {timeout_s}")
        self.fn, self.timeout_s, self.fallback, self.limits = fn, timeout_s, float(fallback), limits
        self.stats = RewardFnStats()
        self.last_failures: list[str | None] = []
        self._context = mp.get_context("spawn")
        self._pool = None

    def _ensure_pool(self):
        if self._pool is None:
            # fn is shipped once, at start-up; each call then sends only its row.
            self._pool = self._context.Pool(processes=1, initializer=_install, initargs=(self.fn, self.limits))
        return self._pool

    def _restart(self) -> None:
        if self._pool is not None:
            groups = [worker.pid for worker in getattr(self._pool, "_pool", [])]  # the pool's child processes
            # Terminate first: a worker killed behind the pool's back is replaced at once, and the
            # replacement, idle, holds the task queue's lock that terminate() waits for.
            self._pool.terminate()
            self._pool.join()
            for pid in groups:  # each child led its own group (_install): what it forked dies too
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError, TypeError):
                    pass  # nothing left in it
        self._pool = None

    def __call__(self, responses: Sequence[str], references: Sequence[Any]) -> list[float]:
        if len(responses) != len(references):
            raise ValueError(f"{len(responses)} responses but {len(references)} references")
        self.last_failures, scores, hung = [], [], 0
        for row, (response, reference) in enumerate(zip(responses, references)):
            if hung >= HANG_LIMIT:
                value, kind = self._fail("timeouts", f"row {row}: not tried after {hung} consecutive timeouts")
            else:
                value, kind = self._score_one(row, response, reference)
            hung = hung + 1 if kind == "timeouts" else 0
            scores.append(value)
            self.last_failures.append(kind)
        return scores

    def failure_codes(self) -> list[int]:
        """Per row of the last call: 0 = the function's score, else 1 + FAILURE_KINDS.index(kind)."""
        return [0 if kind is None else 1 + FAILURE_KINDS.index(kind) for kind in self.last_failures]

    def _score_one(self, row: int, response: str, reference: Any) -> tuple[float, str | None]:
        pending = self._ensure_pool().apply_async(_call, (response, reference))
        try:
            value = pending.get(timeout=self.timeout_s)
        except mp.TimeoutError:
            self._restart()
            return self._fail("timeouts", f"row {row}: no result within {self.timeout_s:g} s")
        except CPUTimeLimitExceeded as exc:  # its other threads may still burn CPU: a fresh child
            self._restart()
            return self._fail("errors", f"row {row}: {type(exc).__name__}: {exc}")
        except Exception as exc:  # the reward function raised: that row only gets the fallback
            return self._fail("errors", f"row {row}: {type(exc).__name__}: {exc}")
        if value != value or value in (float("inf"), float("-inf")):
            return self._fail("non_finite", f"row {row}: returned {value}")
        return value, None

    def _fail(self, kind: str, description: str) -> tuple[float, str]:
        self.stats.record(kind, description)
        logger.warning("reward function %s (fallback score %g): %s", kind.rstrip("s"), self.fallback, description)
        return self.fallback, kind

    def close(self) -> None:
        self._restart()

    def __del__(self) -> None:  # pragma: no cover - best effort, also while Ray kills the actor
        try:
            self.close()
        except BaseException:  # SystemExit/KeyboardInterrupt during teardown must not print tracebacks
            pass


class BatchRewardRunner:
    """Scores a whole batch with a task's own contained scorer (`task.score_batch`, e.g. the code task's
    sandbox, which runs each row in its own process): the same interface as RewardFunctionRunner, plus
    `last_outcomes` — the scorer's outcome per row (e.g. "passed", "timeout", "violation").

    A row whose outcome is in `fallback_outcomes` (the scorer could not score it: "sandbox_error") and a
    non-finite score get the fallback and count as failures; a scorer that raises gives the whole batch
    the fallback, counted as errors. Outcomes like "timeout" or "violation" are the program's fault:
    they are real scores (0), counted in the metrics, not failures.
    """

    def __init__(self, score_batch: Callable[[Sequence[str], Sequence[Any]], list[tuple[float, str]]],
                 fallback: float = 0.0, fallback_outcomes: tuple[str, ...] = ("sandbox_error",)) -> None:
        self.score_batch, self.fallback, self.fallback_outcomes = score_batch, float(fallback), fallback_outcomes
        self.stats = RewardFnStats()
        self.last_failures: list[str | None] = []
        self.last_outcomes: list[str] = []

    def __call__(self, responses: Sequence[str], references: Sequence[Any]) -> list[float]:
        if len(responses) != len(references):
            raise ValueError(f"{len(responses)} responses but {len(references)} references")
        try:
            rows = list(self.score_batch(responses, references))
            if len(rows) != len(responses):
                raise ValueError(f"score_batch returned {len(rows)} rows for {len(responses)}")
        except Exception as exc:  # the scorer itself broke: every row gets the fallback, counted
            description = f"{len(responses)} rows: {type(exc).__name__}: {exc}"
            self.stats.record("errors", description, count=len(responses))
            logger.warning("batch reward scorer error (fallback score %g): %s", self.fallback, description)
            self.last_failures, self.last_outcomes = ["errors"] * len(responses), ["scorer_error"] * len(responses)
            return [self.fallback] * len(responses)
        scores, self.last_failures, self.last_outcomes = [], [], []
        for row, (value, outcome) in enumerate(rows):
            value, kind = float(value), None
            if outcome in self.fallback_outcomes:
                kind = "errors"
            elif not math.isfinite(value):
                kind = "non_finite"
            if kind is not None:
                self.stats.record(kind, f"row {row}: outcome {outcome}, score {value}")
                value = self.fallback
            scores.append(value)
            self.last_failures.append(kind)
            self.last_outcomes.append(str(outcome))
        return scores

    def failure_codes(self) -> list[int]:
        return [0 if kind is None else 1 + FAILURE_KINDS.index(kind) for kind in self.last_failures]

    def close(self) -> None:
        pass


def task_reward_runner(task: Any, timeout_s: float, fallback: float, limits: RewardFnLimits):
    """The runner for `task`'s verifier: its own batch scorer when it has one (`score_batch`), else its
    per-row `reward` in a guarded child process."""
    if callable(getattr(task, "score_batch", None)):
        return BatchRewardRunner(task.score_batch, fallback)
    return RewardFunctionRunner(task.reward, timeout_s, fallback, limits)
