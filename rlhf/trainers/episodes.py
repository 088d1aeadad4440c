"""Running multi-turn episodes with the actor's rollout engine (`ppo.env`): the controller's side.

Each turn is one `generate` call of the whole actor group on the contexts of the episodes still running
(token-in/token-out: the policy's turns stay exactly as sampled), so every rank takes part in every turn
— the lock-step ZeRO-3 generation needs. Between turns the environments (rlhf/envs/base.py) step in this
process on the decoded text of each policy turn. An episode ends when its environment says done, after
`max_turns` policy turns, when its response block reaches `max_tokens` (a policy turn is never cut: the
block may end up to `rollout.max_new_tokens` - 1 tokens past it), or when its environment raises
("env_error": reward 0 for that turn, counted, logged with the episode). The G episodes of a prompt
form its group, as G samples of one prompt do.

Metrics (batch.extra): `episode/end_<reason>` (episodes per END_REASONS), `episode/turns_mean`,
`episode/env_tokens_mean` (observation tokens per episode), and the mean of each metric the environments
reported on their last step as `episode/env_<name>`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Sequence

from rlhf.data.batch import RolloutBatch
from rlhf.envs.base import make_env
from rlhf.envs.episode import END_REASONS, Episode, assemble

logger = logging.getLogger(__name__)


class EpisodeRunner:
    """Episodes of the environment `env_name` (registered name or dotted path) for prompt examples."""

    def __init__(self, env_name: str, env_kwargs: dict, max_turns: int, max_tokens: int, tokenizer) -> None:
        self.env_name, self.env_kwargs = env_name, dict(env_kwargs)
        self.max_turns, self.max_tokens, self.tokenizer = max_turns, max_tokens, tokenizer

    def run(self, actor, examples: Sequence[Any], params, seed: int) -> RolloutBatch:
        """`params.n` episodes per example (prompt-major rows, as a single-turn rollout's), played with
        the actor group's `generate`; `seed` makes the environments' and the sampling's draws."""
        episodes, envs, last_metrics = [], [], []
        for p, example in enumerate(examples):
            for k in range(params.n):
                env = make_env(self.env_name, example.prompt, example.reference, _mix(seed, p, k), **self.env_kwargs)
                episode = Episode(list(example.input_ids), p, example.reference)
                first = env.reset()
                if first:
                    episode.add_observation(self._encode(first))
                episodes.append(episode)
                envs.append(env)
                last_metrics.append({})
        for turn in range(self.max_turns):
            active = [i for i, e in enumerate(episodes) if not e.done]
            if not active:
                break
            turn_params = dataclasses.replace(params, n=1, seed=None if params.seed is None else _mix(params.seed, turn))
            batch = actor.call("generate", [(episodes[i].context, episodes[i].reference) for i in active], turn_params)
            for row, i in enumerate(active):
                valid = batch.mask_BT[row] > 0
                episodes[i].add_policy_turn(batch.response_ids_BT[row][valid].tolist(),
                                            batch.old_logprobs_BT[row][valid].tolist())
                self._step(episodes[i], envs[i], batch.responses[row], last_metrics[i], last_turn=turn == self.max_turns - 1)
        return self._batch(episodes, last_metrics)

    def _step(self, episode: Episode, env, action: str, metrics: dict, last_turn: bool) -> None:
        try:
            result = env.step(action)
        except Exception as exc:  # the environment's fault: this turn scores 0, the episode ends, counted
            episode.reward_turn(0.0)
            episode.error = f"{type(exc).__name__}: {exc}"
            episode.end("env_error")
            logger.warning("environment %s raised on group %d (turn %d): %s", self.env_name, episode.group_id,
                           episode.turns, episode.error)
            return
        episode.reward_turn(result.reward)
        metrics.clear()
        metrics.update({k: float(v) for k, v in result.metrics.items()})
        if "gold" in metrics:
            episode.gold = metrics["gold"]
        if result.done:
            episode.end("done")
        elif len(episode.tokens) >= self.max_tokens:
            episode.end("max_tokens")
        elif last_turn:
            episode.end("max_turns")
        elif result.observation:
            ids = self._encode(result.observation)
            if len(episode.tokens) + len(ids) > self.max_tokens:
                episode.end("max_tokens")
            else:
                episode.add_observation(ids)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _batch(self, episodes: list[Episode], last_metrics: list[dict]) -> RolloutBatch:
        tensors = assemble(episodes, self.tokenizer.pad_token_id)
        turn_rewards_BT = tensors.pop("turn_rewards_BT")
        batch = RolloutBatch(**tensors, prompts=[self.tokenizer.decode(e.prompt_ids) for e in episodes],
                             responses=[self.tokenizer.decode(e.tokens, skip_special_tokens=True) for e in episodes],
                             references=[e.reference for e in episodes])
        batch.turn_rewards_BT = turn_rewards_BT
        batch.extra.update(episode_metrics(episodes, last_metrics))
        return batch


def episode_metrics(episodes: Sequence[Episode], last_metrics: Sequence[dict]) -> dict[str, float]:
    n = max(len(episodes), 1)
    out = {f"episode/end_{reason}": float(sum(e.end_reason == reason for e in episodes)) for reason in END_REASONS}
    out["episode/turns_mean"] = sum(e.turns for e in episodes) / n
    out["episode/env_tokens_mean"] = sum(len(e.sampled) - sum(e.sampled) for e in episodes) / n
    names = sorted({k for m in last_metrics for k in m})
    for name in names:
        values = [m[name] for m in last_metrics if name in m and math.isfinite(m[name])]
        if values:
            out[f"episode/env_{name}"] = sum(values) / len(values)
    return out


def _mix(*values: int) -> int:
    """A 31-bit seed from several ints (stable across runs and processes)."""
    h = 0
    for v in values:
        h = (h * 1_000_003 + int(v) + 0x9E3779B9) % (2**31 - 1)
    return h
