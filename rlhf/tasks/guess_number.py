"""Prompts for the guess-the-number game (the `guess_number` environment, rlhf/envs/guess_number.py).

Each prompt names the range, `Guess my number (1-16):`, and its reference is the secret. The SFT demos
are games played by bisection (`8` → `>` → `12` → `<` → `10` → `>` → `11`), written as transcripts with
the policy's turns ended by `<eos>` and the environment's answers in between — or, with probability
`sft_random_prob`, by guessing at random among the numbers still possible, which takes more turns: RL,
rewarded more for fewer turns, has a better strategy to find. Train and eval secrets are drawn
independently; a prompt differs only by its secret, so the policy must play, not recall.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlhf.tasks.registry import register_task, task_config, write_jsonl, write_manifest


@dataclass(frozen=True)
class GuessNumberConfig:
    low: int = 1
    high: int = 16
    num_train_prompts: int = 2000
    num_eval_prompts: int = 128
    sft_random_prob: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.high <= self.low:
            problems.append(f"high must be > low, got [{self.low}, {self.high}]")
        if not 0.0 <= self.sft_random_prob <= 1.0:
            problems.append(f"sft_random_prob must be in [0, 1], got {self.sft_random_prob}")
        for name in ("num_train_prompts", "num_eval_prompts"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise ValueError("GuessNumberConfig: " + "; ".join(problems))


@register_task("guess_number")
class GuessNumberTask:
    name = "guess_number"

    def __init__(self, config: GuessNumberConfig | None = None, **overrides: Any):
        self.config = c = task_config(GuessNumberConfig, "guess_number", config, overrides)
        rng = random.Random(f"guess_number/{c.seed}/secrets")
        self.train_secrets = [rng.randint(c.low, c.high) for _ in range(c.num_train_prompts)]
        self.eval_secrets = [rng.randint(c.low, c.high) for _ in range(c.num_eval_prompts)]

    @property
    def prompt(self) -> str:
        return f"Guess my number ({self.config.low}-{self.config.high}):"

    def reward(self, response: str, reference: Any) -> float:
        """As a one-shot verifier: 1 if the response is the secret itself."""
        return float(response.strip() == str(reference).strip())

    def transcript(self, secret: int, rng: random.Random, bisect: bool) -> str:
        low, high, parts = self.config.low, self.config.high, []
        while True:
            guess = (low + high) // 2 if bisect else rng.randint(low, high)
            parts.append(f"{guess}<eos>")
            if guess == secret:
                return "".join(parts)[: -len("<eos>")]  # the loader ends the response with EOS
            if secret > guess:
                parts.append(">")
                low = guess + 1
            else:
                parts.append("<")
                high = guess - 1

    def write_files(self, out_dir: str | Path) -> dict[str, Path]:
        out, c = Path(out_dir), self.config
        rng = random.Random(f"guess_number/{c.seed}/sft")
        sft = []
        for secret in self.train_secrets:
            bisect = rng.random() >= c.sft_random_prob
            sft.append({"prompt": self.prompt, "response": self.transcript(secret, rng, bisect),
                        "answer": str(secret), "strategy": "bisect" if bisect else "random"})
        rows = lambda secrets: [{"prompt": self.prompt, "answer": str(s)} for s in secrets]  # noqa: E731
        paths = {"train_prompts": write_jsonl(out / "train_prompts.jsonl", rows(self.train_secrets)),
                 "eval_prompts": write_jsonl(out / "eval_prompts.jsonl", rows(self.eval_secrets)),
                 "sft": write_jsonl(out / "sft.jsonl", sft)}
        manifest = {"task": self.name, "config": asdict(c), "files": {k: p.name for k, p in paths.items()}}
        paths["manifest"] = write_manifest(out, manifest)
        return paths
