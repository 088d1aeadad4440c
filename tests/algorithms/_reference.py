"""Slow, obviously-correct references for `rlhf.algorithms`, written from the spec.

Every function here works on plain Python lists of floats with explicit loops over rows and tokens, no
vectorization and no torch, so each one reads like the formula it documents. The tests compare the
vectorized implementation against these on random shapes, seeds and padding layouts.

Shape key (for the list-of-lists arguments): B rows, T response tokens. `mask[i][t]` is truthy on a valid
token. Padding may sit anywhere in a row (right, left or holes) unless a function says otherwise.
"""
from __future__ import annotations

import math

WHITEN_EPS = 1e-8


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------
def valid_positions(mask_row):
    """Indices t of a row's valid tokens, in order."""
    return [t for t, m in enumerate(mask_row) if m]


def zeros_like(rows):
    return [[0.0 for _ in row] for row in rows]


def sigmoid_neg_log(d):
    """−log σ(d) = log(1 + exp(−d)), computed without overflow for large |d|."""
    if d >= 0:
        return math.log1p(math.exp(-d))
    return -d + math.log1p(math.exp(d))


def clip(x, low, high):
    return min(max(x, low), high)


# ----------------------------------------------------------------------------------------------------
# Masked statistics
# ----------------------------------------------------------------------------------------------------
def masked_sum(x, mask, dim=None):
    """x, mask: [B][T] lists. dim None → float; dim 0 → [T] list; dim 1 → [B] list."""
    B, T = len(x), len(x[0])
    if dim is None:
        total = 0.0
        for i in range(B):
            for t in range(T):
                if mask[i][t]:
                    total += x[i][t]
        return total
    if dim in (1, -1):
        out = []
        for i in range(B):
            s = 0.0
            for t in range(T):
                if mask[i][t]:
                    s += x[i][t]
            out.append(s)
        return out
    if dim in (0, -2):
        out = []
        for t in range(T):
            s = 0.0
            for i in range(B):
                if mask[i][t]:
                    s += x[i][t]
            out.append(s)
        return out
    raise ValueError(dim)


def _count(mask, dim=None):
    ones = [[1.0 for _ in row] for row in mask]
    return masked_sum(ones, mask, dim)


def masked_mean(x, mask, dim=None):
    """Mean over valid entries; an empty selection gives 0 (never NaN)."""
    sums, counts = masked_sum(x, mask, dim), _count(mask, dim)
    if dim is None:
        return sums / counts if counts > 0 else 0.0
    return [s / n if n > 0 else 0.0 for s, n in zip(sums, counts)]


def masked_var(x, mask, unbiased=True):
    """Variance over ALL valid entries; 0 when there are too few (n < 2 unbiased, n < 1 biased)."""
    values = [x[i][t] for i in range(len(x)) for t in range(len(x[0])) if mask[i][t]]
    n = len(values)
    if n == 0 or (unbiased and n < 2):
        return 0.0
    mean = sum(values) / n
    ss = sum((v - mean) ** 2 for v in values)
    return ss / (n - 1) if unbiased else ss / n


def masked_whiten(x, mask, shift_mean=True):
    """(x − mean)/sqrt(var + 1e-8), unbiased var over all valid tokens; + mean if not shift_mean; 0 on pad."""
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    scale = 1.0 / math.sqrt(var + WHITEN_EPS)
    out = zeros_like(x)
    for i in range(len(x)):
        for t in range(len(x[0])):
            if mask[i][t]:
                w = (x[i][t] - mean) * scale
                out[i][t] = w if shift_mean else w + mean
    return out


# ----------------------------------------------------------------------------------------------------
# KL
# ----------------------------------------------------------------------------------------------------
def kl_token(logp, logp_ref, estimator):
    """One token's KL estimate (Schulman's k1/k2/k3)."""
    if estimator == "k1":
        return logp - logp_ref
    if estimator == "k2":
        return 0.5 * (logp - logp_ref) ** 2
    if estimator == "k3":
        log_ratio = logp_ref - logp
        return math.exp(log_ratio) - 1.0 - log_ratio
    raise ValueError(estimator)


def approx_kl(logp, logp_ref, estimator="k1", mask=None):
    out = zeros_like(logp)
    for i in range(len(logp)):
        for t in range(len(logp[0])):
            if mask is None or mask[i][t]:
                out[i][t] = kl_token(logp[i][t], logp_ref[i][t], estimator)
    return out


