"""Running untrusted Python programs against unit tests: each contained, each outcome named.

A model's program (`Program`: source, the function to call, tests as (args, expected) pairs) runs in a
fresh interpreter of its own (`python -I -S -B rlhf/envs/_sandbox_child.py WORKDIR`), in a temporary
working directory that is removed afterwards, and in a process session of its own that is killed as a
whole. `run_programs` runs a batch of them concurrently, `SandboxLimits.workers` at a time.

The layers, outermost first:
- wall clock: past `timeout_s` the session is killed (SIGKILL to the group) → "timeout";
- a network namespace with no interfaces (`unshare -rn`) where the kernel allows unprivileged user
  namespaces (`network_isolated()` says whether it does; the audit hook below refuses sockets anyway);
- resource limits set by the child on itself, hard = soft so the program cannot raise them: address
  space (`memory_mb` beyond the interpreter's start-up size → MemoryError → "memory"), CPU seconds
  (SIGXCPU → "cpu_time"), file size (`max_output_bytes`, which bounds what it prints: a file that
  reaches it → "output_limit"), 64 open files, no core dumps;
- an audit hook (`sys.addaudithook`, which the program cannot remove) refusing process creation,
  signals, sockets, native code, reads outside the standard library and the working directory, and
  writes outside the working directory → "violation" (reward 0 even when the program catches the
  PermissionError and carries on);
- expected values never enter the child: it returns each call's value as JSON, the parent compares.

The audit hook is a policy layer against the accidents and shortcuts a policy model finds (reading the
tests, killing the trainer, looping forever), not a boundary against a determined attacker with the
interpreter's full power; run the trainer itself in a container or VM where programs are hostile.

Outcome (`ProgramResult.reason`, one of REASONS): "passed" (every test), "failed_tests" (ran, some
test failed), "syntax_error", "load_error" (the module body raised, or no such function),
"timeout", "cpu_time", "memory", "output_limit", "violation", "exited" (the process ended without
results: `os._exit`, a crash of the interpreter, a signal), "sandbox_error" (the sandbox could not
start it; logged). Only "passed" and "failed_tests" score above 0: the fraction of tests passed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

REASONS = ("passed", "failed_tests", "syntax_error", "load_error", "timeout", "cpu_time", "memory",
           "output_limit", "violation", "exited", "sandbox_error")
CHILD = Path(__file__).with_name("_sandbox_child.py")


@dataclass(frozen=True)
class SandboxLimits:
    """What one program may use. `workers` = programs run at once (0 = one per CPU core)."""

    timeout_s: float = 10.0  # wall clock per program, interpreter start-up included
    cpu_s: int = 3  # CPU seconds per program (whole seconds: the kernel's granularity)
    memory_mb: int = 256  # address space beyond the interpreter's size at start-up
    max_output_bytes: int = 1 << 20  # largest file the program may write (its stdout and stderr are files)
    workers: int = 0

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)}")
        if self.max_output_bytes < 64 << 10:
            raise ValueError(f"SandboxLimits.max_output_bytes must be >= 65536 (the results file shares it), "
                             f"got {self.max_output_bytes}")
        if self.workers < 0:
            raise ValueError(f"SandboxLimits.workers must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class Program:
    """`source` defines `entry_point`; each test is (args list, expected JSON value)."""

    source: str
    entry_point: str
    tests: tuple[tuple[list, Any], ...]


@dataclass
class ProgramResult:
    reason: str  # one of REASONS
    passed: int = 0
    total: int = 0
    detail: str = ""  # what went wrong, for logs: the error, the refused event, the exit status
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        """Fraction of tests passed; 0 for any outcome but "passed"/"failed_tests"."""
        if self.reason not in ("passed", "failed_tests") or not self.total:
            return 0.0
        return self.passed / self.total


@lru_cache(maxsize=1)
def network_isolated() -> bool:
    """Whether `unshare -rn` works here (unprivileged user + network namespaces)."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def run_programs(programs: Sequence[Program], limits: SandboxLimits = SandboxLimits()) -> list[ProgramResult]:
    """Run each program against its tests, `limits.workers` at a time; one ProgramResult per program."""
    workers = limits.workers or os.cpu_count() or 1
    if len(programs) <= 1 or workers == 1:
        return [run_program(p, limits) for p in programs]
    with ThreadPoolExecutor(max_workers=min(workers, len(programs)), thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))


