"""Configs of the supervised stages: SFT (next-token loss on responses), reward-model training
(Bradley–Terry on preference pairs) and DPO (preference optimisation of the policy itself). Each trains
one role — a worker group of DeepSpeed ranks — so they share `SupervisedTrainerConfig` for the run itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.config.algorithm import invalid
from rlhf.config.engine import EngineConfig
from rlhf.config.expectations import Expectation
from rlhf.config.model import ModelConfig
from rlhf.config.placement import RolePlacement

OVERLONG_POLICIES = ("error", "truncate", "drop")


@dataclass
class SupervisedDataConfig:
    """Training and held-out data (hub name, or local json/jsonl/parquet/csv file or directory)."""

    train: str = ""  # training data source (required)
    eval: str | None = None  # held-out data; null = no evaluation
    train_split: str = "train"
    eval_split: str = "train"
    prompt_key: str = "prompt"
    response_key: str = "response"  # SFT: the target response
    messages_key: str = "messages"  # SFT: chat rows (the last message is an assistant turn)
    # SFT chat rows: "last" = loss on the last assistant turn only; "assistant" = on every assistant turn
    # (multi-turn demonstrations: user and tool turns are context, never trained on)
    train_on: str = "last"
    chosen_key: str = "chosen"  # RM: preferred response
    rejected_key: str = "rejected"  # RM: dispreferred response
    tag_key: str | None = "negative_type"  # RM: optional per-pair tag; eval accuracy is reported per tag
    # The tokenizer's chat template: null = for chat-message rows only; true = plain prompt/response rows
    # too (the prompt as one user message); false = never. A gold evaluation renders its prompts alike.
    use_chat_template: bool | None = None
    max_len: int = 512  # tokens of prompt + response; longer rows follow `overlong`
    overlong: str = "truncate"  # one of OVERLONG_POLICIES
    max_eval_rows: int = 2000  # evaluate on at most this many held-out rows

    def __post_init__(self) -> None:
        if self.train_on not in ("last", "assistant"):
            invalid("data", "train_on", self.train_on, "'last' or 'assistant'")
        if self.overlong not in OVERLONG_POLICIES:
            invalid("data", "overlong", self.overlong, f"one of {list(OVERLONG_POLICIES)}")
        if self.max_eval_rows < 1:
            invalid("data", "max_eval_rows", self.max_eval_rows, ">= 1")
        if self.max_len < 2:
            invalid("data", "max_len", self.max_len, ">= 2")


@dataclass
class SupervisedTrainerConfig:
    """Steps, batches, evaluation, checkpoints and logging of a supervised stage."""

    total_steps: int = 1000  # optimizer steps
    batch_size: int = 64  # rows (SFT) or pairs (RM) per optimizer step, over all ranks
    micro_batch_size: int = 16  # rows or pairs per forward/backward per rank
    seed: int = 0
    eval_every: int = 200  # evaluate every N steps (and at the end); 0 = only at the end
    save_every: int = 200  # checkpoint every K steps (and at the end); 0 = only at the end
    keep_last: int = 2
    call_timeout_s: float = 1800.0
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "rlhf"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("total_steps", "batch_size", "micro_batch_size", "keep_last"):
            if getattr(self, name) < 1:
                invalid("trainer", name, getattr(self, name), "an int >= 1")
        for name in ("eval_every", "save_every"):
            if getattr(self, name) < 0:
                invalid("trainer", name, getattr(self, name), "an int >= 0 (0 = only at the end)")
        if not self.call_timeout_s > 0:
            invalid("trainer", "call_timeout_s", self.call_timeout_s, "a number of seconds > 0")

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each rank; errors when the batch does not split evenly."""
        if self.batch_size % (self.micro_batch_size * world_size):
            invalid("trainer", "batch_size", self.batch_size,
                    f"divisible by micro_batch_size × data-parallel size ({self.micro_batch_size} × {world_size})")
        return self.batch_size // (self.micro_batch_size * world_size)


@dataclass
class GoldEvalConfig:
    """Greedy answers of the trained model on held-out prompts, scored by a task's verifier.

    Gives the SFT stage its own measure of success (summary.json `sft.gold_accuracy`): a policy that
    did not learn the task is seen before a reward model and PPO are built on it.
    """

    prompts: str | None = None  # prompt dataset with a reference column (hub name or local file); null = off
    split: str = "train"
    prompt_key: str = "prompt"
    reference_key: str = "answer"  # the gold answer the verifier compares with
    max_prompt_len: int = 256  # prompts longer than this are an error
    max_prompts: int = 256  # evaluate on at most this many prompts; >= 1
    max_new_tokens: int = 32  # response length cap; >= 1
    task: str | None = None  # the verifier's task (rlhf.tasks, e.g. "arithmetic"); required with `prompts`
    task_kwargs: dict = field(default_factory=dict)  # the task's constructor arguments
    # Also measure the sampled accuracy (gold_accuracy_sampled) at this temperature, over
    # samples_per_prompt seeded samples per prompt; null = greedy only.
    sample_temperature: float | None = None
    samples_per_prompt: int = 1

    def __post_init__(self) -> None:
        if self.sample_temperature is not None and not self.sample_temperature > 0:
            invalid("gold_eval", "sample_temperature", self.sample_temperature, "> 0, or null for greedy only")
        for name in ("max_prompt_len", "max_prompts", "max_new_tokens", "samples_per_prompt"):
            if getattr(self, name) < 1:
                invalid("gold_eval", name, getattr(self, name), "an int >= 1")
        if self.prompts and not self.task:
            invalid("gold_eval", "task", self.task, "a task name (its verifier scores the answers) when "
                    f"gold_eval.prompts is set (got prompts={self.prompts!r})")


