"""Policy, value and reward-model losses, and how per-token losses are aggregated.

Shape key: B rows, T response tokens. Every loss takes its normalizer explicitly (`num_tokens`,
`num_seqs`): when a batch is split into micro-batches or data-parallel shards, passing the GLOBAL
counts makes the per-shard losses (and gradients) sum to exactly the full-batch loss — the
normalizer must not depend on how the batch was cut.

Policy losses share one signature and live in `POLICY_LOSSES`:
    fn(logprobs, old_logprobs, advantages, mask, *, agg, num_tokens, num_seqs, **hyper) -> (loss, metrics)
Metrics are detached 0-dim tensors (masked means over this shard's valid tokens).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf.algorithms.masked import masked_mean, masked_sum
from rlhf.algorithms.registry import Registry

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
POLICY_LOSSES = Registry("policy loss")


def aggregate_loss(loss: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean",
                   num_tokens: int | float | torch.Tensor | None = None,
                   num_seqs: int | float | torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a per-token loss `[B, T]` to a scalar.

    token-mean: Σ loss / num_tokens (default: this batch's valid tokens) — every token weighs the same.
    seq-mean-token-mean: Σ_rows mean_t(loss) / num_seqs — every sequence weighs the same.
    seq-mean-token-sum: Σ_rows Σ_t loss / num_seqs — longer sequences weigh more (Dr. GRPO's choice).
    `num_seqs` defaults to the number of rows with at least one valid token.
    """
    if agg == "token-mean":
        denominator = mask.to(loss.dtype).sum() if num_tokens is None else num_tokens
        return masked_sum(loss, mask) / _positive(denominator)
    if agg in ("seq-mean-token-mean", "seq-mean-token-sum"):
        row_loss_B = masked_sum(loss, mask, dim=-1)
        if agg == "seq-mean-token-mean":
            row_loss_B = row_loss_B / mask.to(loss.dtype).sum(-1).clamp(min=1)
        denominator = (mask.sum(-1) > 0).sum() if num_seqs is None else num_seqs
        return row_loss_B.sum() / _positive(denominator)
    raise ValueError(f"unknown loss aggregation {agg!r}; valid names: {', '.join(AGG_MODES)}")


def _positive(count):
    """The normalizer as given, except that 0 becomes 1: an all-padding batch gives loss 0, not NaN."""
    if isinstance(count, torch.Tensor):
        return torch.where(count == 0, torch.ones_like(count), count)
    return count if count != 0 else 1


def _ratio_metrics(log_ratio: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Diagnostics of the importance ratio r = exp(logp − logp_old) over valid tokens."""
    log_ratio = log_ratio.detach()
    ratio = log_ratio.exp()
    valid = mask.bool()
    has_valid = bool(valid.any())
    return {
        "approx_kl": masked_mean(0.5 * log_ratio.square(), mask),
        "approx_kl_k3": masked_mean(torch.expm1(-log_ratio) + log_ratio, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_max": ratio[valid].max() if has_valid else ratio.new_zeros(()),
        "ratio_min": ratio[valid].min() if has_valid else ratio.new_zeros(()),
    }


def _frac(condition: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_mean(condition.float(), mask).detach()


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
                    dual_clip: float | None = None, agg: str = "token-mean", num_tokens=None,
                    num_seqs=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip (Schulman et al. 2017) with asymmetric clip range (DAPO) and optional dual clip (Ye et al. 2020).

    Per token: l = max(−A·r, −A·clip(r, 1 − ε_low, 1 + ε_high)), r = exp(logp − logp_old).
    Dual clip c > 1 bounds the loss of negative advantages: for A < 0, l = min(l, −A·c), so a huge
    ratio on a bad token cannot blow up the update. Returns (loss, metrics) with clip_frac,
    approx_kl (½·mean(log r²)), approx_kl_k3, ratio stats and, with dual clip, dual_clip_frac.
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    per_token = torch.maximum(unclipped, clipped)
    metrics = {"clip_frac": _frac(clipped > unclipped, mask), **_ratio_metrics(log_ratio, mask)}
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        bound = -advantages * dual_clip
        negative = advantages < 0
        metrics["dual_clip_frac"] = _frac(negative & (bound < per_token), mask)
        per_token = torch.where(negative, torch.minimum(per_token, bound), per_token)
    return aggregate_loss(per_token, mask, agg, num_tokens, num_seqs), metrics


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_eps: float | None = 0.2, agg: str = "token-mean", num_tokens=None,
               num_seqs=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: per token ½·max((V − R)², (clip(V, V_old ± ε) − R)²); `clip_eps=None` → ½(V − R)².

    Clipping keeps the critic near the values it had when the rollout was scored, as PPO's policy
    clip does for the actor. Returns (loss, {"value_clip_frac"}).
    """
    unclipped = (values - returns).square()
    if clip_eps is None:
        per_token, clip_frac = unclipped, torch.zeros(())
    else:
        clipped_values = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        clipped = (clipped_values - returns).square()
        per_token, clip_frac = torch.maximum(unclipped, clipped), _frac(clipped > unclipped, mask)
    return 0.5 * aggregate_loss(per_token, mask, agg, num_tokens, num_seqs), {"value_clip_frac": clip_frac}


@POLICY_LOSSES.register("ppo")
def _ppo(logprobs, old_logprobs, advantages, mask, *, agg="token-mean", num_tokens=None, num_seqs=None,
         clip_eps_low=0.2, clip_eps_high=0.2, dual_clip=None):
    return ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps_low, clip_eps_high,
                           dual_clip, agg, num_tokens, num_seqs)