def run_program(program: Program, limits: SandboxLimits = SandboxLimits()) -> ProgramResult:
    """Run one program in its own interpreter and working directory; never raises on the program's account."""
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="rlhf-sandbox-")
    try:
        result = _run_in(workdir, program, limits)
    except OSError as exc:  # the sandbox itself failed (no disk, no processes left): say so, score 0
        logger.warning("sandbox could not run a program: %s", exc)
        result = ProgramResult("sandbox_error", total=len(program.tests), detail=str(exc))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = time.monotonic() - start
    return result


def _command(workdir: str) -> list[str]:
    python = [sys.executable, "-I", "-S", "-B", str(CHILD), workdir]
    return ["unshare", "-rn", *python] if network_isolated() else python


def _run_in(workdir: str, program: Program, limits: SandboxLimits) -> ProgramResult:
    spec = {"source": program.source, "entry_point": program.entry_point,
            "calls": [list(args) for args, _ in program.tests],
            "limits": {"memory_mb": limits.memory_mb, "cpu_s": limits.cpu_s,
                       "max_output_bytes": limits.max_output_bytes}}
    Path(workdir, "calls.json").write_text(json.dumps(spec), encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
           "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    with open(Path(workdir, "stdout.txt"), "wb") as out, open(Path(workdir, "stderr.txt"), "wb") as err:
        proc = subprocess.Popen(_command(workdir), cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True, close_fds=True)
        try:
            proc.wait(timeout=limits.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_session(proc)
    return _outcome(workdir, program, proc.returncode, timed_out, limits)


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the program's whole session (whatever it left running), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _outcome(workdir: str, program: Program, returncode: int, timed_out: bool,
             limits: SandboxLimits) -> ProgramResult:
    total = len(program.tests)
    violations = _read_lines(Path(workdir, "violations.txt"))
    results = _read_results(Path(workdir, "results.json"))
    stderr_tail = _tail(Path(workdir, "stderr.txt"))
    if timed_out:
        return ProgramResult("timeout", total=total, detail=f"no result within {limits.timeout_s:g} s",
                             violations=violations)
    if _output_full(workdir, limits):  # writes past the limit fail with EFBIG (Python ignores SIGXFSZ)
        return ProgramResult("output_limit", total=total, detail=f"wrote {limits.max_output_bytes} bytes or more",
                             violations=violations)
    if violations:
        return ProgramResult("violation", total=total, detail=violations[0], violations=violations)
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL) and results is None:
        return ProgramResult("cpu_time", total=total, detail=f"used more than {limits.cpu_s} CPU s")
    if results is None:
        return ProgramResult("exited", total=total, detail=f"ended without results (exit status {returncode}); "
                                                          f"stderr: {stderr_tail}")
    status = results.get("status")
    if status != "completed":
        reason = status if status in ("syntax_error", "memory") else "load_error"
        return ProgramResult(reason, total=total, detail=str(results.get("detail", "")))
    return _graded(results.get("calls") or [], program, total)


def _graded(calls: list, program: Program, total: int) -> ProgramResult:
    if len(calls) != total:
        return ProgramResult("exited", total=total, detail=f"{len(calls)} results for {total} tests")
    errors = [c["error"] for c in calls if "error" in c]
    if "MemoryError" in errors:
        return ProgramResult("memory", total=total, detail="MemoryError in a test call")
    if errors and errors[0].startswith("NoEntryPoint"):
        return ProgramResult("load_error", total=total, detail=errors[0])
    passed = sum(_matches(c, expected) for c, (_, expected) in zip(calls, program.tests))
    detail = errors[0] if errors else ""
    return ProgramResult("passed" if passed == total else "failed_tests", passed, total, detail)


def _matches(call: dict, expected: Any) -> bool:
    """The call returned `expected` (compared as JSON: tuples and lists are alike, 1 == 1.0)."""
    if "value" not in call or call["value"] is None:
        return False
    try:
        return json.loads(call["value"]) == json.loads(json.dumps(expected))
    except ValueError:
        return False


def _output_full(workdir: str, limits: SandboxLimits) -> bool:
    return any(Path(workdir, name).stat().st_size >= limits.max_output_bytes
               for name in ("stdout.txt", "stderr.txt") if Path(workdir, name).exists())


def _read_results(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_lines(path: Path, limit: int = 20) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for _, line in zip(range(limit), f)]
    except OSError:
        return []


def _tail(path: Path, chars: int = 300) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - chars))
            return f.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return ""


def reason_counts(results: Sequence[ProgramResult]) -> dict[str, int]:
    """{reason: count} over REASONS (every reason present, zeros included), for metrics."""
    counts = dict.fromkeys(REASONS, 0)
    for r in results:
        counts[r.reason] += 1
    return counts
