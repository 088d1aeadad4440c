"""Which model a role loads and how: a path (HF directory or hub name) plus loading options.

`ModelOptions` is what `rlhf.models` loaders take; `ModelConfig` adds where the weights and the
tokenizer come from. Both are Hydra structured configs (OmegaConf-compatible types).
"""
from __future__ import annotations

from dataclasses import dataclass, field

MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass
class ModelOptions:
    """How to load a model (any architecture `transformers` supports)."""

    dtype: str = "float32"  # one of MODEL_DTYPES; "auto" keeps the dtype stored in the checkpoint
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    trust_remote_code: bool = False  # allow model code shipped with a hub repo (only for repos you trust)
    lora_rank: int = 0  # 0 = train all weights; > 0 = wrap in a LoRA adapter and train only the adapter
    lora_alpha: float = 16.0  # LoRA scaling numerator (scale = alpha / rank)
    lora_dropout: float = 0.0  # dropout on the LoRA branch input, in [0, 1)
    # peft module names to adapt; ["all-linear"] = every Linear/Conv1D layer except the output head
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])

    def __post_init__(self) -> None:
        if isinstance(self.lora_target_modules, str):  # a single name given directly
            self.lora_target_modules = [self.lora_target_modules]
        if self.dtype not in MODEL_DTYPES:
            raise ValueError(f"ModelOptions.dtype: got {self.dtype!r}, expected one of {list(MODEL_DTYPES)}")
        if self.lora_rank < 0:
            raise ValueError(f"ModelOptions.lora_rank: must be >= 0 (0 disables LoRA), got {self.lora_rank}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"ModelOptions.lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if self.lora_rank and self.lora_alpha <= 0:
            raise ValueError(f"ModelOptions.lora_alpha: must be > 0, got {self.lora_alpha}")

    def peft_target_modules(self) -> str | list[str]:
        """What peft's LoraConfig expects: the string "all-linear", or a list of module names."""
        targets = list(self.lora_target_modules)
        return "all-linear" if targets == ["all-linear"] else targets


@dataclass
class ModelConfig:
    """A role's model: weights, tokenizer and loading options."""

    path: str = ""  # HF directory or hub name of the weights (required where the role is used)
    tokenizer_path: str | None = None  # HF directory or hub name of the tokenizer; null = `path`
    options: ModelOptions = field(default_factory=ModelOptions)
    # Read for the reward model only, when its tokenizer is not the actor's (rlhf/data/retokenize.py): its
    # chat template for chat-message prompts only (null), for plain prompts too (true), or never (false).
    use_chat_template: bool | None = None
