"""What a stage promises: bounds on the numbers it writes to summary.json, checked when it ends.

A recipe states, per stage, what a healthy run of it reaches (`rlhf.trainers.expectations` checks them
at the end of the stage, reports each one in summary.json and the console, and — with
`strict_expectations=true` — stops the run with exit status 3 when one is not met):

    rm:
      expectations:
        eval_accuracy: {at_least: 0.90, note: "held-out pairwise accuracy (DESIGN.md §7)"}
    ppo:
      expectations:
        gold_reward_gain: {at_least: 0.15}

Keys are the stage's summary.json keys (e.g. `sft.gold_accuracy`, `rm.eval_accuracy`,
`ppo.gold_reward_gain`). A recipe's bounds can be changed from the command line
(`rm.expectations.eval_accuracy.at_least=0.85`); new entries go in a recipe file (Hydra cannot append a
typed entry from the command line).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from rlhf.config.algorithm import invalid


@dataclass
class Expectation:
    """Bounds on one summary value; at least one bound is required, each a finite number."""

    at_least: float | None = None  # the value must be >= this
    at_most: float | None = None  # the value must be <= this
    note: str = ""  # why the bound is what it is (shown when the check fails)

    def __post_init__(self) -> None:
        if self.at_least is None and self.at_most is None:
            invalid("expectation", "at_least/at_most", None, "at least one bound (a number)")
        for name in ("at_least", "at_most"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                invalid("expectation", name, value, "a finite number or null")
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            invalid("expectation", "at_least", self.at_least, f"<= at_most ({self.at_most})")

    def describe(self) -> str:
        """The bound as text: '>= 0.9', '<= 0.2' or 'in [0.1, 0.2]'."""
        if self.at_most is None:
            return f">= {self.at_least:g}"
        if self.at_least is None:
            return f"<= {self.at_most:g}"
        return f"in [{self.at_least:g}, {self.at_most:g}]"

    def holds(self, value: float) -> bool:
        return ((self.at_least is None or value >= self.at_least)
                and (self.at_most is None or value <= self.at_most))
