"""Training metrics: one `MetricsLogger` per stage, fanning each step out to several sinks (DESIGN §9).

Sinks, in the order they receive a step:
- JSONL (`run_dir/metrics.jsonl`, shared by every stage of a run): one object per `log` call,
  `{"stage": ..., "step": ..., <metric>: <value>, ...}`. It is the record of truth that resume, plots
  and summaries read back. JSON has no NaN/inf, so non-finite values are written as `null`.
- TensorBoard (`run_dir/tensorboard/<stage>/`): one scalar per metric, tag = metric name.
- Weights & Biases, when enabled: offline unless the user configures otherwise (see `_wandb_mode`).
- a tqdm progress bar (position = step, a few key metrics as postfix);
- one console line every `console_every` steps through `logging` (logger `rlhf.trainers.metrics`,
  level INFO), so the entry point decides where it goes; it is routed around the bar so the bar
  stays intact.

A metrics sink must never kill a multi-day run: a sink that fails to start or to write logs a
warning and is switched off; the others carry on. The JSONL is the exception, since it is what a run
must not lose: a failed append is retried (`JSONL_ATTEMPTS`), then the run stops with a
`MetricsWriteError` naming the file, so a full disk never leaves a run training without its record. Heavy libraries are imported only when a sink
starts, so importing this module is cheap.

Resume: construct the logger with `resume_step=<checkpoint step>`; records of this stage logged after
that step by the interrupted run are dropped from the JSONL (`truncate_after`) and purged from
TensorBoard, so the files match an uninterrupted run. Records carry no wall-clock time for the same
reason. Weights & Biases starts a new run on resume.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rlhf.trainers.plots import plot_curves

logger = logging.getLogger(__name__)

__all__ = ["MetricsLogger", "drop_summary_stage", "plot_curves", "read_jsonl", "read_summary", "summary_table",
           "truncate_after", "write_summary"]

DEFAULT_PROGRESS_KEYS = ("reward/mean", "kl/mean", "actor/loss")
_RESERVED_KEYS = ("stage", "step")


class MetricsLogger:
    """Logs one stage's scalar metrics to JSONL, TensorBoard, W&B, a progress bar and the console.

    Use as a context manager (or call `close()`): `with MetricsLogger(run_dir, "ppo") as m:
    m.log(step, {"reward/mean": 0.3})`. `step` is the optimizer step just completed.

    Args:
        run_dir: the run's directory; holds metrics.jsonl, tensorboard/<stage>/ and wandb/.
        stage: "sft", "rm", "ppo", ...: tags every JSONL record and names the TensorBoard/W&B run.
        jsonl_path: override of run_dir/metrics.jsonl (all stages of a run should share one file).
        tensorboard, wandb, progress: switch those sinks on or off (JSONL is always on).
        wandb_project, wandb_mode, config: W&B project, mode ("online"/"offline"/"disabled"; None =
            offline unless configured, see `_wandb_mode`) and the run config it records.
        total_steps: progress bar total (None: a counter without ETA).
        progress_keys: metrics shown next to the bar, when present in a step.
        console_every: one console line every this many steps; 0 turns it off.
        resume_step: the checkpoint step a resumed run restarts from; later records of this stage
            are dropped from the JSONL and hidden in TensorBoard.
    """

    def __init__(self, run_dir: str | os.PathLike, stage: str, *, jsonl_path: str | os.PathLike | None = None,
                 tensorboard: bool = True, wandb: bool = False, wandb_project: str = "rlhf",
                 wandb_mode: str | None = None, config: dict | None = None, total_steps: int | None = None,
                 progress: bool = True, progress_keys: tuple[str, ...] = DEFAULT_PROGRESS_KEYS,
                 console_every: int = 1, resume_step: int | None = None):
        if console_every < 0:
            raise ValueError(f"console_every must be >= 0 (0 turns the console line off), got {console_every}")
        self.run_dir = Path(run_dir)
        self.stage = stage
        self.jsonl_path = Path(jsonl_path) if jsonl_path is not None else self.run_dir / "metrics.jsonl"
        self.console_every = console_every
        self.progress_keys = tuple(progress_keys)
        self._history: list[dict] = []
        self._closed = False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_after(self.jsonl_path, stage, resume_step)
        elif _has_torn_tail(self.jsonl_path):
            # the next line would glue onto the fragment: drop it
            _atomic_write_text(self.jsonl_path, "".join(_complete_lines(self.jsonl_path)))

        # name -> sink; a sink is any object with write(step, metrics) and close().
        self._sinks: dict[str, Any] = {"jsonl": _JsonlSink(self.jsonl_path, stage)}
        purge_step = None if resume_step is None else resume_step + 1
        starters = {
            "tensorboard": lambda: _TensorBoardSink(self.run_dir / "tensorboard" / stage, purge_step),
            "wandb": lambda: _WandbSink(self.run_dir, stage, wandb_project, wandb_mode, config),
            "progress": lambda: _ProgressSink(stage, total_steps, resume_step or 0, self.progress_keys),
        }
        enabled = {"tensorboard": tensorboard, "wandb": wandb, "progress": progress}
        for name, start in starters.items():
            if not enabled[name]:
                continue
            try:
                self._sinks[name] = start()
            except Exception as exc:  # noqa: BLE001 - any failure of an optional sink is survivable
                logger.warning("metrics: %s sink failed to start, continuing without it: %r", name, exc)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` (name -> number; tensors/numpy scalars are fine) for `step` in every sink."""
        if self._closed:
            raise RuntimeError(f"MetricsLogger({self.stage!r}) is closed")
        clash = [k for k in _RESERVED_KEYS if k in metrics]
        if clash:
            raise ValueError(f"metric names {clash} are reserved for the record's own fields")
        values = {name: _to_number(name, value) for name, value in metrics.items()}
        self._history.append({"stage": self.stage, "step": int(step), **_json_safe(values)})
        for name, sink in list(self._sinks.items()):
            try:
                sink.write(int(step), values)
            except MetricsWriteError:
                raise
            except Exception as exc:  # noqa: BLE001 - see module docstring
                logger.warning("metrics: %s sink failed at step %d, switching it off: %r", name, step, exc)
                self._drop_sink(name)
        if self.console_every and step % self.console_every == 0:
            self._console_line(int(step), values)

    def history(self) -> list[dict]:
        """The records this logger wrote, as they appear in the JSONL (NaN -> None). After a resume,
        earlier steps are only in the file: use `read_jsonl(logger.jsonl_path, stage)` for full curves."""
        return list(self._history)

    def close(self) -> None:
        """Flush and close every sink. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        for name in list(self._sinks):
            self._drop_sink(name)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _drop_sink(self, name: str) -> None:
        sink = self._sinks.pop(name)
        try:
            sink.close()
        except Exception as exc:  # noqa: BLE001
            logger.warning("metrics: %s sink failed to close: %r", name, exc)

    def _console_line(self, step: int, values: dict[str, float]) -> None:
        text = " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        bar = self._sinks.get("progress")
        if bar is None:
            logger.info("[%s] step %d %s", self.stage, step, text)
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(tqdm_class=type(bar.bar)):  # print above the bar, not through it
            logger.info("[%s] step %d %s", self.stage, step, text)


JSONL_ATTEMPTS = 3  # appends of one record before the run stops
JSONL_RETRY_WAIT_S = 0.5  # × the attempt number, between attempts


class MetricsWriteError(OSError):
    """metrics.jsonl could not be appended to, even after retries."""


class _JsonlSink:
    """Appends one line per step. The file is opened per write so that it never holds a handle to
    a file that `truncate_after` has replaced, and a crash loses at most the line being written."""

    def __init__(self, path: Path, stage: str):
        self.path, self.stage = path, stage

    def write(self, step: int, values: dict[str, float]) -> None:
        line = json.dumps({"stage": self.stage, "step": step, **_json_safe(values)}, allow_nan=False)
        error = None
        for attempt in range(1, JSONL_ATTEMPTS + 1):
            try:
                if attempt > 1 and _has_torn_tail(self.path):  # a failed append may have left half a line
                    _atomic_write_text(self.path, "".join(_complete_lines(self.path)))
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")  # one write: a crash leaves at most a torn last line
                return
            except OSError as exc:
                error = exc
                logger.warning("metrics: appending step %d to %s failed (attempt %d of %d): %r", step, self.path,
                               attempt, JSONL_ATTEMPTS, exc)
                if attempt < JSONL_ATTEMPTS:
                    time.sleep(JSONL_RETRY_WAIT_S * attempt)
        raise MetricsWriteError(
            f"metrics: could not append step {step} of stage {self.stage!r} to {self.path} after {JSONL_ATTEMPTS} "
            f"attempts ({error!r}); metrics.jsonl is the run's record (resume, plots and summary.json read it), so "
            "the run stops here: fix the disk or permissions, then resume=true continues from the last checkpoint")

    def close(self) -> None:
        pass


class _TensorBoardSink:
    def __init__(self, log_dir: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events the interrupted run wrote at or after it.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def write(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class _WandbSink:
    def __init__(self, run_dir: Path, stage: str, project: str, mode: str | None, config: dict | None):
        import wandb

        self.run = wandb.init(
            project=project, dir=str(run_dir), mode=_wandb_mode(mode), config=config,
            group=run_dir.name, job_type=stage, name=f"{run_dir.name}-{stage}",
            reinit="create_new",  # the rm and ppo stages of one pipeline are separate runs
            settings=wandb.Settings(console="off", silent=True),  # leave stdout/stderr alone
        )

    def write(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _ProgressSink:
    def __init__(self, stage: str, total: int | None, initial: int, keys: tuple[str, ...]):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=stage, unit="step", dynamic_ncols=True)
        self.keys = keys

    def write(self, step: int, values: dict[str, float]) -> None:
        self.bar.set_postfix({k: _fmt(values[k]) for k in self.keys if k in values}, refresh=False)
        self.bar.update(max(step - self.bar.n, 0))  # position = step; update() also refreshes

    def close(self) -> None:
        self.bar.close()


def _wandb_mode(mode: str | None) -> str | None:
    """Explicit mode wins; else WANDB_MODE; else online only if an API key is in the environment.
    Offline by default, so a run never fails (or blocks) for lack of a key or network."""
    if mode is not None or os.environ.get("WANDB_MODE"):
        return mode  # None lets wandb read WANDB_MODE itself
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


# ---------------------------------------------------------------- JSONL read-back and resume


def read_jsonl(path: str | os.PathLike, stage: str | None = None) -> list[dict]:
    """Records of a metrics JSONL file, optionally only those of `stage`.

    A line counts only once its newline is written, so a fragment after the last newline (a crash
    mid-write) is ignored. A malformed complete line is real corruption and raises ValueError.
    """
    records = []
    for lineno, line in enumerate(_complete_lines(Path(path)), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not a JSON record: {exc}") from exc
        if stage is None or record.get("stage") == stage:
            records.append(record)
    return records


def truncate_after(path: str | os.PathLike, stage: str, step: int) -> int:
    """Drop `stage`'s records with step > `step` (and any torn last line); keep every other line
    byte for byte. Atomic (temp file + os.replace). Returns how many records were dropped; a
    missing file is a no-op. Called when resuming from a checkpoint taken at `step`."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in _complete_lines(path):
        record = json.loads(line) if line.strip() else {}
        if record.get("stage") == stage and record.get("step", -math.inf) > step:
            dropped += 1
        else:
            kept.append(line)
    _atomic_write_text(path, "".join(kept))
    return dropped


