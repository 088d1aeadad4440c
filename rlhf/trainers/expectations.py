"""Each stage checks that it did its job: its summary.json values against its recipe's expectations.

    results = check_expectations(summary["rm"], cfg.rm.expectations)
    print(expectations_table("rm", results))      # one line per check, FAILED ones marked
    failed = [r for r in results if not r.ok]

A value missing from the summary, or NaN, fails its check: a stage that could not measure what it
promised has not shown that it kept the promise. The pipeline (`rlhf.trainers.pipeline`) runs the
check when a stage ends, records it in summary.json (`<stage>.expectations`, `<stage>.expectations_met`)
and, with `strict_expectations=true`, stops the run with `ExpectationsNotMet` (exit status 3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from rlhf.config.expectations import Expectation


@dataclass
class ExpectationResult:
    metric: str  # the summary key
    value: float | None  # what the stage reached (None: not in the summary, or not a number)
    expected: Expectation
    ok: bool

    def to_json(self) -> dict:
        return {"value": self.value, "expected": self.expected.describe(), "ok": self.ok}

    def describe(self) -> str:
        shown = "missing" if self.value is None else f"{self.value:.4g}"
        text = f"{self.metric} = {shown}, expected {self.expected.describe()}"
        return text + (f" ({self.expected.note})" if self.expected.note and not self.ok else "")


class ExpectationsNotMet(RuntimeError):
    """A stage's result is outside its recipe's expectations and the run is strict about them."""

    def __init__(self, stage: str, failed: list[str]) -> None:
        self.stage, self.failed = stage, failed
        super().__init__(f"stage {stage!r} did not meet its recipe's expectations: " + "; ".join(failed)
                         + " (strict_expectations=true stops the run here; its outputs are kept)")


def check_expectations(values: dict, expectations: dict[str, Expectation]) -> list[ExpectationResult]:
    """One result per expectation, in the order given."""
    results = []
    for metric, expected in expectations.items():
        value = _number(values.get(metric))
        results.append(ExpectationResult(metric, value, expected, value is not None and expected.holds(value)))
    return results


def expectations_table(stage: str, results: list[ExpectationResult]) -> str:
    """Console text: a headline saying whether the stage met its expectations, then one line each."""
    failed = sum(not r.ok for r in results)
    head = (f"{stage}: all {len(results)} expectations met" if not failed else
            f"WARNING {stage}: {failed} of {len(results)} expectations NOT met — the stage did not do its job")
    width = max(len(r.metric) for r in results)
    lines = [head] + [f"  {'ok    ' if r.ok else 'FAILED'}  {r.metric:<{width}}  "
                      f"{'missing' if r.value is None else format(r.value, '.4g'):>8}  "
                      f"expected {r.expected.describe()}" + (f"  ({r.expected.note})" if r.expected.note and not r.ok
                                                              else "") for r in results]
    return "\n".join(lines)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def check_stage(stage: str, expectations: dict[str, Expectation], summary_path, strict: bool) -> list[ExpectationResult]:
    """Check a finished stage's summary entry, record the result in summary.json and print it.

    Raises ExpectationsNotMet when a check fails and `strict`; otherwise a failure is a loud warning.
    """
    import logging

    from rlhf.trainers.metrics import read_summary, write_summary

    if not expectations:
        return []
    results = check_expectations(read_summary(summary_path).get(stage, {}), expectations)
    failed = [r for r in results if not r.ok]
    write_summary(summary_path, stage, {"expectations": {r.metric: r.to_json() for r in results},
                                        "expectations_met": not failed})
    print(expectations_table(stage, results))
    if failed:
        logging.getLogger(__name__).warning("stage %s missed its recipe's expectations: %s", stage,
                                            "; ".join(r.describe() for r in failed))
        if strict:
            raise ExpectationsNotMet(stage, [r.describe() for r in failed])
    return results


def refuse_unmet(stage: str, summary: dict) -> None:
    """Raise ExpectationsNotMet when summary.json records that `stage` missed its expectations (a strict
    run that resumes past a stage must not build on a result a strict run would have stopped at)."""
    failed = unmet_expectations(summary).get(stage)
    if failed:
        raise ExpectationsNotMet(stage, [f"{metric} = {r.get('value')}, expected {r.get('expected')} "
                                         "(recorded in summary.json by the run that finished it)"
                                         for metric, r in failed.items()])


def unmet_expectations(summary: dict) -> dict[str, dict]:
    """{stage: {metric: result}} of every failed check recorded in a summary.json's content."""
    return {stage: {m: r for m, r in entry.get("expectations", {}).items() if not r.get("ok")}
            for stage, entry in summary.items()
            if isinstance(entry, dict) and entry.get("expectations_met") is False}