@dataclass
class SFTConfig:
    """Supervised fine-tuning: loss only on response tokens."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: SupervisedDataConfig = field(default_factory=SupervisedDataConfig)
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(lr=1e-5))
    placement: RolePlacement = field(default_factory=RolePlacement)
    use_gpu: bool = True
    trainer: SupervisedTrainerConfig = field(default_factory=SupervisedTrainerConfig)
    gold_eval: GoldEvalConfig = field(default_factory=GoldEvalConfig)  # gold accuracy at the end of the stage
    # Bounds on this stage's summary.json values, checked when it ends (rlhf/config/expectations.py).
    expectations: dict[str, Expectation] = field(default_factory=dict)

    def validate(self) -> None:
        _require_paths(self.model, self.data)
        self.placement.validate("placement")
        self.trainer.grad_accum_steps(self.placement.world_size)


@dataclass
class RMConfig:
    """Reward-model training with the pairwise (Bradley–Terry) loss."""

    model: ModelConfig = field(default_factory=ModelConfig)  # a causal-LM or reward-model dir
    data: SupervisedDataConfig = field(default_factory=SupervisedDataConfig)
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(lr=1e-5))
    placement: RolePlacement = field(default_factory=RolePlacement)
    use_gpu: bool = True
    trainer: SupervisedTrainerConfig = field(default_factory=SupervisedTrainerConfig)
    margin: float | None = None  # demand chosen − rejected ≥ margin (a constant); null = plain BT loss
    calibration_bins: int = 10  # bins of the expected calibration error of σ(margin)
    # Bounds on this stage's summary.json values, checked when it ends (rlhf/config/expectations.py).
    expectations: dict[str, Expectation] = field(default_factory=dict)

    def validate(self) -> None:
        _require_paths(self.model, self.data)
        if self.calibration_bins < 1:
            invalid("rm", "calibration_bins", self.calibration_bins, "an int >= 1")
        self.placement.validate("placement")
        self.trainer.grad_accum_steps(self.placement.world_size)


DPO_LOSS_TYPES = ("sigmoid", "ipo")  # rlhf/algorithms/preference.py


@dataclass
class DPOConfig:
    """Direct preference optimisation: the policy learns from preference pairs against a frozen
    reference (rlhf/algorithms/preference.py has the losses), with no reward model."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the policy (a causal LM, usually the SFT model)
    reference: ModelConfig = field(default_factory=ModelConfig)  # frozen; null path = model.path
    data: SupervisedDataConfig = field(default_factory=SupervisedDataConfig)  # pairs: prompt/chosen/rejected
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(lr=5e-7))
    placement: RolePlacement = field(default_factory=RolePlacement)
    use_gpu: bool = True
    trainer: SupervisedTrainerConfig = field(default_factory=SupervisedTrainerConfig)
    beta: float = 0.1  # strength of the implicit KL to the reference; > 0
    loss_type: str = "sigmoid"  # one of DPO_LOSS_TYPES
    label_smoothing: float = 0.0  # conservative DPO: the probability a label is flipped; in [0, 0.5)
    gold_eval: GoldEvalConfig = field(default_factory=GoldEvalConfig)  # greedy gold accuracy before and after
    expectations: dict[str, Expectation] = field(default_factory=dict)

    def reference_path(self) -> str:
        return self.reference.path or self.model.path

    def validate(self) -> None:
        _require_paths(self.model, self.data)
        if not self.beta > 0:
            invalid("dpo", "beta", self.beta, "> 0")
        if self.loss_type not in DPO_LOSS_TYPES:
            invalid("dpo", "loss_type", self.loss_type, f"one of {list(DPO_LOSS_TYPES)}")
        if not 0.0 <= self.label_smoothing < 0.5:
            invalid("dpo", "label_smoothing", self.label_smoothing, "in [0, 0.5)")
        self.placement.validate("placement")
        self.trainer.grad_accum_steps(self.placement.world_size)


def _require_paths(model: ModelConfig, data: SupervisedDataConfig) -> None:
    if not model.path:
        invalid("stage", "model.path", model.path, "an HF model directory or hub name")
    if not data.train:
        invalid("stage", "data.train", data.train, "a dataset (hub name or local file)")
