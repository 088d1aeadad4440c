"""Measuring honestly on a shared 2-core machine: foreign CPU use, peak memory, the measured loop.

A neighbour using the CPU slows torch several-fold (its OpenMP threads spin and wait for cores), so
every measured iteration records how much CPU *other* processes used during it: system-wide busy
time (/proc/stat) minus the CPU time of our own process tree (this process and all descendants —
with a local Ray cluster that includes raylet, GCS and every actor). An iteration where others used
more than `threshold_cores` is discarded and replaced by an extra one, up to `max_extra`; a section
that still lacks clean iterations is reported with `reliable: false`.
"""
from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import psutil

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def system_busy_seconds() -> float:
    """CPU-seconds all cores spent not idle since boot (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class TreeCpu:
    """CPU-seconds used by a process and its descendants, tracked per pid across snapshots."""

    def __init__(self, root_pid: int | None = None) -> None:
        self.root = psutil.Process(root_pid or os.getpid())
        self.seen: dict[int, float] = {}

    def snapshot(self) -> dict[int, float]:
        out = {}
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system + t.children_user + t.children_system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    @staticmethod
    def used(before: dict[int, float], after: dict[int, float]) -> float:
        """CPU time our tree used between two snapshots (processes born in between count fully)."""
        return sum(t - before.get(pid, 0.0) for pid, t in after.items())


@dataclass
class Window:
    wall: float
    own_cpu: float
    foreign_cpu: float

    @property
    def foreign_cores(self) -> float:
        return self.foreign_cpu / self.wall if self.wall > 0 else 0.0


class CpuMonitor:
    """`start()` … `stop()` → Window: wall, our CPU, everyone else's CPU during it."""

    def __init__(self) -> None:
        self.tree = TreeCpu()

    def start(self):
        return time.perf_counter(), system_busy_seconds(), self.tree.snapshot()

    def stop(self, token) -> Window:
        wall0, sys0, tree0 = token
        wall, sys1, tree1 = time.perf_counter(), system_busy_seconds(), self.tree.snapshot()
        own = TreeCpu.used(tree0, tree1)
        return Window(wall=wall - wall0, own_cpu=own, foreign_cpu=max(sys1 - sys0 - own, 0.0))


@dataclass
class Policy:
    """How many iterations to run and when one counts as disturbed."""

    warmup: int = 2
    iterations: int = 10  # measured (clean) iterations wanted
    threshold_cores: float = 0.1  # others may use at most this many cores on average during an iteration
    max_extra: int = 10  # extra iterations allowed to replace disturbed ones

    @property
    def max_total(self) -> int:
        return self.warmup + self.iterations + self.max_extra


@dataclass
class Measured:
    """Per-iteration records of one section; `summary()` gives the medians over clean iterations."""

    policy: Policy
    records: list[dict] = field(default_factory=list)  # warm-up records are kept, marked

    def add(self, record: dict, window: Window) -> dict:
        index = len(self.records)
        record = {**record, "index": index, "warmup": index < self.policy.warmup,
                  "foreign_cores": round(window.foreign_cores, 4), "own_cores": round(window.own_cpu / window.wall, 3),
                  "busy": window.foreign_cores > self.policy.threshold_cores}
        self.records.append(record)
        return record

    def measured(self) -> list[dict]:
        return [r for r in self.records if not r["warmup"]]

    def clean(self) -> list[dict]:
        return [r for r in self.measured() if not r["busy"]]

    def done(self) -> bool:
        return len(self.clean()) >= self.policy.iterations or len(self.records) >= self.policy.max_total

    def summary(self, keys: list[str] | None = None) -> dict:
        """Medians over the clean iterations (over all measured ones if too few were clean)."""
        clean = self.clean()
        reliable = len(clean) >= self.policy.iterations
        use = clean if reliable else self.measured()
        keys = keys or sorted({k for r in use for k, v in r.items() if isinstance(v, (int, float))
                               and not isinstance(v, bool) and k not in ("index", "foreign_cores", "own_cores")})
        med = {k: statistics.median([r[k] for r in use if k in r]) for k in keys if any(k in r for r in use)}
        return {"median": med, "reliable": reliable, "clean_iterations": len(clean),
                "measured_iterations": len(self.measured()),
                "max_foreign_cores": max((r["foreign_cores"] for r in self.measured()), default=0.0),
                "median_foreign_cores": statistics.median([r["foreign_cores"] for r in self.measured()] or [0.0])}


# --profile sets this to a context manager that profiles the measured loop only (not the set-up).
LOOP_PROFILER: Callable[[], contextlib.AbstractContextManager] | None = None


def loop_profiler() -> contextlib.AbstractContextManager:
    return LOOP_PROFILER() if LOOP_PROFILER is not None else contextlib.nullcontext()


def measure_loop(step: Callable[[int], dict], policy: Policy, monitor: CpuMonitor | None = None) -> Measured:
    """Call `step(i)` (returns a record with at least "seconds") until enough clean iterations."""
    monitor = monitor or CpuMonitor()
    result = Measured(policy)
    i = 0
    with loop_profiler():
        while not result.done():
            token = monitor.start()
            record = step(i)
            result.add(record, monitor.stop(token))
            i += 1
    return result


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb(pid: int) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / 2 ** 20
    except psutil.NoSuchProcess:
        return None


def matmul_flops(threads: int, n: int = 1024, reps: int = 20) -> dict:
    """Dense fp32 matmul throughput of this machine at `threads` torch threads (best and median)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    flop = 2 * n ** 3
    return {"n": n, "threads": threads, "best_flops": flop / min(times), "median_flops": flop / statistics.median(times)}