def kl_penalized_rewards(scores, logp, logp_ref, mask, kl_coef, estimator="k1", score_clip=None):
    """rewards = −kl_coef·kl on valid tokens, plus the (clipped) row score at the row's last valid token."""
    kl = approx_kl(logp, logp_ref, estimator, mask)
    rewards = zeros_like(logp)
    for i in range(len(logp)):
        valid = valid_positions(mask[i])
        for t in valid:
            rewards[i][t] = -kl_coef * kl[i][t]
        if valid:  # a row with no valid token never receives its score
            score = scores[i]
            if score_clip is not None:
                score = clip(score, -score_clip, score_clip)
            rewards[i][valid[-1]] += score
    return rewards, kl


# ----------------------------------------------------------------------------------------------------
# GAE and returns-to-go
# ----------------------------------------------------------------------------------------------------
def gae(rewards, values, mask, gamma, lam):
    """Walk each row's valid tokens backwards; "next" means the next VALID token of the same row."""
    adv, ret = zeros_like(rewards), zeros_like(rewards)
    for i in range(len(rewards)):
        next_value, next_adv = 0.0, 0.0  # past the row's last valid token
        for t in reversed(valid_positions(mask[i])):
            delta = rewards[i][t] + gamma * next_value - values[i][t]
            a = delta + gamma * lam * next_adv
            adv[i][t] = a
            ret[i][t] = a + values[i][t]
            next_value, next_adv = values[i][t], a
    return adv, ret


def gae_by_sum(rewards, values, mask, gamma, lam):
    """The same advantages from the closed form A_t = Σ_l (γλ)^l δ_{t+l} over valid tokens (second oracle)."""
    adv = zeros_like(rewards)
    for i in range(len(rewards)):
        valid = valid_positions(mask[i])
        deltas = []
        for j, t in enumerate(valid):
            v_next = values[i][valid[j + 1]] if j + 1 < len(valid) else 0.0
            deltas.append(rewards[i][t] + gamma * v_next - values[i][t])
        for j, t in enumerate(valid):
            adv[i][t] = sum((gamma * lam) ** l * deltas[j + l] for l in range(len(valid) - j))
    return adv


def returns_to_go(rewards, mask, gamma):
    """G_t = Σ_{k ≥ t, valid} γ^(valid steps from t to k) · r_k, 0 on padding."""
    out = zeros_like(rewards)
    for i in range(len(rewards)):
        valid = valid_positions(mask[i])
        for j, t in enumerate(valid):
            out[i][t] = sum(gamma ** (l - j) * rewards[i][valid[l]] for l in range(j, len(valid)))
    return out


# ----------------------------------------------------------------------------------------------------
# Critic-free advantage estimators
# ----------------------------------------------------------------------------------------------------
def sequence_returns(rewards, mask):
    """R_i = Σ_t rewards[i][t] over valid tokens."""
    return masked_sum(rewards, mask, dim=1)


def groups_of(group_ids):
    """{group id: [row indices]} in row order."""
    groups = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    return groups


def _broadcast_rows(per_row, mask):
    out = zeros_like(mask)
    for i in range(len(mask)):
        for t in valid_positions(mask[i]):
            out[i][t] = float(per_row[i])
    return out


def _group_sequence_advantage(rewards, mask, group_ids, baseline_fn):
    R = sequence_returns(rewards, mask)
    groups = groups_of(group_ids)
    per_row = [baseline_fn(R[i], [R[j] for j in groups[group_ids[i]]], i, groups[group_ids[i]], R)
               for i in range(len(R))]
    return _broadcast_rows(per_row, mask), _broadcast_rows(R, mask)


def grpo(rewards, mask, group_ids, gamma=1.0, eps=1e-6):
    def adv(r_i, group_R, i, members, R):
        n = len(group_R)
        if n == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(group_R) / n
            std = math.sqrt(sum((r - mean) ** 2 for r in group_R) / (n - 1))
        return (r_i - mean) / (std + eps)
    return _group_sequence_advantage(rewards, mask, group_ids, adv)


def dr_grpo(rewards, mask, group_ids, gamma=1.0, eps=1e-6):
    def adv(r_i, group_R, i, members, R):
        n = len(group_R)
        mean = 0.0 if n == 1 else sum(group_R) / n
        return r_i - mean
    return _group_sequence_advantage(rewards, mask, group_ids, adv)


def rloo(rewards, mask, group_ids, gamma=1.0, eps=1e-6):
    def adv(r_i, group_R, i, members, R):
        others = [R[j] for j in members if j != i]
        baseline = sum(others) / len(others) if others else 0.0
        return r_i - baseline
    return _group_sequence_advantage(rewards, mask, group_ids, adv)


def reinforce_pp(rewards, mask, group_ids, gamma=1.0, eps=1e-6):
    G = returns_to_go(rewards, mask, gamma)
    return masked_whiten(G, mask), G


