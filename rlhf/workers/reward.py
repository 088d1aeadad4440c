"""The reward role: sequence scores from a reward model, a task's rule-based reward function, or an HTTP
reward service (`rlhf/workers/reward_server.py`).

When the run has a task with a verifier (e.g. arithmetic), the same call also returns the gold
reward `gold_B`, so learning is measured against the truth and not only against the reward model.
Rule-based functions run in a child process with a timeout (`RewardFunctionRunner`): a function that
raises or hangs gives a logged, counted fallback score, never a dead job.
"""
from __future__ import annotations

import os
import sys

import torch

from rlhf.config.engine import EngineConfig
from rlhf.data.batch import RolloutBatch
from rlhf.data.retokenize import Retokenizer, same_tokenizer
from rlhf.models import ModelOptions, load_reward_model, load_tokenizer, reward_scores
from rlhf.tasks import get_task
from rlhf.tasks.registry import import_object
from rlhf.workers.base import BaseWorker, Dispatch, dispatch
from rlhf.workers.inference import forward_in_chunks
from rlhf.workers.reward_fn import RewardFnLimits, RewardFunctionRunner, task_reward_runner
from rlhf.workers.reward_server import RewardServerClient, RewardServerSpec


class RewardWorker(BaseWorker):
    engine = None
    rule = None
    verifier = None
    server = None
    retokenizer = None  # set when the reward model's tokenizer is not the actor's

    @dispatch(Dispatch.ALL)
    def init_model(self, model_path: str | None, options: ModelOptions, engine_cfg: EngineConfig,
                   micro_batch_size: int, task: str | None = None, task_kwargs: dict | None = None,
                   use_task_reward: bool = False, reward_fn_timeout_s: float = 10.0,
                   reward_fn_fallback: float = 0.0, reward_fn_limits: RewardFnLimits = RewardFnLimits(),
                   server: RewardServerSpec | None = None, tokenizer_path: str | None = None,
                   actor_tokenizer_path: str | None = None, use_chat_template: bool | None = None,
                   reward_fn: str | None = None) -> None:
        """Score with the reward model at `model_path`, with `task`'s reward (`use_task_reward`), with the
        user function at the dotted path `reward_fn`, or with the reward service `server`.

        With a `task`, its verifier also yields `gold_B` for metrics either way. When the reward model's
        tokenizer (`tokenizer_path`, default `model_path`) is not the actor's (`actor_tokenizer_path`), rows
        are re-encoded in the reward model's tokens (and chat template) before scoring; else the actor's
        ids are scored as they are.
        """
        if use_task_reward and task is None:
            raise ValueError("reward.use_task_reward=true needs a task (e.g. task=arithmetic)")
        if not use_task_reward and not model_path and server is None and reward_fn is None:
            raise ValueError("the reward role needs a reward model path, use_task_reward=true with a task, "
                             "a reward function or a reward server")
        if task is not None:
            task_obj = self._import(lambda: get_task(task, **(task_kwargs or {})))
            self.verifier = task_reward_runner(task_obj, reward_fn_timeout_s, reward_fn_fallback, reward_fn_limits)
            if use_task_reward:
                self.rule = self.verifier
        if reward_fn is not None:
            fn = self._import(lambda: import_object(reward_fn, "reward function"))
            self.rule = RewardFunctionRunner(fn, reward_fn_timeout_s, reward_fn_fallback, reward_fn_limits)
        if server is not None:
            self.server = RewardServerClient(server)
        elif self.rule is None:
            from rlhf.engine import InferenceEngine

            self.engine = InferenceEngine(load_reward_model(model_path, options), engine_cfg, micro_batch_size)
            self.forward_batch_size = micro_batch_size
            if actor_tokenizer_path is not None:
                self.retokenizer = reward_retokenizer(
                    actor_tokenizer_path, tokenizer_path or model_path, use_chat_template,
                    getattr(self.engine.module.config, "max_position_embeddings", None), options.trust_remote_code)

    def _import(self, build):
        """`build()`, its import failure re-raised naming this worker (the driver imported it fine, so
        the worker's environment is what differs)."""
        try:
            return build()
        except ValueError as exc:
            raise ValueError(f"{self.role} worker rank {self.rank} (pid {os.getpid()}, sys.path {sys.path[:4]}...): "
                             f"{exc}") from exc

    @dispatch(Dispatch.SPLIT)
    def score(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """{"scores_B": [B] float, "gold_B": [B] float (NaN without a verifier), "fn_failures_B": [B] long},
        and "outcomes_B" ([B] list of str) when the task's scorer names an outcome per row (the code task's
        sandbox: "passed", "timeout", "violation", ...).

        `fn_failures_B` is 0 where the task's reward function gave the score, else the failure that gave
        the fallback instead (1 error, 2 timeout, 3 non-finite: `reward_fn.FAILURE_KINDS`)."""
        gold_B = torch.full((len(batch),), float("nan"))
        failures_B = torch.zeros(len(batch), dtype=torch.long)
        outcomes = {}
        if self.verifier is not None:
            gold_B = torch.tensor(self.verifier(batch.responses, batch.references), dtype=torch.float32)
            failures_B = torch.tensor(self.verifier.failure_codes(), dtype=torch.long)
            if hasattr(self.verifier, "last_outcomes"):
                outcomes = {"outcomes_B": list(self.verifier.last_outcomes)}
        if self.rule is self.verifier and self.rule is not None:
            return {"scores_B": gold_B.clone(), "gold_B": gold_B, "fn_failures_B": failures_B, **outcomes}
        if self.rule is not None:  # a user function scores; the task's verifier (if any) gives gold
            scores_B = torch.tensor(self.rule(batch.responses, batch.references), dtype=torch.float32)
            return {"scores_B": scores_B, "gold_B": gold_B,
                    "fn_failures_B": torch.tensor(self.rule.failure_codes(), dtype=torch.long), **outcomes}
        if self.server is not None:  # its unscored rows, not the verifier's, are the reward's failures
            scores_B = torch.tensor(self.server(batch.prompts or [""] * len(batch), batch.responses,
                                                batch.references), dtype=torch.float32)
            return {"scores_B": scores_B, "gold_B": gold_B,
                    "fn_failures_B": torch.tensor(self.server.failure_codes(), dtype=torch.long), **outcomes}
        if self.retokenizer is not None:
            ids_BS, mask_BS = self.retokenizer(batch)
            batch = RolloutBatch(input_ids_BS=ids_BS, attention_mask_BS=mask_BS, mask_BT=torch.zeros(len(ids_BS), 0))
        scores_B = forward_in_chunks(
            batch, self.forward_batch_size, self.engine.cfg.zero_stage == 3, self.device,
            lambda micro: reward_scores(self.engine, micro.input_ids_BS, micro.attention_mask_BS),
            padding_free=self.padding_free,
            max_tokens=self.forward_max_tokens)
        return {"scores_B": scores_B, "gold_B": gold_B, "fn_failures_B": failures_B, **outcomes}

    @dispatch(Dispatch.ALL)
    def reward_fn_stats(self) -> dict:
        """Failures on this rank (errors, timeouts, non-finite) of the rule-based reward function and of
        the reward server, summed; `server_requests` counts the server's POSTs (retries included)."""
        out = {"errors": 0, "timeouts": 0, "non_finite": 0, "examples": []}
        for source in {id(s): s for s in (self.verifier, self.rule, self.server) if s is not None}.values():
            for kind in ("errors", "timeouts", "non_finite"):
                out[kind] += getattr(source.stats, kind)
            out["examples"] += list(source.stats.examples)
        if self.server is not None:
            out["server_requests"] = self.server.requests
        return out


def reward_retokenizer(actor_tokenizer_path: str, rm_tokenizer_path: str, use_chat_template: bool | None,
                       max_len: int | None, trust_remote_code: bool = False) -> Retokenizer | None:
    """A Retokenizer from the actor's tokens to the reward model's, or None when they are the same
    tokenizer (and no chat template of the reward model's own is asked for)."""
    actor = load_tokenizer(actor_tokenizer_path, trust_remote_code=trust_remote_code)
    rm = load_tokenizer(rm_tokenizer_path, padding_side="right", trust_remote_code=trust_remote_code)
    own_template = use_chat_template is True and getattr(rm, "chat_template", None) != getattr(actor, "chat_template", None)
    if same_tokenizer(actor, rm) and not own_template:
        return None
    return Retokenizer(actor, rm, use_chat_template, max_len)
