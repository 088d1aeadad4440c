"""GSM8K: grade-school math word problems with a verifiable final answer (Cobbe et al. 2021).

The verifier compares the response's final number with the reference's:
- reference: the text after the last "####" of a GSM8K solution (or a bare number);
- response: the number after its last "####" if it has one, else the LAST number it contains
  (chain-of-thought responses end with their answer); thousands separators, "$" and a trailing "."
  are ignored; numbers compare by value ("18" = "18.0"). A malformed response scores 0, never raises.

`write_files` turns GSM8K rows ({"question", "answer"}: the hub's `openai/gsm8k` "main" config, or a
local json/jsonl copy of it) into the prompt files the PPO loaders read by default
({"prompt": question + instruction, "answer": final number}).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from rlhf.tasks.registry import register_task, write_jsonl

INSTRUCTION = ' Let\'s think step by step and output the final answer after "####".'
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def _to_decimal(text: str) -> Decimal | None:
    cleaned = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def final_number(text: Any) -> Decimal | None:
    """The number after the last "####", else the last number in `text`; None if there is none."""
    if not isinstance(text, str):
        return None
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    numbers = _NUMBER.findall(tail)
    if not numbers:
        return None
    return _to_decimal(numbers[0] if "####" in text else numbers[-1])


def gsm8k_reward(response: str, reference: Any) -> float:
    """1.0 when the response's final number equals the reference's, else 0.0."""
    gold = final_number(str(reference))
    if gold is None:
        raise ValueError(f"gsm8k reference has no number: {reference!r}")
    return 1.0 if final_number(response) == gold else 0.0


@dataclass
class Gsm8kTask:
    """GSM8K prompts and verifier. `source` is a hub name (default) or a local directory holding
    train.jsonl / test.jsonl (or one file used for both splits) with GSM8K's question/answer fields."""

    source: str = "openai/gsm8k"
    hub_config: str = "main"  # the hub dataset's config name
    train_split: str = "train"
    eval_split: str = "test"
    instruction: str = INSTRUCTION  # appended to each question
    name: str = "gsm8k"

    def reward(self, response: str, reference: Any) -> float:
        return gsm8k_reward(response, reference)

    def write_files(self, out_dir: str | Path) -> dict[str, Path]:
        out = Path(out_dir)
        return {kind: write_jsonl(out / f"{kind}.jsonl", self._prompt_rows(split))
                for kind, split in (("train_prompts", self.train_split), ("eval_prompts", self.eval_split))}

    def _prompt_rows(self, split: str) -> list[dict[str, str]]:
        from rlhf.data.sources import load_rows

        local = Path(self.source).expanduser()
        if local.is_dir():
            rows = load_rows(local / f"{split}.jsonl")
        elif local.is_file():
            rows = load_rows(local)
        else:
            rows = load_rows(f"{self.source}:{self.hub_config}" if self.hub_config else self.source, split=split)
        questions, answers = rows.column("question"), rows.column("answer")
        out = []
        for i, (question, answer) in enumerate(zip(questions, answers)):
            number = final_number(answer)
            if not isinstance(question, str) or not question.strip():
                raise rows.error(i, "question", f"expected a non-empty string, got {question!r}")
            if number is None:
                raise rows.error(i, "answer", f"expected a solution ending in '#### <number>', got {answer!r}")
            out.append({"prompt": question + self.instruction, "answer": format(number, "f")})
        return out


register_task("gsm8k", Gsm8kTask)
