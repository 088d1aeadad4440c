"""Preference datasets: (prompt, chosen, rejected) pairs for Bradley–Terry reward-model training.

    ds = PreferenceDataset("data/preferences_train.jsonl", tokenizer, max_len=32)
    ds[0]    # PreferenceExample(prompt="23+58=", chosen_ids=[..., eos], rejected_ids=[..., eos], tag="plus_1")
    batch = ds.collate([ds[0], ds[1]])   # PreferenceBatch

Rows: `prompt_key` holds a string or chat messages; `chosen_key`/`rejected_key` hold the response
text (or, with a chat prompt, assistant message lists); `tag_key` (optional) a per-pair label kept
for per-type reporting, e.g. the arithmetic task's `negative_type`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rlhf.data.collate import PreferenceBatch, collate_preferences
from rlhf.data.encode import EncodedDataset, render_prompt_response, tokenize
from rlhf.data.sources import expect_text_or_messages

logger = logging.getLogger(__name__)


@dataclass
class PreferenceExample:
    index: int  # row index in the source
    prompt: str  # prompt text as given to the tokenizer
    chosen_ids: list[int]  # [S_c] prompt + chosen response ids (EOS / end-of-turn included unless truncated)
    rejected_ids: list[int]  # [S_r] prompt + rejected response ids
    prompt_len: int  # number of prompt ids at the start of both sequences
    tag: str | None = None  # value of `tag_key`, if the data has it


class PreferenceDataset(EncodedDataset):
    """Tokenized preference pairs from a hub name or a local json/jsonl/parquet/csv file or directory.

    Args:
        source, tokenizer, split, use_chat_template, cache_dir: as for `PromptDataset`.
        prompt_key, chosen_key, rejected_key: field names.
        tag_key: optional field with a per-pair label (a string, or null for no tag); None to ignore.
        max_len: limit on prompt+response tokens of each sequence (None = no limit).
        overlong: "error" | "truncate" (cut each sequence to its first `max_len` tokens; a pair whose
            prompt alone reaches `max_len`, or whose two sequences become equal, is dropped instead) |
            "drop". Counts land in `self.stats`. Note that truncation removes the EOS a reward model
            usually reads its score at.
        padding_side: side padded by `collate` ("right" by default).
    """

    def __init__(self, source: str | Path, tokenizer: Any, *, split: str = "train", prompt_key: str = "prompt",
                 chosen_key: str = "chosen", rejected_key: str = "rejected", tag_key: str | None = "negative_type",
                 use_chat_template: bool | None = None, max_len: int | None = None, overlong: str = "error",
                 padding_side: str = "right", cache_dir: str | None = None):
        rows = self._load(source, tokenizer, split=split, cache_dir=cache_dir, overlong=overlong, limit=max_len,
                          limit_name="max_len")
        self.max_len, self.padding_side = max_len, padding_side
        columns = {key: rows.column(key) for key in (prompt_key, chosen_key, rejected_key)}
        tags = rows.column(tag_key) if tag_key is not None and tag_key in rows.columns else None

        prompts, chosen, rejected, plain = [], [], [], []
        for i in range(len(rows)):
            prompt = expect_text_or_messages(rows, i, prompt_key, columns[prompt_key][i])
            pair = []
            for key in (chosen_key, rejected_key):
                response = expect_text_or_messages(rows, i, key, columns[key][i])
                try:
                    pair.append(render_prompt_response(tokenizer, prompt, response, use_chat_template))
                except ValueError as exc:
                    raise rows.error(i, key, str(exc)) from exc
            (prompt_text, chosen_text, is_chat), (_, rejected_text, _) = pair
            if chosen_text == rejected_text:
                raise rows.error(i, rejected_key, "expected a response different from the chosen one, got the same text")
            if tags is not None and tags[i] is not None and not isinstance(tags[i], str):
                raise rows.error(i, tag_key, f"expected a string tag, got {tags[i]!r}")
            prompts.append(prompt_text)
            chosen.append(chosen_text)
            rejected.append(rejected_text)
            plain.append(not is_chat)
        prompt_ids = tokenize(tokenizer, prompts, plain)
        chosen_ids = tokenize(tokenizer, chosen, [False] * len(chosen))
        rejected_ids = tokenize(tokenizer, rejected, [False] * len(rejected))
        eos = [tokenizer.eos_token_id]

        self.examples: list[PreferenceExample] = []
        for i in range(len(rows)):
            p = prompt_ids[i]
            c = p + chosen_ids[i] + (eos if plain[i] else [])
            r = p + rejected_ids[i] + (eos if plain[i] else [])
            longest = max(len(c), len(r))
            if max_len is not None and longest > max_len:
                if self.overlong == "error":
                    raise rows.error(i, chosen_key if len(c) >= len(r) else rejected_key,
                                     f"sequence has {longest} tokens, expected at most max_len={max_len} "
                                     "(or set overlong='truncate'/'drop')")
                c, r = c[:max_len], r[:max_len]
                if self.overlong == "drop" or len(p) >= max_len or c == r:
                    self.stats.dropped_rows.append(i)
                    continue
                self.stats.truncated_rows.append(i)
            self.examples.append(PreferenceExample(index=i, prompt=prompts[i], chosen_ids=c, rejected_ids=r,
                                                   prompt_len=len(p), tag=tags[i] if tags is not None else None))
        self._finish(rows.source, "preference pairs", f"max_len={max_len}", field=chosen_key)

    def tag_counts(self) -> dict[str | None, int]:
        """How many pairs carry each tag (e.g. per arithmetic negative type)."""
        counts: dict[str | None, int] = {}
        for e in self.examples:
            counts[e.tag] = counts.get(e.tag, 0) + 1
        return counts

    def collate(self, examples: Sequence[PreferenceExample]) -> PreferenceBatch:
        """PreferenceBatch padded on `padding_side` (a `collate_fn`)."""
        return collate_preferences(examples, pad_token_id=self.tokenizer.pad_token_id, padding_side=self.padding_side)