def reinforce_pp_baseline(rewards, mask, group_ids, gamma=1.0, eps=1e-6):
    G = returns_to_go(rewards, mask, gamma)
    R = sequence_returns(rewards, mask)
    groups = groups_of(group_ids)
    shifted = zeros_like(G)
    for i in range(len(G)):
        members = groups[group_ids[i]]
        group_mean = 0.0 if len(members) == 1 else sum(R[j] for j in members) / len(members)
        for t in valid_positions(mask[i]):
            shifted[i][t] = G[i][t] - group_mean
    return masked_whiten(shifted, mask), G


ADVANTAGE_ESTIMATORS = {
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "rloo": rloo,
    "reinforce_pp": reinforce_pp,
    "reinforce_pp_baseline": reinforce_pp_baseline,
}


# ----------------------------------------------------------------------------------------------------
# Loss aggregation
# ----------------------------------------------------------------------------------------------------
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


def aggregation_weights(mask, agg, num_tokens=None, num_seqs=None):
    """w[i][t] such that aggregate = Σ w·loss: it is also d(aggregate)/d(loss[i][t])."""
    n_row = [sum(1 for m in row if m) for row in mask]
    n_tok = num_tokens if num_tokens is not None else sum(n_row)
    n_seq = num_seqs if num_seqs is not None else sum(1 for n in n_row if n > 0)
    w = zeros_like(mask)
    for i in range(len(mask)):
        for t in valid_positions(mask[i]):
            if agg == "token-mean":
                w[i][t] = 1.0 / n_tok
            elif agg == "seq-mean-token-mean":
                w[i][t] = 1.0 / (n_row[i] * n_seq)
            elif agg == "seq-mean-token-sum":
                w[i][t] = 1.0 / n_seq
            else:
                raise ValueError(agg)
    return w


def aggregate_loss(loss, mask, agg="token-mean", num_tokens=None, num_seqs=None):
    """Written as the spec's sums (not via the weights) so it is an independent oracle."""
    n_row = [sum(1 for m in row if m) for row in mask]
    if agg == "token-mean":
        n_tok = num_tokens if num_tokens is not None else sum(n_row)
        return masked_sum(loss, mask) / n_tok
    n_seq = num_seqs if num_seqs is not None else sum(1 for n in n_row if n > 0)
    total = 0.0
    for i in range(len(loss)):
        if n_row[i] == 0:
            continue
        row_sum = sum(loss[i][t] for t in valid_positions(mask[i]))
        total += row_sum / n_row[i] if agg == "seq-mean-token-mean" else row_sum
    return total / n_seq


# ----------------------------------------------------------------------------------------------------
# Per-token policy and value losses, with their derivative wrt logp (or V) by hand
# ----------------------------------------------------------------------------------------------------
def ppo_token(logp, old, adv, clip_eps_low=0.2, clip_eps_high=0.2, dual_clip=None):
    """Returns (loss, dloss/dlogp, clipped_is_larger, dual_clip_active)."""
    r = math.exp(logp - old)
    unclipped = -adv * r
    clipped = -adv * clip(r, 1 - clip_eps_low, 1 + clip_eps_high)
    clipped_larger = clipped > unclipped
    loss = max(unclipped, clipped)
    # The clipped branch only wins when the ratio is outside the clip range, where it is constant in logp.
    grad = 0.0 if clipped_larger else -adv * r
    dual_active = False
    if dual_clip is not None and adv < 0 and -adv * dual_clip < loss:
        loss, grad, dual_active = -adv * dual_clip, 0.0, True
    return loss, grad, clipped_larger, dual_active


def importance_sampling_token(logp, old, adv):
    r = math.exp(logp - old)
    return -r * adv, -r * adv


def cispo_token(logp, old, adv, clip_eps_low=0.2, clip_eps_high=0.2):
    weight = clip(math.exp(logp - old), 1 - clip_eps_low, 1 + clip_eps_high)  # detached
    return -weight * adv * logp, -weight * adv


def dro_token(logp, old, adv, beta=0.05):
    return -(logp * adv - 0.5 * beta * (logp - old) ** 2), -(adv - beta * (logp - old))


def value_token(v, v_old, ret, clip_eps=0.2):
    """Returns (loss, dloss/dV, clipped_is_larger)."""
    unclipped = (v - ret) ** 2
    if clip_eps is None:
        return 0.5 * unclipped, v - ret, False
    clipped = (clip(v, v_old - clip_eps, v_old + clip_eps) - ret) ** 2
    if clipped > unclipped:  # then V is outside the clip range: the clipped term is constant in V
        return 0.5 * clipped, 0.0, True
    return 0.5 * unclipped, v - ret, False


