"""Running multi-turn episodes with the actor's rollout engine (`ppo.env`): the controller's side.

Each turn is one `generate` call of the whole actor group on the contexts of the episodes still running
(token-in/token-out: the policy's turns stay exactly as sampled), so every rank takes part in every turn
— the lock-step ZeRO-3 generation needs. Between turns the environments (rlhf/envs/base.py) step in this
process on the decoded text of each policy turn, all of a turn's steps at once, one daemon thread each.
An episode ends when its environment says done, after `max_turns` policy turns, when its response block
reaches `max_tokens` (a policy turn is never cut: the block may end up to `rollout.max_new_tokens` - 1
tokens past it), when its environment raises or returns something else than a StepResult
("env_error"), or when its step takes longer than `step_timeout_s` ("env_timeout": the thread is
abandoned, the environment dropped) — in the last two cases with reward 0 for that turn, counted and
logged with the episode. The G episodes of a prompt form its group, as G samples of one prompt do; their
environments are made together when `ppo.env.name` names an `EnvGroup` (rlhf/envs/base.py).

Metrics (batch.extra): `episode/end_<reason>` (episodes per END_REASONS), `episode/turns_mean`,
`episode/env_tokens_mean` (observation tokens per episode), and the mean of each metric the environments
reported on their last step as `episode/env_<name>`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from typing import Any, Sequence

from rlhf.data.batch import RolloutBatch
from rlhf.data.encode import chat_observation, chat_turn_end
from rlhf.envs.base import StepResult, make_env_group
from rlhf.envs.episode import END_REASONS, Episode, assemble
import rlhf.tasks  # noqa: E402,F401  (registers the tasks' environments, e.g. "code")

logger = logging.getLogger(__name__)
_TIMED_OUT = object()  # a step still running at the turn's deadline


class EpisodeRunner:
    """Episodes of the environment `env_name` (registered name or dotted path) for prompt examples."""

    def __init__(self, env_name: str, env_kwargs: dict, max_turns: int, max_tokens: int, tokenizer,
                 step_timeout_s: float = 60.0, observations: str = "text", observation_role: str = "user") -> None:
        self.env_name, self.env_kwargs = env_name, dict(env_kwargs)
        self.max_turns, self.max_tokens, self.tokenizer = max_turns, max_tokens, tokenizer
        self.step_timeout_s = step_timeout_s
        self.observations, self.observation_role = observations, observation_role
        self.turn_end_id = None
        if observations == "chat":  # a template that cannot host environment turns fails here, before any episode
            chat_observation(tokenizer, "", observation_role)
            self.turn_end_id = tokenizer.convert_tokens_to_ids(chat_turn_end(tokenizer))

    def run(self, actor, examples: Sequence[Any], params, seed: int) -> RolloutBatch:
        """`params.n` episodes per example (prompt-major rows, as a single-turn rollout's), played with
        the actor group's `generate`; `seed` makes the environments' and the sampling's draws."""
        episodes, envs, last_metrics = [], [], []
        for p, example in enumerate(examples):
            group = make_env_group(self.env_name, example.prompt, example.reference,
                                   [_mix(seed, p, k) for k in range(params.n)], **self.env_kwargs)
            for env in group:
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
            results = self._step_all([envs[i] for i in active], batch.responses)
            for i, result in zip(active, results):
                self._apply(episodes[i], result, last_metrics[i], last_turn=turn == self.max_turns - 1)
        return self._batch(episodes, last_metrics)

    def _step_all(self, envs: list, actions: Sequence[str]) -> list:
        """Each env's `step(action)`, all at once: a StepResult, the exception it raised, or _TIMED_OUT."""
        results: list = [_TIMED_OUT] * len(envs)

        def work(i: int) -> None:
            try:
                results[i] = envs[i].step(actions[i])
            except BaseException as exc:  # the environment's fault: reported for its episode only
                results[i] = exc

        threads = [threading.Thread(target=work, args=(i,), daemon=True, name=f"env-step-{i}") for i in range(len(envs))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + self.step_timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [_TIMED_OUT if thread.is_alive() else result for thread, result in zip(threads, results)]

    def _apply(self, episode: Episode, result, metrics: dict, last_turn: bool) -> None:
        if result is _TIMED_OUT:
            self._fail(episode, "env_timeout", f"step took longer than {self.step_timeout_s:g} s")
            return
        if not isinstance(result, StepResult):
            detail = (f"{type(result).__name__}: {result}" if isinstance(result, BaseException)
                      else f"step returned a {type(result).__name__}, not a StepResult")
            self._fail(episode, "env_error", detail)
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
            ids = self._observe(result.observation, episode)
            if len(episode.tokens) + len(ids) > self.max_tokens:
                episode.end("max_tokens")
            else:
                episode.add_observation(ids)

    def _fail(self, episode: Episode, reason: str, detail: str) -> None:
        """End `episode` for its environment's fault: reward 0 for this turn, counted (episode/end_<reason>)."""
        episode.reward_turn(0.0)
        episode.error = detail
        episode.end(reason)
        logger.warning("environment %s, group %d, turn %d: %s (%s)", self.env_name, episode.group_id, episode.turns,
                       reason, detail)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _observe(self, text: str, episode: Episode) -> list[int]:
        """An observation's tokens: its text, or (observations="chat") its chat turn after the template's
        end-of-turn token — added first (as context) when the policy's turn did not end with it."""
        if self.observations != "chat":
            return self._encode(text)
        ids = self._encode(chat_observation(self.tokenizer, text, self.observation_role))
        if not episode.tokens or episode.tokens[-1] != self.turn_end_id:
            ids = [self.turn_end_id] + ids
        return ids

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
