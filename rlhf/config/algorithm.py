"""The RL algorithm's knobs: advantages, KL, policy/value losses and the PPO update schedule.

Plain dataclasses with OmegaConf-compatible types (Hydra structured configs). Every field says what
it does and its constraint; `__post_init__` raises ValueError naming the field, the value and what is
allowed. The names of estimators and losses are the registries of `rlhf.algorithms`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.algorithms import ADVANTAGE_ESTIMATORS as _CRITIC_FREE
from rlhf.algorithms import AGG_MODES, KL_ESTIMATORS, ROLLOUT_CORRECTIONS
from rlhf.algorithms import POLICY_LOSSES as _POLICY_LOSSES

ADVANTAGE_ESTIMATORS = ("gae", *_CRITIC_FREE)
POLICY_LOSSES = tuple(_POLICY_LOSSES)


def invalid(owner: str, name: str, value, allowed: str):
    raise ValueError(f"{owner}.{name}={value!r} is invalid: must be {allowed}")


@dataclass
class PolicyLossConfig:
    """How the actor's loss is formed on each micro-batch."""

    name: str = "ppo"  # one of POLICY_LOSSES
    clip_eps_low: float = 0.2  # PPO/CISPO lower clip: ratio ≥ 1 − clip_eps_low; in [0, 1)
    clip_eps_high: float = 0.2  # PPO/CISPO upper clip: ratio ≤ 1 + clip_eps_high (DAPO raises it); > 0
    dual_clip: float | None = None  # PPO dual clip c > 1 bounding the loss of negative advantages; None = off
    dro_beta: float = 0.05  # DRO quadratic penalty on log-ratio; ≥ 0
    agg: str = "token-mean"  # loss aggregation, one of AGG_MODES
    entropy_coef: float = 0.0  # entropy bonus weight (loss −= coef·entropy); ≥ 0
    kl_loss_coef: float = 0.0  # KL-to-reference as a loss term (GRPO style); 0 = off; ≥ 0
    kl_loss_estimator: str = "k3"  # estimator for the KL loss term, one of KL_ESTIMATORS

    def __post_init__(self) -> None:
        owner = "policy_loss"
        if self.name not in POLICY_LOSSES:
            invalid(owner, "name", self.name, f"one of {list(POLICY_LOSSES)}")
        if not 0 <= self.clip_eps_low < 1:
            invalid(owner, "clip_eps_low", self.clip_eps_low, "in [0, 1)")
        if not self.clip_eps_high > 0:
            invalid(owner, "clip_eps_high", self.clip_eps_high, "> 0")
        if self.dual_clip is not None and not self.dual_clip > 1:
            invalid(owner, "dual_clip", self.dual_clip, "> 1, or null to disable")
        if self.agg not in AGG_MODES:
            invalid(owner, "agg", self.agg, f"one of {list(AGG_MODES)}")
        for name in ("dro_beta", "entropy_coef", "kl_loss_coef"):
            if not getattr(self, name) >= 0:
                invalid(owner, name, getattr(self, name), ">= 0")
        if self.kl_loss_estimator not in KL_ESTIMATORS:
            invalid(owner, "kl_loss_estimator", self.kl_loss_estimator, f"one of {list(KL_ESTIMATORS)}")

    def hyper(self) -> dict[str, float | None]:
        """Keyword hyper-parameters of the registered loss `name`."""
        if self.name in ("ppo",):
            return {"clip_eps_low": self.clip_eps_low, "clip_eps_high": self.clip_eps_high,
                    "dual_clip": self.dual_clip}
        if self.name == "cispo":
            return {"clip_eps_low": self.clip_eps_low, "clip_eps_high": self.clip_eps_high}
        if self.name == "dro":
            return {"beta": self.dro_beta}
        return {}


@dataclass
class ValueLossConfig:
    """How the critic's loss is formed."""

    clip_eps: float | None = 0.2  # value clipping around the rollout's values; null = unclipped; > 0
    agg: str = "token-mean"  # one of AGG_MODES

    def __post_init__(self) -> None:
        if self.clip_eps is not None and not self.clip_eps > 0:
            invalid("value_loss", "clip_eps", self.clip_eps, "> 0, or null to disable")
        if self.agg not in AGG_MODES:
            invalid("value_loss", "agg", self.agg, f"one of {list(AGG_MODES)}")