@POLICY_LOSSES.register("importance_sampling")
def importance_sampling_loss(logprobs, old_logprobs, advantages, mask, *, agg="token-mean",
                             num_tokens=None, num_seqs=None):
    """Importance-weighted REINFORCE: l = −r·A. On-policy (r = 1) its gradient is −A·∇logp."""
    log_ratio = logprobs - old_logprobs
    per_token = -advantages * log_ratio.exp()
    return aggregate_loss(per_token, mask, agg, num_tokens, num_seqs), _ratio_metrics(log_ratio, mask)


@POLICY_LOSSES.register("cispo")
def cispo_loss(logprobs, old_logprobs, advantages, mask, *, agg="token-mean", num_tokens=None,
               num_seqs=None, clip_eps_low=0.2, clip_eps_high=0.2):
    """CISPO (MiniMax-M1, 2025): l = −sg(clip(r, 1 − ε_low, 1 + ε_high))·A·logp.

    The clipped ratio is a detached weight, so unlike PPO no token's gradient is zeroed by clipping.
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    weight = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high).detach()
    per_token = -weight * advantages * logprobs
    metrics = {"clip_frac": _frac(weight != ratio.detach(), mask), **_ratio_metrics(log_ratio, mask)}
    return aggregate_loss(per_token, mask, agg, num_tokens, num_seqs), metrics


@POLICY_LOSSES.register("dro")
def dro_loss(logprobs, old_logprobs, advantages, mask, *, agg="token-mean", num_tokens=None,
             num_seqs=None, beta=0.05):
    """Direct reward optimization (offline-friendly): l = −(logp·A − ½·β·(logp − logp_old)²)."""
    log_ratio = logprobs - old_logprobs
    per_token = -(logprobs * advantages - 0.5 * beta * log_ratio.square())
    return aggregate_loss(per_token, mask, agg, num_tokens, num_seqs), _ratio_metrics(log_ratio, mask)


def get_policy_loss(name: str):
    """The policy loss registered as `name` (error lists the valid names)."""
    return POLICY_LOSSES[name]


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, coef: float, agg: str = "token-mean",
                  num_tokens=None, num_seqs=None) -> torch.Tensor:
    """Loss term −coef·agg(entropy `[B, T]`): adding it to the loss rewards exploration."""
    return -coef * aggregate_loss(entropy, mask, agg, num_tokens, num_seqs)


def pairwise_reward_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                         margin: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bradley–Terry reward-model loss on scores `[B]`: mean(−log σ(c − r − m)), and accuracy mean(c > r).

    `margin` (scalar or `[B]`, e.g. from preference strength as in Llama 2) demands a larger gap.
    `logsigmoid` keeps it finite for any gap.
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean(), (chosen > rejected).float().mean().detach()
