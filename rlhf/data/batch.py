"""The typed rollout batch: the one transport type between the controller and the workers.

Shape key (written once, used in every field name):
    B  sequences in the batch (B = P·G: P prompts, G samples per prompt)
    S  prompt + response tokens: a left-padded prompt block followed by a right-padded response block
    T  response tokens (the last T columns of the S block)

Per-token fields are `[B, T]` over response tokens and end in `_BT`; per-sequence fields are `[B]` and
end in `_B`; `*_BS` fields cover the whole prompt+response sequence. A field is `None` until the stage
that computes it has run (DESIGN.md §3: generate → logprobs/values/scores → rewards/advantages).
Splitting, sharding and concatenation keep row order, so a split-then-concat round trip is identity.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import torch

# Which dimension of each tensor field is "time", for padding; rows are always dimension 0.
_TOKEN_FIELDS_BT = (
    "mask_BT", "old_logprobs_BT", "ref_logprobs_BT", "values_BT", "rewards_BT", "kl_BT",
    "advantages_BT", "returns_BT", "rollout_logprobs_BT", "turn_rewards_BT",
)
_SEQUENCE_FIELDS_BS = ("input_ids_BS", "attention_mask_BS")
_ROW_FIELDS_B = ("scores_B", "gold_B", "group_ids_B", "truncated_B")
_LIST_FIELDS = ("prompts", "raw_prompts", "responses", "references")


@dataclass
class RolloutBatch:
    """A batch of B prompt+response sequences and everything computed about them.

    Token layout: `input_ids_BS[:, : S - T]` is the left-padded prompt, `input_ids_BS[:, S - T :]` the
    right-padded response; `response_ids_BT` is a view of the latter. `mask_BT` marks valid response
    tokens (1) and padding after EOS (0).
    """

    # --- set by generation ---------------------------------------------------------------------
    input_ids_BS: torch.Tensor  # [B, S] long, per token: prompt (left-padded) + response (right-padded)
    attention_mask_BS: torch.Tensor  # [B, S] long, per token: 1 on real prompt and response tokens
    mask_BT: torch.Tensor  # [B, T] float, per token: 1 on valid response tokens (through EOS), 0 on padding
    old_logprobs_BT: torch.Tensor | None = None  # [B, T] float, per token: log π_old(token) when sampled
    group_ids_B: torch.Tensor | None = None  # [B] long, per sequence: index of the prompt it answers
    truncated_B: torch.Tensor | None = None  # [B] bool, per sequence: hit max length without EOS
    # --- set by the scoring stage ----------------------------------------------------------------
    ref_logprobs_BT: torch.Tensor | None = None  # [B, T] float, per token: log π_ref(token)
    values_BT: torch.Tensor | None = None  # [B, T] float, per token: critic V(s_t)
    scores_B: torch.Tensor | None = None  # [B] float, per sequence: reward model or rule-based score
    gold_B: torch.Tensor | None = None  # [B] float, per sequence: the task's verifier reward, if any
    # --- set by the controller (advantage stage) ------------------------------------------------
    rewards_BT: torch.Tensor | None = None  # [B, T] float, per token: KL-penalized reward
    kl_BT: torch.Tensor | None = None  # [B, T] float, per token: KL estimate to the reference
    advantages_BT: torch.Tensor | None = None  # [B, T] float, per token: (whitened) advantages
    returns_BT: torch.Tensor | None = None  # [B, T] float, per token: critic regression targets
    # [B, T] float, per token: the sampler's log-probs, kept when old_logprobs_BT were recomputed by the trainer
    rollout_logprobs_BT: torch.Tensor | None = None
    # [B, T] float, per token: an episode's per-turn environment rewards, each at its turn's last sampled token
    # (multi-turn episodes, rlhf/envs/episode.py); scores_B is then their sum
    turn_rewards_BT: torch.Tensor | None = None
    # --- text, per sequence ----------------------------------------------------------------------
    prompts: list[str] | None = None  # B prompt strings (as given to the tokenizer)
    # B prompts as the dataset gave them (a string or chat messages; None where truncated): what a reward
    # model with its own tokenizer and chat template re-encodes (rlhf/data/retokenize.py). Set by the controller.
    raw_prompts: list[Any] | None = None
    responses: list[str] | None = None  # B decoded responses (special tokens stripped)
    references: list[Any] | None = None  # B task references (e.g. gold answers) for rule rewards
    extra: dict[str, Any] = field(default_factory=dict)  # small per-batch scalars only, never tensors

    def __post_init__(self) -> None:
        self.validate()

    # --- shape queries ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.input_ids_BS.shape[0])

    @property
    def response_len(self) -> int:
        """T: number of response columns."""
        return int(self.mask_BT.shape[1])

    @property
    def prompt_len(self) -> int:
        """S − T: number of (left-padded) prompt columns."""
        return int(self.input_ids_BS.shape[1]) - self.response_len

    @property
    def response_ids_BT(self) -> torch.Tensor:
        """[B, T] long: the response token ids (padding where `mask_BT` is 0)."""
        return self.input_ids_BS[:, self.prompt_len:]

    def validate(self) -> None:
        """Raise ValueError naming the field whose shape disagrees with B, S or T."""
        B, S = self.input_ids_BS.shape
        T = self.mask_BT.shape[1] if self.mask_BT.dim() == 2 else -1
        if self.mask_BT.dim() != 2 or self.mask_BT.shape[0] != B or T > S:
            raise ValueError(f"RolloutBatch.mask_BT: expected [B={B}, T<=S={S}], got {tuple(self.mask_BT.shape)}")
        expected = {name: (B, S) for name in _SEQUENCE_FIELDS_BS}
        expected.update({name: (B, T) for name in _TOKEN_FIELDS_BT})
        expected.update({name: (B,) for name in _ROW_FIELDS_B})
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"RolloutBatch.{name}: expected shape {shape}, got {tuple(value.shape)}")
        for name in _LIST_FIELDS:
            value = getattr(self, name)
            if value is not None and len(value) != B:
                raise ValueError(f"RolloutBatch.{name}: expected {B} entries, got {len(value)}")

    # --- row selection ---------------------------------------------------------------------------
    def select(self, index: torch.Tensor | Sequence[int] | slice) -> "RolloutBatch":
        """Rows `index` (a slice, a list of ints or a long tensor), in that order."""
        rows = index if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long)
        updates: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                updates[f.name] = value[rows]
            elif f.name in _LIST_FIELDS and value is not None:
                updates[f.name] = value[rows] if isinstance(rows, slice) else [value[i] for i in rows.tolist()]
        return dataclasses.replace(self, **updates, extra=dict(self.extra))

    def split(self, size: int) -> list["RolloutBatch"]:
        """Consecutive chunks of `size` rows (the last may be shorter); order preserved."""
        if size <= 0:
            raise ValueError(f"split size must be positive, got {size}")
        return [self.select(slice(i, i + size)) for i in range(0, len(self), size)]

    def chunk(self, n: int) -> list["RolloutBatch"]:
        """`n` contiguous shards for data-parallel ranks; requires B divisible by n (no silent drops)."""
        if n <= 0 or len(self) % n:
            raise ValueError(f"cannot shard a batch of {len(self)} sequences into {n} equal parts")
        return self.split(len(self) // n)

    def shard(self, rank: int, world_size: int) -> "RolloutBatch":
        """The contiguous shard of data-parallel rank `rank` out of `world_size`."""
        return self.chunk(world_size)[rank]

    # --- combination and movement ----------------------------------------------------------------
    @staticmethod
    def concat(batches: Sequence["RolloutBatch"]) -> "RolloutBatch":
        """Concatenate rows in order. Batches with different S or T are padded first (see `pad_to`)."""
        if not batches:
            raise ValueError("RolloutBatch.concat needs at least one batch")
        T = max(b.response_len for b in batches)
        prompt = max(b.prompt_len for b in batches)
        padded = [b.pad_to(prompt_len=prompt, response_len=T) for b in batches]
        merged: dict[str, Any] = {}
        for f in fields(RolloutBatch):
            values = [getattr(b, f.name) for b in padded]
            if f.name == "extra":
                merged[f.name] = dict(padded[0].extra)
            elif all(v is None for v in values):
                merged[f.name] = None
            elif any(v is None for v in values):
                raise ValueError(f"RolloutBatch.concat: field {f.name} is set in some batches but not all")
            elif isinstance(values[0], torch.Tensor):
                merged[f.name] = torch.cat(values, dim=0)
            else:
                merged[f.name] = [item for v in values for item in v]
        return RolloutBatch(**merged)

    def pad_to(self, prompt_len: int, response_len: int, pad_token_id: int = 0) -> "RolloutBatch":
        """Left-pad the prompt block to `prompt_len` and right-pad the response block to `response_len`.

        Padding is masked (attention 0, mask 0, every per-token float 0), so no computed value changes.
        """
        if prompt_len < self.prompt_len or response_len < self.response_len:
            raise ValueError(f"pad_to({prompt_len}, {response_len}) cannot shrink a batch of "
                             f"prompt_len {self.prompt_len}, response_len {self.response_len}")
        left, right = prompt_len - self.prompt_len, response_len - self.response_len
        if left == 0 and right == 0:
            return self
        updates: dict[str, Any] = {}
        for name in _SEQUENCE_FIELDS_BS:
            fill = pad_token_id if name == "input_ids_BS" else 0
            updates[name] = torch.nn.functional.pad(getattr(self, name), (left, right), value=fill)
        for name in _TOKEN_FIELDS_BT:
            value = getattr(self, name)
            if value is not None:
                updates[name] = torch.nn.functional.pad(value, (0, right), value=0)
        return dataclasses.replace(self, **updates, extra=dict(self.extra))

    def trim(self) -> "RolloutBatch":
        """The inverse of `pad_to`: drop the prompt columns that are padding in every row (left) and the
        response columns that are padding in every row (right), keeping at least one response column.

        What a micro-batch of short rows out of a long batch computes on: the valid tokens and their
        positions (taken from the attention mask) are unchanged, so every computed value is the same —
        only the padded width is not paid for. `pad_to(batch.prompt_len, batch.response_len)` undoes it.
        """
        P, T = self.prompt_len, self.response_len
        attended_S = self.attention_mask_BS.bool().any(0)
        first = int(attended_S[:P].long().argmax()) if bool(attended_S[:P].any()) else P
        valid_T = attended_S[P:] | self.mask_BT.bool().any(0)
        last = int(valid_T.nonzero().max()) + 1 if bool(valid_T.any()) else min(1, T)
        if first == 0 and last == T:
            return self
        updates: dict[str, Any] = {name: getattr(self, name)[:, first:P + last] for name in _SEQUENCE_FIELDS_BS}
        for name in _TOKEN_FIELDS_BT:
            value = getattr(self, name)
            if value is not None:
                updates[name] = value[:, :last]
        return dataclasses.replace(self, **updates, extra=dict(self.extra))

    def row_widths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([B], [B]) long: the prompt columns and the response columns each row needs (what `trim` keeps)."""
        attended_BS = self.attention_mask_BS.bool()
        P = self.prompt_len
        prompt_B = attended_BS[:, :P].sum(-1)
        response_B = prompt_B.new_zeros(len(self))  # no response block: a reward model's re-encoded rows
        if self.response_len:
            response_B = (attended_BS[:, P:] | self.mask_BT.bool()).long().cumsum(-1).argmax(-1) + 1
        return prompt_B, response_B

    def by_length(self) -> torch.Tensor:
        """[B] long: the row order that sorts rows by (prompt columns, response columns) they need, stable.
        Consecutive micro-batches of rows in this order are each as narrow as `trim` can make them."""
        prompt_B, response_B = self.row_widths()
        key_B = (prompt_B + response_B) * (self.input_ids_BS.shape[1] + 1) + response_B
        return torch.sort(key_B, stable=True).indices

    def split_by_tokens(self, max_tokens: int, min_micro_batches: int = 1, setting: str = "max_tokens") -> list["RolloutBatch"]:
        """Consecutive micro-batches (in row order: sort with `by_length` first) of at most `max_tokens`
        padded tokens each, after `trim`; with fewer than `min_micro_batches` the ones with most rows are
        halved until there are that many (ranks must run the same number of passes). `token_budget_groups`
        has the rule; `setting` names the config field in its error."""
        prompt_B, response_B = self.row_widths()
        groups = token_budget_groups(prompt_B.tolist(), response_B.tolist(), max_tokens, min_micro_batches, setting)
        return [self.select(torch.tensor(rows)) for rows in groups]

    def to(self, device: torch.device | str) -> "RolloutBatch":
        """A copy with every tensor on `device`."""
        updates = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                   if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **updates, extra=dict(self.extra))

    def num_tokens(self) -> int:
        """Number of valid response tokens: the global normalizer of token-mean losses."""
        return int(self.mask_BT.sum().item())