@dataclass
class UpdateSchedule:
    """How one rollout batch is consumed by the actor and critic updates."""

    epochs: int = 1  # passes over the rollout batch; ≥ 1
    num_minibatches: int = 1  # optimizer updates per epoch; the batch (per rank) must divide evenly; ≥ 1
    micro_batch_size: int = 8  # rows per forward/backward per rank (gradient accumulation fills the rest); ≥ 1
    shuffle: bool = True  # reshuffle rows each epoch (seeded: resumable and identical across restarts)
    # Group each minibatch's rows by length into micro-batches and trim every micro-batch to its own
    # width (rlhf/data/batch.py `trim`): the same update, without computing the batch's padding.
    padding_free: bool = True
    # A token budget instead of a row count per micro-batch: rows sorted by length are packed so that each
    # micro-batch holds at most this many padded tokens (rows × its widest prompt + response), short rows
    # many to a pass, long ones few; ranks are given the same number of passes. The loss normalisers are
    # global, so the update is the same as with micro_batch_size. null = off (micro_batch_size rows).
    max_tokens_per_micro_batch: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "num_minibatches", "micro_batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                invalid("update", name, value, "an int >= 1")
        if self.max_tokens_per_micro_batch is not None and self.max_tokens_per_micro_batch < 1:
            invalid("update", "max_tokens_per_micro_batch", self.max_tokens_per_micro_batch, "an int >= 1, or null")

    def grad_accum_steps(self, rows_per_rank: int) -> int:
        """Micro-batches per optimizer update on one rank; errors if the rows do not split evenly."""
        if rows_per_rank % self.num_minibatches:
            invalid("update", "num_minibatches", self.num_minibatches,
                    f"a divisor of the rows per rank ({rows_per_rank})")
        per_minibatch = rows_per_rank // self.num_minibatches
        if per_minibatch % self.micro_batch_size:
            invalid("update", "micro_batch_size", self.micro_batch_size,
                    f"a divisor of the rows per rank per minibatch ({per_minibatch})")
        return per_minibatch // self.micro_batch_size


@dataclass
class KLConfig:
    """The KL-to-reference penalty in the reward (InstructGPT) and its controller."""

    coef: float = 0.05  # β: initial (adaptive) or fixed KL coefficient; ≥ 0
    estimator: str = "k1"  # per-token estimator in the reward, one of KL_ESTIMATORS
    in_reward: bool = True  # subtract β·KL from token rewards; False = none (use policy_loss.kl_loss_coef)
    adaptive: bool = False  # adapt β toward `target` (Ziegler et al. 2019)
    target: float = 6.0  # adaptive target KL (nats per sequence); > 0
    horizon: int = 10000  # adaptive horizon (samples); > 0

    def __post_init__(self) -> None:
        if not self.coef >= 0:
            invalid("kl", "coef", self.coef, ">= 0")
        if self.estimator not in KL_ESTIMATORS:
            invalid("kl", "estimator", self.estimator, f"one of {list(KL_ESTIMATORS)}")
        if self.adaptive and not (self.target > 0 and self.horizon > 0):
            invalid("kl", "target/horizon", (self.target, self.horizon), "both > 0 when adaptive")


@dataclass
class AdvantageConfig:
    """How advantages are estimated from token rewards (and values, for GAE)."""

    estimator: str = "gae"  # "gae" (needs a critic) or a critic-free estimator of ADVANTAGE_ESTIMATORS
    gamma: float = 1.0  # discount; in [0, 1]
    lam: float = 0.95  # GAE λ; in [0, 1]
    whiten: bool = True  # whiten advantages over the batch's valid tokens (GAE / GRPO-style may differ)
    eps: float = 1e-6  # std epsilon for GRPO; > 0

    def __post_init__(self) -> None:
        if self.estimator not in ADVANTAGE_ESTIMATORS:
            invalid("advantage", "estimator", self.estimator, f"one of {list(ADVANTAGE_ESTIMATORS)}")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                invalid("advantage", name, getattr(self, name), "in [0, 1]")
        if not self.eps > 0:
            invalid("advantage", "eps", self.eps, "> 0")

    @property
    def needs_critic(self) -> bool:
        return self.estimator == "gae"


@dataclass
class RewardShaping:
    """How sequence scores become the reward placed at the last token."""

    normalize_mean: float = 0.0  # subtract from scores (e.g. the reward model's held-out mean)
    normalize_std: float = 1.0  # then divide by this (e.g. its held-out std); > 0
    clip: float | None = None  # then clamp to [−clip, clip]; null = no clamp; > 0
    missing_eos_penalty: float | None = None  # replace the score of a truncated response (no EOS) by this

    def __post_init__(self) -> None:
        if not self.normalize_std > 0:
            invalid("reward", "normalize_std", self.normalize_std, "> 0")
        if self.clip is not None and not self.clip > 0:
            invalid("reward", "clip", self.clip, "> 0, or null")


@dataclass
class RolloutCorrectionConfig:
    """Re-weighting for the sampler/trainer mismatch (rlhf/algorithms/rollout_correction.py has the formula).

    Needs recomputed old log-probs (`ppo.rollout.recompute_logprobs`, on by default with a separate
    rollout engine or bf16): then each token's advantage is scaled by min(π_old/π_rollout, cap)."""

    mode: str = "off"  # one of ROLLOUT_CORRECTIONS: "off", or "tis" (token-level truncated importance sampling)
    cap: float = 2.0  # C, the largest weight; >= 1

    def __post_init__(self) -> None:
        if self.mode not in ROLLOUT_CORRECTIONS:
            invalid("rollout_correction", "mode", self.mode, f"one of {list(ROLLOUT_CORRECTIONS)}")
        if not self.cap >= 1:
            invalid("rollout_correction", "cap", self.cap, ">= 1")


@dataclass
class AlgorithmConfig:
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    reward: RewardShaping = field(default_factory=RewardShaping)
    policy_loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    value_loss: ValueLossConfig = field(default_factory=ValueLossConfig)
    update: UpdateSchedule = field(default_factory=UpdateSchedule)
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)