def _complete_lines(path: Path) -> list[str]:
    """Newline-terminated lines of `path`, each with its newline; a trailing fragment is dropped."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return text[:text.rfind("\n") + 1].splitlines(keepends=True)


def _has_torn_tail(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


# ---------------------------------------------------------------- end-of-run summary


def summary_table(summary: dict[str, float], title: str) -> str:
    """A short aligned `name  value` table for the console (None/NaN shown as 'n/a')."""
    rows = [(name, _fmt(value)) for name, value in summary.items()]
    name_w = max([len(n) for n, _ in rows] + [4])
    value_w = max([len(v) for _, v in rows] + [5])
    rule = "-" * (name_w + 2 + value_w)
    lines = [title, rule] + [f"{n:<{name_w}}  {v:>{value_w}}" for n, v in rows] + [rule]
    return "\n".join(lines)


def read_summary(path: str | os.PathLike) -> dict:
    """The content of a JSON summary file ({} when it does not exist yet)."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def drop_summary_stage(path: str | os.PathLike, stage: str) -> bool:
    """Remove the `stage` entry of a JSON summary file (atomic); False when it had none."""
    summary = read_summary(path)
    if summary.pop(stage, None) is None:
        return False
    _atomic_write_text(Path(path), json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return True


def write_summary(path: str | os.PathLike, stage: str, values: dict) -> dict:
    """Merge `values` into the `stage` entry of a JSON summary file and return the whole summary.

    Other stages' entries (and this stage's other keys) are kept, so each stage of a pipeline can
    add its numbers: {"rm": {"eval_accuracy": 0.91}, "ppo": {...}}. NaN/inf are stored as null.
    Atomic (temp file + os.replace); not safe against two processes writing at once.
    """
    path = Path(path)
    summary = read_summary(path)
    summary.setdefault(stage, {}).update(_json_safe(values))
    _atomic_write_text(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


# ---------------------------------------------------------------- helpers


def _atomic_write_text(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a partial write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _to_number(name: str, value: Any) -> int | float:
    """Python int/float from a number, 0-d tensor or numpy scalar; ints stay ints (counts)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}") from exc


def _json_safe(value: Any) -> Any:
    """Copy of `value` that json.dumps(allow_nan=False) accepts: non-finite floats become None."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: Any) -> str:
    """Compact text for a value: ints as-is, other numbers to 4 significant digits, None/NaN 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, int, str)):
        return str(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "n/a" if math.isnan(value) else f"{value:.4g}"