def token_budget_groups(prompt_widths: Sequence[int], response_widths: Sequence[int], max_tokens: int,
                        min_groups: int = 1, setting: str = "max_tokens") -> list[list[int]]:
    """Consecutive row groups whose padded size, rows × (widest prompt + widest response in the group), is at
    most `max_tokens` (greedy: a row joins the current group while it fits). A row that alone needs more is
    a ValueError naming `setting`. With fewer than `min_groups` groups, the group with the most rows is halved
    (its first half first) until there are `min_groups`; more than the rows is a ValueError."""
    groups: list[list[int]] = []
    widest_p = widest_r = 0
    for row, (p, r) in enumerate(zip(prompt_widths, response_widths)):
        if p + r > max_tokens:
            raise ValueError(f"{setting}={max_tokens} is smaller than one row ({p} prompt + {r} response tokens): "
                             "raise it to at least the longest prompt + response")
        wp, wr = max(widest_p, p), max(widest_r, r)
        if groups and (len(groups[-1]) + 1) * (wp + wr) <= max_tokens:
            groups[-1].append(row)
            widest_p, widest_r = wp, wr
        else:
            groups.append([row])
            widest_p, widest_r = p, r
    if min_groups > len(prompt_widths):
        raise ValueError(f"cannot cut {len(prompt_widths)} rows into {min_groups} micro-batches")
    while len(groups) < min_groups:
        i = max(range(len(groups)), key=lambda g: len(groups[g]))
        half = (len(groups[i]) + 1) // 2
        groups[i:i + 1] = [groups[i][:half], groups[i][half:]]
    return groups
