"""Offline RL data: stored rollouts, or prompt/response/reward rows, as the rows the `offline` stage trains on.

    data = OfflineDataset(cfg.data, tokenizer, advantage="grpo")   # every row checked; advantages computed
    batch = offline_batch([data[i] for i in rows], tokenizer.pad_token_id)   # a RolloutBatch

Two row formats (config: rlhf/config/offline.py):
- saved rollouts (rlhf/trainers/rollout_store.py; recognised by a `response_ids` column): the token ids
  as sampled, `response_mask` (1 = sampled by the policy, 0 = environment tokens of an episode),
  `behaviour_logprobs` (the sampling weights' log-probs, one per response token), the reward column
  and the group columns (`step`, `group_id`);
- text rows: a prompt, a response and a reward column, tokenized by the actor's tokenizer as SFT rows
  are (rlhf/data/sft.py: EOS appended to a plain response); every response token is trained on; they
  carry no behaviour log-probs (offline.data.behaviour=reference takes the reference model's).

Sources: a file, a directory of shards (every data file in it, sorted), a glob, or a hub name. Each local
file is read on its own, so every error (DataError) names the file, the row within it, the field and
what was expected: a missing column, a mask or log-prob list whose length differs from the response's,
a NaN reward, a token id outside the tokenizer's vocabulary, a row longer than `max_len`.

Advantages are computed once over the whole dataset from the rows' rewards, within groups (all samples
of one prompt): grpo A = (R − mean_g)/(std_g + eps), dr_grpo A = R − mean_g, rloo A = R − mean of the
group's others, none A = R (rlhf/algorithms/advantages.py). A row's advantage sits on each of its
trained tokens; rows of a group whose rewards are all equal get 0 under the group estimators (counted
in the report: they carry no signal); a row alone in its group has no baseline, so its advantage is its
reward (as online: rlhf/algorithms/advantages.py group_mean_std).
"""
from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from rlhf.config.offline import OfflineDataConfig
from rlhf.data.batch import RolloutBatch
from rlhf.data.sources import BUILDERS, DataError, RawRows, load_rows

ROLLOUT_KEYS = ("prompt_ids", "response_ids", "response_mask")
BEHAVIOUR_KEY = "behaviour_logprobs"
ROLLOUT_GROUP_KEYS = ("step", "group_id")


