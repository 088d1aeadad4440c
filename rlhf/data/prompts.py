"""Prompt datasets: what the actor generates from in PPO (and evaluation prompts with gold answers).

    ds = PromptDataset("data/train_prompts.jsonl", tokenizer, max_prompt_len=32, overlong="drop")
    ds[0]            # PromptExample(index=0, prompt="23+58=", input_ids=[...], reference="81")
    ds.stats         # DatasetStats: total / kept / truncated / dropped
    batch = ds.collate([ds[0], ds[1]])   # PromptBatch, left-padded

Rows: `prompt_key` holds a string or a list of chat messages; `reference_key` (optional) a gold
answer of any JSON type, carried unchanged to rule-based rewards (e.g. the arithmetic verifier).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rlhf.data.collate import PromptBatch, collate_prompts
from rlhf.data.encode import EncodedDataset, render_prompt, tokenize
from rlhf.data.sources import expect_text_or_messages

logger = logging.getLogger(__name__)


@dataclass
class PromptExample:
    index: int  # row index in the source
    prompt: str  # prompt text as given to the tokenizer (chat template applied if any)
    input_ids: list[int]  # [L] prompt token ids, after any truncation
    reference: Any = None  # gold answer / reference for rule rewards, if the data has one
    raw_prompt: Any = None  # the row's prompt as given (string or chat messages); None when truncated


class PromptDataset(EncodedDataset):
    """Tokenized prompts from a hub name or a local json/jsonl/parquet/csv file or directory.

    Args:
        source: file, directory or hub dataset name (see `rlhf.data.sources.load_rows`).
        tokenizer: an HF tokenizer with pad and eos tokens.
        split: the split to read ("train", "test[:100]", ...).
        prompt_key: field holding the prompt: a string or a list of chat messages.
        reference_key: field holding the reference answer, or None. When the field exists every row
            must have a non-null value; when it is absent, references are None unless
            `require_reference` (then it is an error).
        use_chat_template: None = apply the chat template to messages only; True = also wrap plain
            prompts as a user message; False = never (messages are then an error).
        max_prompt_len: limit on prompt tokens (None = no limit).
        overlong: "error" | "truncate" (keep the LAST `max_prompt_len` tokens, since generation
            continues from the end of the prompt) | "drop". Counts land in `self.stats`.
    """

    def __init__(self, source: str | Path, tokenizer: Any, *, split: str = "train", prompt_key: str = "prompt",
                 reference_key: str | None = "answer", require_reference: bool = False,
                 use_chat_template: bool | None = None, max_prompt_len: int | None = None,
                 overlong: str = "error", cache_dir: str | None = None):
        rows = self._load(source, tokenizer, split=split, cache_dir=cache_dir, overlong=overlong,
                          limit=max_prompt_len, limit_name="max_prompt_len")
        self.max_prompt_len = max_prompt_len
        prompts = rows.column(prompt_key)
        references: list[Any] | None = None
        if reference_key is not None and reference_key in rows.columns:
            references = rows.column(reference_key)
            for i, value in enumerate(references):
                if value is None:
                    raise rows.error(i, reference_key, "expected a reference value, got null (or missing)")
        elif require_reference:
            raise rows.error(0, reference_key, f"missing field (required reference); the rows have fields "
                             f"{rows.columns}")
        texts, templated = [], []
        for i, value in enumerate(prompts):
            value = expect_text_or_messages(rows, i, prompt_key, value)
            try:
                text, is_chat = render_prompt(tokenizer, value, use_chat_template)
            except ValueError as exc:
                raise rows.error(i, prompt_key, str(exc)) from exc
            texts.append(text)
            templated.append(is_chat)
        ids = tokenize(tokenizer, texts, [not t for t in templated])

        self.examples: list[PromptExample] = []
        for i, (text, input_ids, raw) in enumerate(zip(texts, ids, prompts)):
            if not input_ids:
                raise rows.error(i, prompt_key, "expected a prompt with at least one token, got none")
            if max_prompt_len is not None and len(input_ids) > max_prompt_len:
                if self.overlong == "error":
                    raise rows.error(i, prompt_key, f"prompt has {len(input_ids)} tokens, expected at most "
                                     f"max_prompt_len={max_prompt_len} (or set overlong='truncate'/'drop')")
                if self.overlong == "drop":
                    self.stats.dropped_rows.append(i)
                    continue
                input_ids, raw = input_ids[-max_prompt_len:], None
                self.stats.truncated_rows.append(i)
            reference = references[i] if references is not None else None
            self.examples.append(PromptExample(index=i, prompt=text, input_ids=input_ids, reference=reference,
                                               raw_prompt=raw))
        self._finish(rows.source, "prompts", f"max_prompt_len={max_prompt_len}", field=prompt_key)

    def collate(self, examples: Sequence[PromptExample]) -> PromptBatch:
        """Left-padded PromptBatch (a `collate_fn` for DataLoader / ResumableLoader)."""
        return collate_prompts(examples, pad_token_id=self.tokenizer.pad_token_id)
