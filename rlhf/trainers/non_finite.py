"""What a trainer does when numbers stop being finite (issue 16 §4).

Two sources, two policies:
- a PPO step whose rollout numbers (scores, values, log-probs, advantages) are NaN/inf is skipped and
  counted; `trainer.max_consecutive_bad_steps` in a row stop the run (`rlhf/trainers/ppo.py`), and no
  checkpoint is written while the streak lasts, so `keep_last` never prunes a good one for it;
- a NaN/inf loss or gradient inside a worker's update (`NonFiniteLossError`, `NonFiniteGradError`,
  raised on every rank before the optimizer applies it) stops the run at once.
Either way the error names the last checkpoint that was saved from a state with finite numbers only.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


class NonFiniteRunError(FloatingPointError):
    """The run met NaN/inf numbers it cannot train through; the message names the last good checkpoint."""


def is_non_finite_failure(error: BaseException) -> bool:
    """True when a worker call failed because a rank met NaN/inf numbers (its cause is a FloatingPointError)."""
    return isinstance(error, FloatingPointError) or isinstance(error.__cause__, FloatingPointError)


def non_finite_run_error(error: BaseException, stage: str, latest: Path | None) -> NonFiniteRunError:
    """The run-ending error for a worker's non-finite loss or gradient, naming where to resume from."""
    return NonFiniteRunError(f"{stage}: {error}; no update was applied with it. The last good checkpoint is "
                             f"{latest or 'none yet (the stage restarts from its start)'}")


@contextmanager
def stop_named_on_non_finite(stage: str, checkpoints):
    """Turn a worker's NaN/inf loss or gradient error inside the block into NonFiniteRunError naming
    `checkpoints.latest()`; any other error passes through unchanged."""
    try:
        yield
    except Exception as err:
        if is_non_finite_failure(err):
            raise non_finite_run_error(err, stage, checkpoints.latest()) from err
        raise