@dataclass
class OfflineExample:
    """One trainable row (unpadded token lists; `response_mask` and `behaviour_logprobs` per response token)."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]  # 1 = a token the policy sampled (trained on), 0 = context (an environment's)
    behaviour_logprobs: list[float] | None  # None: taken from the reference model
    reward: float
    gold: float  # the verifier's reward when the data has one, else NaN
    group: int  # dataset-wide index of the row's group
    advantage: float = 0.0
    where: str = ""  # "<file>, row <i>": for messages


class OfflineDataset(torch.utils.data.Dataset):
    """Every row of `cfg.train`, checked and given its advantage; `report` holds the data's statistics."""

    def __init__(self, cfg: OfflineDataConfig, tokenizer: Any, advantage: str = "grpo", eps: float = 1e-6,
                 cache_dir: str | None = None) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer
        self.examples: list[OfflineExample] = []
        self.without_response = 0  # rows with no trained token: skipped, counted
        self.format = ""
        groups: dict[tuple, int] = {}
        sources = _sources(cfg.train, cfg.split, cache_dir)
        for rows in sources:
            fmt = "rollouts" if "response_ids" in rows.columns else "text"
            if self.format and fmt != self.format:
                raise DataError(rows.source, f"holds {fmt} rows but earlier files hold {self.format} rows; "
                                "expected one format in one dataset")
            self.format = fmt
            self._add(rows, groups)
        if not self.examples:
            raise DataError(str(cfg.train), "no row with a trained response token; expected at least one")
        self.num_files, self.num_groups = len(sources), len(groups)
        self._set_advantages(advantage, eps)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> OfflineExample:
        return self.examples[i]

    # --- reading ---------------------------------------------------------------------------------------
    def _add(self, rows: RawRows, groups: dict[tuple, int]) -> None:
        keys = self.cfg.group_keys or (list(ROLLOUT_GROUP_KEYS) if self.format == "rollouts" else [self.cfg.prompt_key])
        group_columns = [rows.column(k) for k in keys]
        rewards = rows.column(self.cfg.reward_key)
        gold = rows.column(self.cfg.gold_key) if self.cfg.gold_key and self.cfg.gold_key in rows.columns else None
        tokens = self._rollout_tokens(rows) if self.format == "rollouts" else self._text_tokens(rows)
        vocab = len(self.tokenizer)
        for i, (prompt, response, mask, behaviour) in enumerate(tokens):
            reward = _finite(rows, i, self.cfg.reward_key, rewards[i], "the row's reward")
            for name, ids in (("prompt_ids", prompt), ("response_ids", response)):
                bad = next((t for t in ids if not 0 <= t < vocab), None)
                if bad is not None:
                    raise rows.error(i, name, f"token id {bad} is outside the actor tokenizer's vocabulary "
                                     f"(0..{vocab - 1}): were these rollouts sampled with another tokenizer?")
            if len(prompt) + len(response) > self.cfg.max_len:
                raise rows.error(i, "response_ids" if self.format == "rollouts" else self.cfg.response_key,
                                 f"prompt + response have {len(prompt) + len(response)} tokens, expected at most "
                                 f"offline.data.max_len={self.cfg.max_len}")
            if not any(mask):
                self.without_response += 1
                continue
            key = tuple(_hashable(column[i]) for column in group_columns)
            group = groups.setdefault(key, len(groups))
            gold_value = math.nan if gold is None or gold[i] is None else float(gold[i])
            self.examples.append(OfflineExample(prompt, response, mask, behaviour, reward, gold_value, group,
                                                where=f"{rows.source}, row {i}"))

    def _rollout_tokens(self, rows: RawRows) -> list[tuple]:
        """(prompt ids, response ids, mask, behaviour log-probs) of saved-rollout rows, lengths checked."""
        prompt_ids, response_ids, masks = (rows.column(k) for k in ROLLOUT_KEYS)
        behaviour = None
        if self.cfg.behaviour == "dataset":
            if BEHAVIOUR_KEY not in rows.columns:
                raise rows.error(0, BEHAVIOUR_KEY, f"missing field (offline.data.behaviour=dataset reads it); "
                                 f"the rows have fields {rows.columns}: set offline.data.behaviour=reference "
                                 "to take the reference model's log-probs instead")
            behaviour = rows.column(BEHAVIOUR_KEY)
        out = []
        for i in range(len(rows)):
            prompt = _int_list(rows, i, "prompt_ids", prompt_ids[i])
            response = _int_list(rows, i, "response_ids", response_ids[i])
            if not prompt:
                raise rows.error(i, "prompt_ids", "expected at least one prompt token, got none")
            mask = _int_list(rows, i, "response_mask", masks[i])
            _same_length(rows, i, "response_mask", mask, response)
            if any(m not in (0, 1) for m in mask):
                raise rows.error(i, "response_mask", f"expected 0/1 entries, got {sorted(set(mask))}")
            logprobs = None
            if behaviour is not None:
                if behaviour[i] is None:
                    raise rows.error(i, BEHAVIOUR_KEY, "expected one log-prob per response token, got null")
                logprobs = [float(x) for x in behaviour[i]]
                _same_length(rows, i, BEHAVIOUR_KEY, logprobs, response)
                bad = next((x for x, m in zip(logprobs, mask) if m and not (math.isfinite(x) and x <= 0)), None)
                if bad is not None:
                    raise rows.error(i, BEHAVIOUR_KEY, f"expected finite log-probs <= 0 on trained tokens, got {bad}")
            out.append((prompt, response, mask, logprobs))
        return out

    def _text_tokens(self, rows: RawRows) -> list[tuple]:
        """(prompt ids, response ids, mask, None) of prompt/response rows, tokenized as SFT rows are."""
        from rlhf.data.encode import check_tokenizer, render_prompt_response, tokenize
        from rlhf.data.sources import expect_text, expect_text_or_messages

        c = self.cfg
        if c.behaviour == "dataset":
            raise rows.error(0, BEHAVIOUR_KEY, f"text rows (fields {rows.columns}) carry no behaviour log-probs; "
                             "set offline.data.behaviour=reference to take the reference model's")
        check_tokenizer(self.tokenizer)
        prompt_column, response_column = rows.column(c.prompt_key), rows.column(c.response_key)
        prompts, responses, plain = [], [], []
        for i in range(len(rows)):
            prompt = expect_text_or_messages(rows, i, c.prompt_key, prompt_column[i])
            response = expect_text(rows, i, c.response_key, response_column[i])
            try:
                prompt_text, response_text, is_chat = render_prompt_response(self.tokenizer, prompt, response,
                                                                             c.use_chat_template)
            except ValueError as exc:
                raise rows.error(i, c.response_key, str(exc)) from exc
            prompts.append(prompt_text)
            responses.append(response_text)
            plain.append(not is_chat)
        prompt_ids = tokenize(self.tokenizer, prompts, plain)
        response_ids = tokenize(self.tokenizer, responses, [False] * len(responses))
        eos = [self.tokenizer.eos_token_id]
        out = []
        for p, r, is_plain in zip(prompt_ids, response_ids, plain):
            r = r + (eos if is_plain else [])
            out.append((p, r, [1] * len(r), None))
        return out

    # --- advantages and report ---------------------------------------------------------------------------
    def _set_advantages(self, estimator: str, eps: float) -> None:
        rewards_N = torch.tensor([e.reward for e in self.examples], dtype=torch.float64)
        groups_N = torch.tensor([e.group for e in self.examples])
        advantages_N = row_advantages(rewards_N, groups_N, estimator, eps)
        for example, value in zip(self.examples, advantages_N.tolist()):
            example.advantage = value

    def report(self) -> dict[str, float]:
        """The data's statistics (summary.json offline.data_*)."""
        rewards = [e.reward for e in self.examples]
        gold = [e.gold for e in self.examples if not math.isnan(e.gold)]
        return {"data_rows": len(self.examples), "data_groups": self.num_groups, "data_files": self.num_files,
                "data_rows_without_response": self.without_response,
                "data_reward_mean": sum(rewards) / len(rewards),
                "data_gold_mean": sum(gold) / len(gold) if gold else math.nan,
                "data_zero_advantage_fraction": sum(e.advantage == 0 for e in self.examples) / len(self.examples),
                "data_trained_tokens": sum(sum(e.response_mask) for e in self.examples)}


