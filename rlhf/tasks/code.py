"""The code task: the policy writes a small Python function; the reward is the fraction of unit tests it
passes, run in the sandbox (`rlhf/envs/sandbox.py`), never in the trainer's process.

Prompts are completion-style, HumanEval-like: a comment saying what the function does and its header,

    # return x plus 3
    def f(x):

and the response is the body (`    return x + 3`), or a whole program defining the function (a fenced
```python block is taken out of surrounding text first). The reference stored with each prompt is a
JSON string {"entry_point", "header", "tests": [[args, expected], ...]}: expected values stay with the
grader, the sandboxed program only ever sees the arguments.

Two sources of problems (`CodeConfig.source`):
- "templates" (default): a seeded family of one-line functions (`TEMPLATES`: arithmetic on a number,
  list maps and filters, string repetition, counting) whose constants vary, so a tiny model trained
  on some can be measured on held-out ones; train and eval problems are disjoint.
- "shipped": the hand-written problems in `rlhf/tasks/data/code_problems.jsonl` (classic small
  functions with 3-6 tests each and a reference solution), split by `num_eval_prompts`.

`score_batch` runs a batch of programs concurrently (one process each) and returns, per row, the
score and the sandbox's outcome (`rlhf.envs.sandbox.REASONS`), which the reward role counts in the
metrics (`reward/outcome_<reason>`). A hostile or broken program scores 0 with its reason; it never
stops the step.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rlhf.envs.sandbox import Program, ProgramResult, SandboxLimits, run_programs
from rlhf.tasks.registry import register_task, task_config, write_jsonl, write_manifest

SHIPPED = Path(__file__).with_name("data") / "code_problems.jsonl"
SOURCES = ("templates", "shipped")


@dataclass(frozen=True)
class Template:
    """A family of one-argument functions `f(arg)`: the comment, the body and the true function of K."""

    comment: str  # with {k}
    arg: str  # "x" (an int), "xs" (a list of ints) or "s" (a string)
    body: str  # the reference body's expression, with {k}
    fn: Callable[[int], Callable[[Any], Any]]


TEMPLATES = {
    "add": Template("x plus {k}", "x", "x + {k}", lambda k: lambda x: x + k),
    "sub": Template("x minus {k}", "x", "x - {k}", lambda k: lambda x: x - k),
    "mul": Template("x times {k}", "x", "x * {k}", lambda k: lambda x: x * k),
    "mod": Template("x modulo {k}", "x", "x % {k}", lambda k: lambda x: x % k),
    "map_add": Template("each item of xs plus {k}", "xs", "[v + {k} for v in xs]", lambda k: lambda xs: [v + k for v in xs]),
    "filter_gt": Template("items of xs above {k}", "xs", "[v for v in xs if v > {k}]",
                          lambda k: lambda xs: [v for v in xs if v > k]),
    "sum_mul": Template("sum of xs times {k}", "xs", "sum(xs) * {k}", lambda k: lambda xs: sum(xs) * k),
    "count": Template("count of {k} in xs", "xs", "xs.count({k})", lambda k: lambda xs: xs.count(k)),
    "repeat": Template("s repeated {k} times", "s", "s * {k}", lambda k: lambda s: s * k),
}
NUM_TESTS = 4


@dataclass(frozen=True)
class CodeConfig:
    source: str = "templates"  # one of SOURCES
    templates: tuple[str, ...] = tuple(TEMPLATES)  # the families drawn from ("templates" source)
    max_constant: int = 9  # K in [1, max_constant]
    num_train_prompts: int = 40  # capped by the distinct problems there are
    num_eval_prompts: int = 12
    # SFT demos that carry an off-by-one bug (the constant K+1 in place of K), so the SFT policy is
    # systematically wrong on a fraction of programs that RL, graded by the tests, can fix ("templates" only).
    sft_error_prob: float = 0.0
    sft_demos_per_problem: int = 1  # SFT rows per train problem, each buggy or not on its own draw
    seed: int = 0
    sandbox: dict = field(default_factory=dict)  # SandboxLimits fields (timeout_s, cpu_s, memory_mb, ...)

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(self.templates))
        problems = []
        if self.source not in SOURCES:
            problems.append(f"source must be one of {SOURCES}, got {self.source!r}")
        unknown = sorted(set(self.templates) - set(TEMPLATES))
        if unknown or not self.templates:
            problems.append(f"templates must be a non-empty subset of {sorted(TEMPLATES)}, got {list(self.templates)}")
        if not 0.0 <= self.sft_error_prob <= 1.0:
            problems.append(f"sft_error_prob must be in [0, 1], got {self.sft_error_prob}")
        if self.max_constant < 1:
            problems.append(f"max_constant must be >= 1, got {self.max_constant}")
        for name in ("num_train_prompts", "num_eval_prompts", "sft_demos_per_problem"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise ValueError("CodeConfig: " + "; ".join(problems))
        SandboxLimits(**dict(self.sandbox))  # unknown or invalid limits raise here, at configuration time

    def __hash__(self) -> int:
        return hash(json.dumps(asdict(self), sort_keys=True))


@dataclass(frozen=True)
class CodeProblem:
    name: str
    comment: str  # what the function does (may span lines)
    header: str  # "def f(x):\n"
    entry_point: str
    solution: str  # the reference body (or whole program)
    tests: tuple[tuple[list, Any], ...]
    buggy_solution: str | None = None  # an off-by-one variant for imperfect SFT demos (template problems)

    @property
    def prompt(self) -> str:
        return "".join(f"# {line}\n" for line in self.comment.splitlines()) + self.header

    @property
    def reference(self) -> str:
        return json.dumps({"entry_point": self.entry_point, "header": self.header,
                           "tests": [[list(a), e] for a, e in self.tests]}, sort_keys=True)


def _template_input(arg: str, rng: random.Random) -> Any:
    if arg == "x":
        return rng.randint(-20, 50)
    if arg == "xs":
        return [rng.randint(0, 9) for _ in range(rng.randint(0, 6))]
    return "".join(rng.choice("abcxyz") for _ in range(rng.randint(0, 3)))


def template_problems(config: CodeConfig) -> list[CodeProblem]:
    """Every (template, K) problem of the config, each with NUM_TESTS seeded inputs, in a seeded order."""
    rng = random.Random(f"code/{config.seed}/templates")
    out = []
    for name in config.templates:
        t = TEMPLATES[name]
        for k in range(1, config.max_constant + 1):
            fn = t.fn(k)
            inputs = [_template_input(t.arg, rng) for _ in range(NUM_TESTS)]
            out.append(CodeProblem(f"{name}_{k}", t.comment.format(k=k), f"def f({t.arg}):\n", "f",
                                   f"    return {t.body.format(k=k)}\n", tuple(([v], fn(v)) for v in inputs),
                                   buggy_solution=f"    return {t.body.format(k=k + 1)}\n"))
    rng.shuffle(out)
    return out


def shipped_problems(path: Path = SHIPPED) -> list[CodeProblem]:
    """The hand-written problems; a malformed row raises naming the file, the row and the field."""
    out = []
    for row_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            tests = tuple((list(args), expected) for args, expected in row["tests"])
            out.append(CodeProblem(row["name"], row["comment"], row["header"], row["entry_point"], row["solution"],
                                   tests))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: row {row_no}: expected name, comment, header, entry_point, solution and "
                             f"tests [[args, expected], ...]: {type(exc).__name__}: {exc}") from exc
    return out


_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)
_SPECIAL_TOKEN = re.compile(r"<\|?[a-z_/]+\|?>|</s>")


def program_source(response: str, reference: dict) -> str:
    """The program a response stands for: its fenced block or itself, with the header prepended unless
    the response defines the entry point itself."""
    text = _SPECIAL_TOKEN.sub("", response)
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    if re.search(rf"^\s*def\s+{re.escape(reference['entry_point'])}\s*\(", text, re.MULTILINE):
        return text
    return reference["header"] + text


def parse_reference(reference: Any) -> dict:
    """The reference as a dict; a malformed one is a data bug and raises ValueError naming what is wrong."""
    value = json.loads(reference) if isinstance(reference, str) else reference
    if not isinstance(value, dict) or not {"entry_point", "header", "tests"} <= set(value):
        raise ValueError(f"code reference must be JSON with entry_point, header and tests, got {str(reference)[:200]!r}")
    return value


@register_task("code")
class CodeTask:
    """Code-writing prompts graded by unit tests in the sandbox. `get_task("code", num_eval_prompts=8)`."""

    name = "code"

    def __init__(self, config: CodeConfig | None = None, **overrides: Any):
        self.config = task_config(CodeConfig, "code", config, overrides)
        self.limits = SandboxLimits(**dict(self.config.sandbox))
        problems = template_problems(self.config) if self.config.source == "templates" else shipped_problems()
        n_eval = min(self.config.num_eval_prompts, len(problems) // 2)
        self.eval_problems = problems[:n_eval]
        self.train_problems = problems[n_eval:n_eval + self.config.num_train_prompts]

    # --- the gold verifier ---------------------------------------------------------------------------
    def reward(self, response: str, reference: Any) -> float:
        return self.score_batch([response], [reference])[0][0]

    def score_batch(self, responses: Sequence[str], references: Sequence[Any]) -> list[tuple[float, str]]:
        """(fraction of tests passed, sandbox outcome) per row; the programs run concurrently."""
        refs = [parse_reference(r) for r in references]
        programs = [Program(program_source(text, ref), ref["entry_point"], tuple((list(a), e) for a, e in ref["tests"]))
                    for text, ref in zip(responses, refs)]
        results: list[ProgramResult] = run_programs(programs, self.limits)
        return [(r.score, r.reason) for r in results]

    # --- data ----------------------------------------------------------------------------------------
    @staticmethod
    def prompt_rows(problems: list[CodeProblem]) -> list[dict[str, Any]]:
        return [{"prompt": p.prompt, "answer": p.reference, "name": p.name} for p in problems]

    def sft_rows(self) -> list[dict[str, Any]]:
        """{"prompt", "response", "answer", "error_type"}, `sft_demos_per_problem` rows per train problem: the
        reference solution, or with probability `sft_error_prob` (drawn per row) its off-by-one variant
        (error_type "off_by_one"). Several mixed demos per problem make the SFT policy uncertain where
        the demos disagree, which gives RL's groups samples that differ."""
        rng = random.Random(f"code/{self.config.seed}/sft")
        rows = []
        for p in self.train_problems:
            for _ in range(self.config.sft_demos_per_problem):
                buggy = p.buggy_solution is not None and rng.random() < self.config.sft_error_prob
                rows.append({"prompt": p.prompt, "response": p.buggy_solution if buggy else p.solution,
                             "answer": p.reference, "error_type": "off_by_one" if buggy else None})
        return rows

    def write_files(self, out_dir: str | Path) -> dict[str, Path]:
        """train_prompts / eval_prompts ({"prompt", "answer" (the reference JSON), "name"}), sft ({"prompt",
        "response"}: the reference solutions of the train problems) and manifest.json."""
        out = Path(out_dir)
        paths = {
            "train_prompts": write_jsonl(out / "train_prompts.jsonl", self.prompt_rows(self.train_problems)),
            "eval_prompts": write_jsonl(out / "eval_prompts.jsonl", self.prompt_rows(self.eval_problems)),
            "sft": write_jsonl(out / "sft.jsonl", self.sft_rows()),
        }
        manifest = {"task": self.name, "config": asdict(self.config),
                    "files": {name: path.name for name, path in paths.items()},
                    "problems": {"train": [p.name for p in self.train_problems],
                                 "eval": [p.name for p in self.eval_problems]}}
        paths["manifest"] = write_manifest(out, manifest)
        return paths
