"""The root config of one `rlhf` run: which recipe, which of its stages, where outputs go, and the
config of every stage (`sft`, `rm`, `dpo`, `ppo`, `offline`) plus the optional `prepare` step of the embedded default.

    rlhf recipe=quickstart stages=[rm,ppo] run_dir=outputs/q1 ppo.rollout.temperature=0.7

A recipe (`recipes/<name>.yaml`) is a Hydra config whose defaults list starts with this schema
(stored in Hydra's ConfigStore as `rlhf_run`), composes groups from `configs/` and sets
`recipe_stages`. Command-line overrides are merged on top, then `OmegaConf.to_object` builds these
dataclasses, so every `__post_init__` check runs; `RunConfig.validate` adds the run-level checks.
Errors name the field, the value and what is allowed. Nothing here rewrites a user's value.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.config.algorithm import invalid
from rlhf.config.offline import OfflineConfig
from rlhf.config.ppo import PPOConfig
from rlhf.config.supervised import DPOConfig, RMConfig, SFTConfig

STAGES = ("prepare", "sft", "rm", "dpo", "ppo", "offline")  # every stage the pipeline knows, in the only order they can run
TINY_ARCHS = ("llama", "gpt2", "mistral")  # rlhf.models.tiny architectures
# "char": the character-level arithmetic tokenizer (rlhf/models/tiny.py); "code": character-level over
# printable ASCII and the newline (the code task); "mistral": Mistral 7B's real 32,000-token vocabulary
# and instruct chat template (rlhf/models/public_vocab.py, needs mistral-common).
TINY_TOKENIZERS = ("char", "code", "mistral")


@dataclass
class TinyModelSpec:
    """A random-init tiny causal LM (and its tokenizer) built offline into run_dir/base."""

    arch: str = "llama"  # one of TINY_ARCHS
    tokenizer: str = "char"  # one of TINY_TOKENIZERS
    num_layers: int = 2  # decoder layers; >= 1
    hidden_size: int = 128  # width; >= 1 and divisible by num_heads
    num_heads: int = 4  # attention heads; >= 1
    max_positions: int = 256  # context length; >= 1
    seed: int = 0  # seeds the random init
    config_overrides: dict = field(default_factory=dict)  # extra HF config fields (e.g. initializer_range)

    def __post_init__(self) -> None:
        if self.arch not in TINY_ARCHS:
            invalid("prepare.tiny_model", "arch", self.arch, f"one of {list(TINY_ARCHS)}")
        if self.tokenizer not in TINY_TOKENIZERS:
            invalid("prepare.tiny_model", "tokenizer", self.tokenizer, f"one of {list(TINY_TOKENIZERS)}")
        for name in ("num_layers", "hidden_size", "num_heads", "max_positions"):
            if getattr(self, name) < 1:
                invalid("prepare.tiny_model", name, getattr(self, name), "an int >= 1")
        if self.hidden_size % self.num_heads:
            invalid("prepare.tiny_model", "hidden_size", self.hidden_size,
                    f"divisible by num_heads ({self.num_heads})")


@dataclass
class PrepareConfig:
    """The `prepare` stage: inputs the embedded default builds itself, fully offline.

    Idempotent: outputs already in run_dir (written with the same settings) are reused; outputs
    written with different settings are an error, never silently replaced.
    """

    task: str | None = None  # a task of rlhf.tasks (e.g. "arithmetic"): its files go to run_dir/data; null = none
    task_kwargs: dict = field(default_factory=dict)  # the task's constructor arguments (e.g. num_train_prompts)
    tiny_model: TinyModelSpec | None = None  # built into run_dir/base; null = none


@dataclass
class RunConfig:
    """One run of a recipe. Top-level fields are the pipeline's; `sft`, `rm`, `dpo`, `ppo`, `offline` are the stages'."""

    recipe: str = ""  # the recipe name (recipes/<recipe>.yaml); set by the command line
    recipe_stages: list[str] = field(default_factory=list)  # the recipe's stages in order (subset of STAGES, in order)
    stages: list[str] | None = None  # which of recipe_stages to run (in recipe order); null = all
    run_dir: str | None = None  # where everything goes; null = outputs/<recipe>/<YYYYmmdd-HHMMSS>
    resume: bool = False  # skip finished stages, continue the first unfinished one from its last checkpoint
    dry_run: bool = False  # validate, print the placement (and memory) plan, start nothing
    overwrite: bool = False  # allow a fresh (resume=false) stage to discard its previous outputs in run_dir
    # Before PPO, set ppo.algorithm.reward.normalize_mean/std to the reward model's held-out score
    # mean/std (summary.json rm.score_mean / rm.score_std, written by the rm stage). When true, the
    # normalize_mean/std fields must be left at their defaults (0 and 1): one source of truth.
    ppo_reward_norm_from_rm: bool = False
    # The run's seed. Recipes interpolate it (`${seed}`) into every stage's own seed (task data, model
    # init, data order, sampling), so `seed=1` changes all of them at once.
    seed: int = 0
    # torch intra-op threads in every worker process (and this driver); null = what Ray gives each
    # worker (its whole-CPU share, at least 1). >= 1. Note: for the quickstart's small matmuls 1 and 2
    # threads gave bit-identical results; to run another CPU's kernels use the environment instead
    # (MKL_ENABLE_INSTRUCTIONS / ATEN_CPU_CAPABILITY, bench/recipe_matrix.py).
    torch_threads: int | None = None
    # When a stage's result misses its recipe's expectations (`<stage>.expectations`), stop the run
    # with exit status 3 instead of a warning (.ci/run uses it for its quickstart run).
    strict_expectations: bool = False
    # resume=true refuses a configuration that differs from the run's saved config.yaml in fields that
    # break exact continuation (rlhf/trainers/resume_check.py); list here the ones changed on purpose
    # (a field, a parent like "ppo.algorithm", or a glob).
    resume_allow_changes: list[str] = field(default_factory=list)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)

    def __post_init__(self) -> None:
        if self.torch_threads is not None and self.torch_threads < 1:
            invalid("run", "torch_threads", self.torch_threads, "an int >= 1, or null for Ray's default")
        unknown = [s for s in self.recipe_stages if s not in STAGES]
        if unknown or not self.recipe_stages:
            invalid("run", "recipe_stages", self.recipe_stages, f"a non-empty list of stages from {list(STAGES)}")
        if list(self.recipe_stages) != [s for s in STAGES if s in self.recipe_stages]:
            invalid("run", "recipe_stages", self.recipe_stages, f"in pipeline order {list(STAGES)}, no repeats")
        if self.stages is not None:
            wrong = [s for s in self.stages if s not in self.recipe_stages]
            if wrong:
                invalid("run", "stages", self.stages,
                        f"a subset of this recipe's stages {list(self.recipe_stages)} (unknown: {wrong})")
            if not self.stages:
                invalid("run", "stages", self.stages, f"a non-empty subset of {list(self.recipe_stages)}")
            if list(self.stages) != [s for s in self.recipe_stages if s in self.stages]:
                invalid("run", "stages", self.stages,
                        f"in the recipe's order {list(self.recipe_stages)}, no repeats")
        if self.ppo_reward_norm_from_rm:
            shaping = self.ppo.algorithm.reward
            if (shaping.normalize_mean, shaping.normalize_std) != (0.0, 1.0):
                invalid("run", "ppo_reward_norm_from_rm", True,
                        "false when ppo.algorithm.reward.normalize_mean/std are set "
                        f"(got {shaping.normalize_mean}, {shaping.normalize_std}): choose one source")
            if "rm" in self.recipe_stages and not self.rm.data.eval:
                invalid("run", "ppo_reward_norm_from_rm", True,
                        "false unless rm.data.eval is set (the score mean/std come from the held-out pairs)")

    @property
    def selected_stages(self) -> list[str]:
        """The stages this invocation runs, in order."""
        return list(self.stages) if self.stages is not None else list(self.recipe_stages)