def row_advantages(rewards_N: torch.Tensor, groups_N: torch.Tensor, estimator: str, eps: float = 1e-6) -> torch.Tensor:
    """[N] advantages of N rows from their rewards `[N]` and group indices `[N]` (see the module docstring)."""
    if estimator == "none":
        return rewards_N.clone()
    from rlhf.algorithms import get_advantage_estimator

    ones_N1 = torch.ones_like(rewards_N)[:, None]
    advantages_N1, _ = get_advantage_estimator(estimator)(rewards_N[:, None], ones_N1, groups_N, 1.0, eps)
    return advantages_N1[:, 0]


def offline_batch(examples: Sequence[OfflineExample], pad_token_id: int) -> RolloutBatch:
    """The RolloutBatch of `examples` in the rollout layout (rlhf/data/batch.py): left-padded prompts,
    right-padded responses; `old_logprobs_BT` the behaviour log-probs (None when the rows have none),
    `advantages_BT` each row's advantage on its trained tokens, `scores_B` the rewards."""
    B, P, T = len(examples), max(len(e.prompt_ids) for e in examples), max(len(e.response_ids) for e in examples)
    prompt_ids_BP = torch.full((B, P), pad_token_id, dtype=torch.long)
    prompt_mask_BP = torch.zeros((B, P), dtype=torch.long)
    response_ids_BT = torch.full((B, T), pad_token_id, dtype=torch.long)
    attention_BT = torch.zeros((B, T), dtype=torch.long)
    mask_BT = torch.zeros((B, T), dtype=torch.float32)
    old_logprobs_BT = torch.zeros((B, T), dtype=torch.float32)
    for row, e in enumerate(examples):
        prompt_ids_BP[row, P - len(e.prompt_ids):] = torch.tensor(e.prompt_ids, dtype=torch.long)
        prompt_mask_BP[row, P - len(e.prompt_ids):] = 1
        n = len(e.response_ids)
        response_ids_BT[row, :n] = torch.tensor(e.response_ids, dtype=torch.long)
        attention_BT[row, :n] = 1
        mask_BT[row, :n] = torch.tensor(e.response_mask, dtype=torch.float32)
        if e.behaviour_logprobs is not None:
            old_logprobs_BT[row, :n] = torch.tensor(e.behaviour_logprobs, dtype=torch.float32) * mask_BT[row, :n]
    advantages_B = torch.tensor([e.advantage for e in examples], dtype=torch.float32)
    has_behaviour = all(e.behaviour_logprobs is not None for e in examples)
    return RolloutBatch(
        input_ids_BS=torch.cat([prompt_ids_BP, response_ids_BT], dim=1),
        attention_mask_BS=torch.cat([prompt_mask_BP, attention_BT], dim=1),
        mask_BT=mask_BT,
        old_logprobs_BT=old_logprobs_BT if has_behaviour else None,
        advantages_BT=advantages_B[:, None] * mask_BT,
        scores_B=torch.tensor([e.reward for e in examples], dtype=torch.float32),
        gold_B=torch.tensor([e.gold for e in examples], dtype=torch.float32),
        group_ids_B=torch.tensor([e.group for e in examples]),
    )


# --- helpers ---------------------------------------------------------------------------------------------
def data_files(source: str) -> list[Path] | None:
    """The local data files `source` names (a file, a directory's data files, a glob), sorted; None for a
    hub name. A path or glob that matches nothing is a DataError."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(source, f"directory holds no data files; expected files ending in {sorted(BUILDERS)}")
        return files
    if glob.has_magic(source):
        files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
        if not files:
            raise DataError(source, "the pattern matches no file")
        return files
    return None


def _sources(source: str, split: str, cache_dir: str | None) -> list[RawRows]:
    files = data_files(source)
    if files is None:
        return [load_rows(source, split=split, cache_dir=cache_dir)]
    return [load_rows(f, cache_dir=cache_dir) for f in files]


def _int_list(rows: RawRows, i: int, name: str, value) -> list[int]:
    if not isinstance(value, (list, tuple)) or any(isinstance(x, bool) or not isinstance(x, int) for x in value):
        raise rows.error(i, name, f"expected a list of token ids (ints), got {type(value).__name__}")
    return list(value)


def _same_length(rows: RawRows, i: int, name: str, values: list, response: list) -> None:
    if len(values) != len(response):
        raise rows.error(i, name, f"has {len(values)} entries but response_ids has {len(response)} tokens; "
                         "expected one per response token")


def _finite(rows: RawRows, i: int, name: str, value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise rows.error(i, name, f"expected {what} as a finite number, got {value!r}")
    return float(value)


def _hashable(value) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
