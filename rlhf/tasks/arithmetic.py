"""The embedded default task: integer arithmetic with a gold verifier (DESIGN.md §7).

Prompts look like `23+58=`; the response is the answer's digits (`81`), followed by EOS — the JSONL
files store text without special tokens and the `rlhf.data` loaders append the tokenizer's EOS.

What makes the task useful for RLHF, per the plain-torch study in DESIGN.md §7:
- SFT demonstrations err **systematically**: by default (`sft_error_model="carry"`), on prompts with a
  units carry the demo answer is the "forgot the carry" answer (gold−10 for `+`) with probability
  `carry_error_prob`=0.6 — about 27% of 2-digit addition demos — so the SFT policy is reliably wrong
  on a subset that RL can fix. `"uniform"` (each demo wrong with probability `sft_wrong_fraction`, a
  random near miss) and `"none"` are there for comparison.
- Preference pairs put the gold answer (chosen) against a near miss (rejected): a fraction
  `forgot_carry_negative_fraction`=0.5 of negatives are "forgot_carry", the rest one of
  `NEAR_MISS_TYPES` chosen uniformly. Every pair records its `negative_type` so reward-model accuracy
  can be reported per type (±1/±2 are the hard ones). The TRAINING pairs may use another mix
  (`train_negative_weights`); the held-out pairs always use this one.
- Evaluation prompts are disjoint from training prompts.

"Forgot the carry", per operator: `+` gold−10; `-` gold+10 (forgot to borrow); `*` gold−10·c where
c is the units product's carry (gold−10 when there is none). Negatives of type "forgot_carry" use
this offset on every prompt, carry or not, since a policy can drift into it anywhere.

The verifier's parsing rule (`parse_answer`): special-token markup (`<eos>`, `</s>`, `<|...|>`) is
removed and surrounding whitespace stripped; the rest must contain exactly ONE integer — a run of
ASCII digits, optionally preceded directly by a single `-` — and no other digit or `-` anywhere.
Surrounding words are allowed ("the answer is 81" → 81); the integer must be canonical (no leading
zeros, no `-0`). Anything else is malformed → None → reward 0.0: "", "abc", "8 1", "--3", "081",
and an echoed prompt "23+58=81" (more than one integer). The verifier never raises on a response.
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlhf.tasks.registry import register_task, task_config, write_jsonl, write_manifest

OPERATORS = ("+", "-", "*")
SFT_ERROR_MODELS = ("carry", "uniform", "none")
NEAR_MISS_TYPES = ("plus_1", "minus_1", "plus_2", "minus_2", "plus_10", "minus_10", "plus_100", "minus_100",
                   "digit_changed", "truncated", "extra_digit", "reversed")
NEGATIVE_TYPES = ("forgot_carry",) + NEAR_MISS_TYPES
FILES = ("train_prompts", "eval_prompts", "sft", "preferences_train", "preferences_eval")


@dataclass(frozen=True)
class ArithmeticConfig:
    digits: int = 2  # operands drawn from [10^(digits-1), 10^digits - 1] ([0, 9] for 1 digit) unless overridden
    min_operand: int | None = None  # override of the lower operand bound (>= 0)
    max_operand: int | None = None  # override of the upper operand bound (>= min_operand)
    operators: tuple[str, ...] = ("+",)  # subset of OPERATORS, drawn uniformly per prompt
    allow_negative: bool = False  # False: for "-" the larger operand comes first, answers are >= 0
    num_train_prompts: int = 5000  # distinct training prompts
    num_eval_prompts: int = 500  # distinct held-out prompts, disjoint from the training prompts
    num_sft: int | None = None  # SFT demos drawn from the train prompts; None = one per train prompt
    sft_error_model: str = "carry"  # one of SFT_ERROR_MODELS (see the module docstring)
    carry_error_prob: float = 0.6  # "carry": P(demo answer is forgot_carry | prompt has a units carry)
    sft_wrong_fraction: float = 0.27  # "uniform": P(demo answer is a random near miss)
    num_train_pairs: int = 20000  # preference pairs on train prompts (prompts drawn with replacement)
    # Prompts the training pairs are drawn from: None = the train prompts; N >= num_train_prompts = the
    # train prompts plus N - num_train_prompts more distinct prompts, never a held-out one. A reward model
    # that sees each of few prompts many times can memorise their answers instead of checking them.
    num_pair_prompts: int | None = None
    num_eval_pairs: int = 1000  # preference pairs on eval prompts
    forgot_carry_negative_fraction: float = 0.5  # fraction of negatives that are forgot_carry
    # The reward model's TRAINING negatives: {type: weight} over NEGATIVE_TYPES (types left out get 0);
    # None = the held-out mix above. The held-out pairs always use the mix above, so the reported
    # accuracy means the same whatever the training mix.
    train_negative_weights: dict[str, float] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "operators", tuple(self.operators))
        problems = []
        if self.train_negative_weights is not None:
            weights = {str(k): float(v) for k, v in dict(self.train_negative_weights).items()}
            object.__setattr__(self, "train_negative_weights", dict(sorted(weights.items())))
            problems += _weight_problems(weights)
        if self.digits < 1:
            problems.append(f"digits must be >= 1, got {self.digits}")
        if not self.operators or any(op not in OPERATORS for op in self.operators):
            problems.append(f"operators must be a non-empty subset of {OPERATORS}, got {self.operators}")
        lo, hi = self.operand_range
        if lo < 0 or hi < lo:
            problems.append(f"operand range must satisfy 0 <= min_operand <= max_operand, got [{lo}, {hi}]")
        if self.sft_error_model not in SFT_ERROR_MODELS:
            problems.append(f"sft_error_model must be one of {SFT_ERROR_MODELS}, got {self.sft_error_model!r}")
        for name in ("carry_error_prob", "sft_wrong_fraction", "forgot_carry_negative_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("num_train_prompts", "num_eval_prompts", "num_train_pairs", "num_eval_pairs"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_pair_prompts is not None and self.num_pair_prompts < self.num_train_prompts:
            problems.append(f"num_pair_prompts must be >= num_train_prompts ({self.num_train_prompts}) or None, "
                            f"got {self.num_pair_prompts}")
        if self.num_sft is not None and self.num_sft < 1:
            problems.append(f"num_sft must be >= 1 or None, got {self.num_sft}")
        used = max(self.num_train_prompts, self.num_pair_prompts or 0) + self.num_eval_prompts
        if not problems and used > self.num_distinct_prompts():
            problems.append(f"max(num_train_prompts, num_pair_prompts) + num_eval_prompts = {used} "
                            f"exceeds the {self.num_distinct_prompts()} distinct prompts of this operand range")
        if problems:
            raise ValueError("ArithmeticConfig: " + "; ".join(problems))

    def __hash__(self) -> int:  # frozen, but train_negative_weights is a dict
        return hash(tuple((k, tuple(v.items()) if isinstance(v, dict) else v) for k, v in asdict(self).items()))

    @property
    def operand_range(self) -> tuple[int, int]:
        lowest = 0 if self.digits == 1 else 10 ** (self.digits - 1)  # 1-digit operands include 0
        lo = lowest if self.min_operand is None else self.min_operand
        hi = 10 ** self.digits - 1 if self.max_operand is None else self.max_operand
        return lo, hi

    def num_distinct_prompts(self) -> int:
        lo, hi = self.operand_range
        n = hi - lo + 1
        ordered_pairs = n * (n + 1) // 2
        return sum(ordered_pairs if op == "-" and not self.allow_negative else n * n for op in self.operators)


def _weight_problems(weights: dict[str, float]) -> list[str]:
    """What is wrong with a train_negative_weights mapping (empty list when it is valid)."""
    unknown = sorted(set(weights) - set(NEGATIVE_TYPES))
    problems = [f"train_negative_weights has unknown type(s) {unknown}; valid: {list(NEGATIVE_TYPES)}"] if unknown else []
    bad = {k: v for k, v in weights.items() if not (math.isfinite(v) and v >= 0)}
    if bad:
        problems.append(f"train_negative_weights must be finite and >= 0, got {bad}")
    elif not any(v > 0 for v in weights.values()):
        problems.append(f"train_negative_weights needs at least one weight > 0, got {weights}")
    return problems


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}{self.op}{self.b}="

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b if self.op == "-" else self.a * self.b

    @property
    def has_carry(self) -> bool:
        """A units carry (`+`, `*`) or borrow (`-`): the column where "forgot the carry" changes the answer."""
        ua, ub = self.a % 10, self.b % 10
        return ua + ub >= 10 if self.op == "+" else ua < ub if self.op == "-" else ua * ub >= 10

    def forgot_carry(self) -> int:
        """The answer with the units carry forgotten (see the module docstring); never the gold answer."""
        if self.op == "-":
            return self.answer + 10
        carry = (self.a % 10) * (self.b % 10) // 10 if self.op == "*" else 1
        return self.answer - 10 * max(carry, 1)


# --- the verifier --------------------------------------------------------------------------------------

_SPECIAL_TOKEN = re.compile(r"<[^<>\s]*>")
_ONE_INTEGER = re.compile(r"[^\d-]*(-?)([0-9]+)[^\d-]*")
_REFERENCE = re.compile(r"-?[0-9]+")


def parse_answer(response: Any) -> int | None:
    """The integer a response states, or None if it is malformed (rule in the module docstring)."""
    if not isinstance(response, str):
        return None
    match = _ONE_INTEGER.fullmatch(_SPECIAL_TOKEN.sub(" ", response).strip())
    if match is None:
        return None
    sign, digits = match.groups()
    if (len(digits) > 1 and digits[0] == "0") or (sign and digits == "0") or len(digits) > 1000:
        return None
    return int(sign + digits)


def _reference_value(reference: Any) -> int:
    if isinstance(reference, int) and not isinstance(reference, bool):
        return reference
    if isinstance(reference, str) and _REFERENCE.fullmatch(reference.strip()):
        return int(reference.strip())
    raise ValueError(f"arithmetic reference must be an integer or an integer string, got {reference!r}")


def arithmetic_reward(response: str, reference: Any) -> float:
    """1.0 if the response's parsed answer equals the reference exactly, else 0.0 (also when malformed).

    A malformed *response* scores 0.0; a malformed *reference* is a data bug and raises ValueError.
    """
    gold = _reference_value(reference)
    return 1.0 if parse_answer(response) == gold else 0.0


# --- generation ----------------------------------------------------------------------------------------


def near_miss(gold: int, kind: str, rng: random.Random) -> int | None:
    """A wrong answer of type `kind` (one of NEAR_MISS_TYPES), or None if that type does not apply to `gold`."""
    sign, digits = ("-" if gold < 0 else ""), str(abs(gold))
    if kind.startswith(("plus_", "minus_")):
        step = int(kind.split("_")[1])
        value = gold + step if kind.startswith("plus_") else gold - step
    elif kind == "digit_changed":
        i = rng.randrange(len(digits))
        choices = [d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0" and len(digits) > 1)]
        value = int(sign + digits[:i] + rng.choice(choices) + digits[i + 1:])
    elif kind == "truncated":
        value = int(sign + digits[:-1]) if len(digits) > 1 else None
    elif kind == "extra_digit":
        value = int(sign + digits + rng.choice("0123456789")) if gold != 0 else None
    elif kind == "reversed":
        value = int(sign + digits[::-1]) if not digits.endswith("0") else None
    else:
        raise ValueError(f"unknown near-miss type {kind!r}; valid: {NEAR_MISS_TYPES}")
    return None if value is None or value == gold else value


def random_near_miss(gold: int, rng: random.Random) -> tuple[int, str]:
    """(wrong answer, its type), the type uniform over the NEAR_MISS_TYPES that apply to `gold`."""
    while True:  # terminates: plus_1 always applies
        kind = rng.choice(NEAR_MISS_TYPES)
        value = near_miss(gold, kind, rng)
        if value is not None:
            return value, kind


def sample_negative(problem: Problem, rng: random.Random, forgot_carry_fraction: float) -> tuple[int, str]:
    """(rejected answer, negative type): forgot_carry with probability `forgot_carry_fraction`, else a near miss."""
    if rng.random() < forgot_carry_fraction:
        return problem.forgot_carry(), "forgot_carry"
    return random_near_miss(problem.answer, rng)


def sample_weighted_negative(problem: Problem, rng: random.Random, weights: dict[str, float]) -> tuple[int, str]:
    """(rejected answer, negative type), the type drawn by `weights`; a type that does not apply to this
    problem (e.g. "truncated" for a 1-digit answer) is drawn again, at most 1000 times."""
    kinds = [k for k, w in weights.items() if w > 0]
    for _ in range(1000):
        kind = rng.choices(kinds, [weights[k] for k in kinds])[0]
        value = problem.forgot_carry() if kind == "forgot_carry" else near_miss(problem.answer, kind, rng)
        if value is not None:
            return value, kind
    raise ValueError(f"train_negative_weights={weights}: no type with weight > 0 applies to {problem.prompt!r}")


def sample_problems(config: ArithmeticConfig, count: int, rng: random.Random,
                    exclude: set[Problem] | frozenset[Problem] = frozenset()) -> list[Problem]:
    """`count` distinct problems not in `exclude`, drawn uniformly over operator then operands."""
    lo, hi = config.operand_range
    seen: set[Problem] = set()
    out: list[Problem] = []
    while len(out) < count:
        op, a, b = rng.choice(config.operators), rng.randint(lo, hi), rng.randint(lo, hi)
        if op == "-" and not config.allow_negative and a < b:
            a, b = b, a
        problem = Problem(a, op, b)
        if problem not in seen and problem not in exclude:
            seen.add(problem)
            out.append(problem)
    return out


@register_task("arithmetic")
class ArithmeticTask:
    """Arithmetic prompts, SFT demos, preference pairs and the exact-match verifier; all seeded.

    Build with a config or its fields: `ArithmeticTask(digits=2, seed=1)` / `get_task("arithmetic", ...)`.
    Each product has its own random stream derived from `seed`, so e.g. changing the number of pairs
    does not change the prompts.
    """

    name = "arithmetic"

    def __init__(self, config: ArithmeticConfig | None = None, **overrides: Any):
        self.config = task_config(ArithmeticConfig, "arithmetic", config, overrides)
        c = self.config
        self.eval_problems = sample_problems(c, c.num_eval_prompts, self._rng("eval"))
        self.train_problems = sample_problems(c, c.num_train_prompts, self._rng("train"),
                                              exclude=frozenset(self.eval_problems))
        extra = 0 if c.num_pair_prompts is None else c.num_pair_prompts - c.num_train_prompts
        self.pair_problems = self.train_problems + sample_problems(
            c, extra, self._rng("pair_prompts"), exclude=frozenset(self.eval_problems + self.train_problems))

    def _rng(self, stream: str) -> random.Random:
        return random.Random(f"arithmetic/{self.config.seed}/{stream}")  # str seeds are stable across runs

    # --- the gold verifier ---------------------------------------------------------------------------
    def reward(self, response: str, reference: Any) -> float:
        return arithmetic_reward(response, reference)

    # --- data ----------------------------------------------------------------------------------------
    @staticmethod
    def prompt_rows(problems: list[Problem]) -> list[dict[str, Any]]:
        return [{"prompt": p.prompt, "answer": str(p.answer)} for p in problems]

    def sft_rows(self) -> list[dict[str, Any]]:
        """{"prompt", "response", "answer", "error_type"} rows; `error_type` is None for a correct demo."""
        c, rng = self.config, self._rng("sft")
        if c.num_sft is None:
            problems = list(self.train_problems)
        else:
            problems = [rng.choice(self.train_problems) for _ in range(c.num_sft)]
        rows = []
        for p in problems:
            value, error = p.answer, None
            if c.sft_error_model == "carry" and p.has_carry and rng.random() < c.carry_error_prob:
                value, error = p.forgot_carry(), "forgot_carry"
            elif c.sft_error_model == "uniform" and rng.random() < c.sft_wrong_fraction:
                value, error = random_near_miss(p.answer, rng)
            rows.append({"prompt": p.prompt, "response": str(value), "answer": str(p.answer), "error_type": error})
        return rows

    def preference_rows(self, split: str) -> list[dict[str, Any]]:
        """{"prompt", "chosen", "rejected", "negative_type", "answer", "has_carry"} rows of split "train"/"eval"."""
        if split not in ("train", "eval"):
            raise ValueError(f"preference split must be 'train' or 'eval', got {split!r}")
        c, rng = self.config, self._rng(f"preferences_{split}")
        problems = self.pair_problems if split == "train" else self.eval_problems
        rows = []
        for _ in range(c.num_train_pairs if split == "train" else c.num_eval_pairs):
            p = rng.choice(problems)
            if split == "train" and c.train_negative_weights is not None:
                value, kind = sample_weighted_negative(p, rng, c.train_negative_weights)
            else:
                value, kind = sample_negative(p, rng, c.forgot_carry_negative_fraction)
            rows.append({"prompt": p.prompt, "chosen": str(p.answer), "rejected": str(value), "negative_type": kind,
                         "answer": str(p.answer), "has_carry": p.has_carry})
        return rows

    def write_files(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the task's JSONL files (names in FILES) and `manifest.json` to `out_dir`; returns name → path.

        Field names are the `rlhf.data` loaders' defaults: prompts {"prompt", "answer"} (PromptDataset),
        sft {"prompt", "response"} (SFTDataset), preferences {"prompt", "chosen", "rejected",
        "negative_type"} (PreferenceDataset). Same config → byte-identical files.
        """
        out = Path(out_dir)
        sft = self.sft_rows()
        pairs = {split: self.preference_rows(split) for split in ("train", "eval")}
        paths = {
            "train_prompts": write_jsonl(out / "train_prompts.jsonl", self.prompt_rows(self.train_problems)),
            "eval_prompts": write_jsonl(out / "eval_prompts.jsonl", self.prompt_rows(self.eval_problems)),
            "sft": write_jsonl(out / "sft.jsonl", sft),
            "preferences_train": write_jsonl(out / "preferences_train.jsonl", pairs["train"]),
            "preferences_eval": write_jsonl(out / "preferences_eval.jsonl", pairs["eval"]),
        }
        manifest = {
            "task": self.name, "config": asdict(self.config),
            "files": {name: path.name for name, path in paths.items()},
            "sft_wrong_fraction": sum(r["error_type"] is not None for r in sft) / len(sft),
            "sft_error_types": dict(Counter(r["error_type"] for r in sft if r["error_type"] is not None)),
            "negative_types": {split: dict(Counter(r["negative_type"] for r in rows)) for split, rows in pairs.items()},
        }
        paths["manifest"] = write_manifest(out, manifest)
        return paths