def per_token(fn, mask, *columns, **hyper):
    """Apply a per-token fn on valid tokens; returns a list of [B][T] outputs (one per fn output)."""
    B, T = len(mask), len(mask[0])
    outs = None
    for i in range(B):
        for t in range(T):
            if not mask[i][t]:
                continue
            res = fn(*(c[i][t] for c in columns), **hyper)
            if outs is None:
                outs = [zeros_like(mask) for _ in res]
            for k, value in enumerate(res):
                outs[k][i][t] = float(value)
    if outs is None:  # no valid token at all
        n = len(fn(*(0.0 for _ in columns), **hyper))
        outs = [zeros_like(mask) for _ in range(n)]
    return outs


def loss_and_grad(fn, mask, columns, agg="token-mean", num_tokens=None, num_seqs=None, **hyper):
    """Aggregated loss and its gradient wrt the first column (logp or V), both from the references."""
    outs = per_token(fn, mask, *columns, **hyper)
    token_loss, token_grad = outs[0], outs[1]
    loss = aggregate_loss(token_loss, mask, agg, num_tokens, num_seqs)
    w = aggregation_weights(mask, agg, num_tokens, num_seqs)
    grad = [[w[i][t] * token_grad[i][t] for t in range(len(mask[0]))] for i in range(len(mask))]
    return loss, grad, outs


def ppo_metrics(logp, old, mask, adv, clip_eps_low=0.2, clip_eps_high=0.2, dual_clip=None):
    """The spec's metrics, as masked means / extremes over valid tokens."""
    ratios, clipped, dual, k2, k3 = [], [], [], [], []
    for i in range(len(mask)):
        for t in valid_positions(mask[i]):
            _, _, c, d = ppo_token(logp[i][t], old[i][t], adv[i][t], clip_eps_low, clip_eps_high, dual_clip)
            ratios.append(math.exp(logp[i][t] - old[i][t]))
            clipped.append(1.0 if c else 0.0)
            dual.append(1.0 if d else 0.0)
            k2.append(kl_token(logp[i][t], old[i][t], "k2"))
            k3.append(kl_token(logp[i][t], old[i][t], "k3"))
    n = len(ratios)
    out = {
        "clip_frac": sum(clipped) / n,
        "approx_kl": sum(k2) / n,
        "approx_kl_k3": sum(k3) / n,
        "ratio_mean": sum(ratios) / n,
        "ratio_max": max(ratios),
        "ratio_min": min(ratios),
    }
    if dual_clip is not None:
        out["dual_clip_frac"] = sum(dual) / n
    return out


# ----------------------------------------------------------------------------------------------------
# Reward model loss and KL controllers
# ----------------------------------------------------------------------------------------------------
def pairwise_reward_loss(chosen, rejected, margin=None):
    """(mean −log σ(c − r − m), mean 1[c > r]) over B pairs; margin None, a float or a [B] list."""
    B = len(chosen)
    margins = [0.0] * B if margin is None else (list(margin) if isinstance(margin, (list, tuple)) else [margin] * B)
    loss = sum(sigmoid_neg_log(chosen[i] - rejected[i] - margins[i]) for i in range(B)) / B
    accuracy = sum(1.0 for i in range(B) if chosen[i] > rejected[i]) / B
    return loss, accuracy


def adaptive_kl_values(init_kl_coef, target, horizon, updates):
    """Coefficient after each (current_kl, n_steps) update, Ziegler et al. 2019."""
    value, history = init_kl_coef, []
    for current_kl, n_steps in updates:
        error = clip(current_kl / target - 1.0, -0.2, 0.2)
        value = value * (1.0 + error * n_steps / horizon)
        history.append(value)
    return history


def dpo_loss(pc, pr, rc, rr, beta, loss_type, label_smoothing, num_pairs=None):
    """Slow DPO: one pair at a time (lists of floats) → (loss, margins mean, accuracies mean)."""
    total, margins, wins = 0.0, 0.0, 0.0
    for a, b, c, d in zip(pc, pr, rc, rr):
        delta = (a - c) - (b - d)
        if loss_type == "sigmoid":
            h = beta * delta
            total += (1 - label_smoothing) * sigmoid_neg_log(h) + label_smoothing * sigmoid_neg_log(-h)
        else:
            total += (delta - 1 / (2 * beta)) ** 2
        margins += beta * delta
        wins += 1.0 if beta * (a - c) > beta * (b - d) else 0.0
    n = len(pc)
    return total / (n if num_pairs is None else num_pairs), margins / n, wins / n
