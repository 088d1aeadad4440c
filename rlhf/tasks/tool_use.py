"""The tool-use task: sums too long to do "in the head" for a tiny model, with a calculator to call.

Prompts are `terms` numbers of `digits` digits joined by `+` (`23+58+17+44=`); the reference is the sum.
Played as episodes of the `calculator` environment (rlhf/envs/calculator.py): the policy calls
`(23+58+17+44)`, reads `=142 `, answers `142`. The SFT demos are such transcripts — except that a
fraction `sft_direct_prob` of them answer at once, as a demonstrator who adds in the head would: the SFT
policy then answers directly about that often, mostly wrong, and RL, rewarded by the environment for
right answers only, has to learn when the tool pays. Train and eval prompts are disjoint.

`reward(response, reference)` scores a single response as the final answer (1 if it is the right
integer), for use as a plain verifier; the multi-turn runs take their reward from the environment.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlhf.tasks.arithmetic import parse_answer
from rlhf.tasks.registry import register_task, task_config, write_jsonl, write_manifest

EOS_MARK = "<eos>"  # the end of a policy turn inside an SFT transcript (the tokenizer's EOS token)


@dataclass(frozen=True)
class ToolUseConfig:
    terms: int = 4
    digits: int = 2
    num_train_prompts: int = 4000
    num_eval_prompts: int = 256
    num_sft: int | None = None  # demos drawn from the train prompts; None = one per train prompt
    sft_direct_prob: float = 0.5  # P(a demo answers without the calculator)
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.terms < 2:
            problems.append(f"terms must be >= 2, got {self.terms}")
        if not 1 <= self.digits <= 6:
            problems.append(f"digits must be in [1, 6], got {self.digits}")
        if not 0.0 <= self.sft_direct_prob <= 1.0:
            problems.append(f"sft_direct_prob must be in [0, 1], got {self.sft_direct_prob}")
        for name in ("num_train_prompts", "num_eval_prompts"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_sft is not None and self.num_sft < 1:
            problems.append(f"num_sft must be >= 1 or None, got {self.num_sft}")
        if problems:
            raise ValueError("ToolUseConfig: " + "; ".join(problems))


@register_task("tool_use")
class ToolUseTask:
    name = "tool_use"

    def __init__(self, config: ToolUseConfig | None = None, **overrides: Any):
        self.config = task_config(ToolUseConfig, "tool_use", config, overrides)
        c = self.config
        rng = random.Random(f"tool_use/{c.seed}/prompts")
        lo, hi = 10 ** (c.digits - 1) if c.digits > 1 else 0, 10 ** c.digits - 1
        seen: set[tuple[int, ...]] = set()
        problems: list[tuple[int, ...]] = []
        while len(problems) < c.num_train_prompts + c.num_eval_prompts:
            terms = tuple(rng.randint(lo, hi) for _ in range(c.terms))
            if terms not in seen:
                seen.add(terms)
                problems.append(terms)
        self.eval_problems, self.train_problems = problems[:c.num_eval_prompts], problems[c.num_eval_prompts:]

    @staticmethod
    def prompt(terms: tuple[int, ...]) -> str:
        return "+".join(map(str, terms)) + "="

    def reward(self, response: str, reference: Any) -> float:
        return float(parse_answer(response) == int(str(reference).strip()))

    def transcript(self, terms: tuple[int, ...], direct: bool) -> str:
        """A demo response: the answer at once, or the call, the calculator's reply and the answer."""
        total = str(sum(terms))
        if direct:
            return total
        expression = "+".join(map(str, terms))
        return f"({expression}){EOS_MARK}={total} {total}"

    def sft_rows(self) -> list[dict[str, Any]]:
        """{"prompt", "response" (the transcript as one text), "messages" (the same as turns: the call and
        the answer are the assistant's, the calculator's reply a tool turn), "answer", "uses_tool"}. The SFT
        stage reads "messages" (with `sft.data.train_on: assistant`: the calculator's reply is context, as
        in the RL episodes, not a target)."""
        c, rng = self.config, random.Random(f"tool_use/{self.config.seed}/sft")
        problems = self.train_problems if c.num_sft is None else [rng.choice(self.train_problems) for _ in range(c.num_sft)]
        rows = []
        for terms in problems:
            direct = rng.random() < c.sft_direct_prob
            rows.append({"prompt": self.prompt(terms), "response": self.transcript(terms, direct),
                         "messages": self.turns(terms, direct), "answer": str(sum(terms)), "uses_tool": not direct})
        return rows

    def turns(self, terms: tuple[int, ...], direct: bool) -> list[dict[str, str]]:
        """The demo as chat turns; rendered by the tiny chat template (contents, EOS after each assistant
        turn) it is exactly `prompt + transcript + EOS`."""
        total = str(sum(terms))
        user = {"role": "user", "content": self.prompt(terms)}
        if direct:
            return [user, {"role": "assistant", "content": total}]
        return [user, {"role": "assistant", "content": f"({'+'.join(map(str, terms))})"},
                {"role": "tool", "content": f"={total} "}, {"role": "assistant", "content": total}]

    def write_files(self, out_dir: str | Path) -> dict[str, Path]:
        """train_prompts / eval_prompts ({"prompt", "answer"}), sft ({"prompt", "response", ...}), manifest.json."""
        out = Path(out_dir)
        rows = lambda problems: [{"prompt": self.prompt(t), "answer": str(sum(t))} for t in problems]  # noqa: E731
        sft = self.sft_rows()
        paths = {"train_prompts": write_jsonl(out / "train_prompts.jsonl", rows(self.train_problems)),
                 "eval_prompts": write_jsonl(out / "eval_prompts.jsonl", rows(self.eval_problems)),
                 "sft": write_jsonl(out / "sft.jsonl", sft)}
        manifest = {"task": self.name, "config": asdict(self.config),
                    "files": {k: p.name for k, p in paths.items()},
                    "sft_tool_fraction": sum(r["uses_tool"] for r in sft) / len(sft)}
        paths["manifest"] = write_manifest(out, manifest)
        return paths
