"""SFT datasets: demonstrations, with the loss on response tokens only.

    ds = SFTDataset("data/sft.jsonl", tokenizer, max_len=32)
    ds[0]    # SFTExample(input_ids=[prompt..., response..., eos], labels=[-100 × prompt, response..., eos])
    batch = ds.collate([ds[0], ds[1]])   # SFTBatch: input_ids_BS, attention_mask_BS, labels_BS

Two row formats, chosen by the columns present:
- `messages_key` (default "messages"): a chat conversation whose LAST message is an assistant turn;
  `train_on="last"` (default) trains on that turn only, the earlier messages are the prompt;
  `train_on="assistant"` trains on every assistant turn of a multi-turn demonstration (a tool call, the
  answer after the tool's reply): user and tool turns are context, as an environment's are in RL;
- otherwise `prompt_key` + `response_key`: a prompt (string or chat messages) and the response string.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rlhf.data.collate import IGNORE_INDEX, SFTBatch, collate_sft
from rlhf.data.encode import EncodedDataset, chat_text, render_prompt_response, tokenize
from rlhf.data.sources import expect_messages, expect_text, expect_text_or_messages

logger = logging.getLogger(__name__)
TRAIN_ON = ("last", "assistant")  # SFTDataset(train_on=...): which assistant turns of a chat row are trained on


@dataclass
class SFTExample:
    index: int  # row index in the source
    input_ids: list[int]  # [S] prompt + response ids
    labels: list[int]  # [S] IGNORE_INDEX on the prompt, the response ids after it
    prompt_len: int  # number of prompt ids (the leading IGNORE_INDEX labels)


class SFTDataset(EncodedDataset):
    """Tokenized demonstrations from a hub name or a local json/jsonl/parquet/csv file or directory.

    Args:
        source, tokenizer, split, use_chat_template, cache_dir: as for `PromptDataset`.
        prompt_key, response_key: fields of the prompt/response format.
        messages_key: field of the chat format; used when the rows have it.
        max_len: limit on prompt+response tokens (None = no limit).
        overlong: "error" | "truncate" (keep the first `max_len` tokens; a row left with no response
            token is dropped instead) | "drop". Counts land in `self.stats`.
        padding_side: side padded by `collate` ("right" by default).
    """

    def __init__(self, source: str | Path, tokenizer: Any, *, split: str = "train", prompt_key: str = "prompt",
                 response_key: str = "response", messages_key: str | None = "messages",
                 use_chat_template: bool | None = None, max_len: int | None = None, overlong: str = "error",
                 padding_side: str = "right", cache_dir: str | None = None, train_on: str = "last"):
        if train_on not in TRAIN_ON:
            raise ValueError(f"SFTDataset: train_on={train_on!r}, expected one of {list(TRAIN_ON)}")
        rows = self._load(source, tokenizer, split=split, cache_dir=cache_dir, overlong=overlong, limit=max_len,
                          limit_name="max_len")
        self.max_len, self.padding_side = max_len, padding_side
        self.format = "messages" if messages_key is not None and messages_key in rows.columns else "prompt_response"
        if self.format == "messages":
            conversations = rows.column(messages_key)
        else:
            prompt_column, response_column = rows.column(prompt_key), rows.column(response_key)

        prompts, responses, plain, labelled = [], [], [], {}
        for i in range(len(rows)):
            if self.format == "messages":
                key = messages_key
                messages = expect_messages(rows, i, key, conversations[i])
                if len(messages) < 2 or messages[-1]["role"] != "assistant":
                    raise rows.error(i, key, "expected at least two messages, the last with role 'assistant', "
                                     f"got roles {[m['role'] for m in messages]}")
                if train_on == "assistant":
                    try:
                        labelled[i] = assistant_labels(tokenizer, messages)
                    except ValueError as exc:
                        raise rows.error(i, key, str(exc)) from exc
                    prompts.append("")  # encoded whole above; empty texts keep the batched lists aligned
                    responses.append("")
                    plain.append(False)
                    continue
                prompt, response = messages[:-1], messages[-1:]
            else:
                key = response_key
                prompt = expect_text_or_messages(rows, i, prompt_key, prompt_column[i])
                response = expect_text(rows, i, response_key, response_column[i])
            try:
                prompt_text, response_text, is_chat = render_prompt_response(tokenizer, prompt, response,
                                                                             use_chat_template)
            except ValueError as exc:
                raise rows.error(i, key, str(exc)) from exc
            prompts.append(prompt_text)
            responses.append(response_text)
            plain.append(not is_chat)
        prompt_ids = tokenize(tokenizer, prompts, plain)
        response_ids = tokenize(tokenizer, responses, [False] * len(responses))
        eos = [tokenizer.eos_token_id]

        self.examples: list[SFTExample] = []
        for i in range(len(rows)):
            if i in labelled:  # every assistant turn trained on: the "prompt" is what precedes the first
                ids, labels = labelled[i]
                start = next(t for t, label in enumerate(labels) if label != IGNORE_INDEX)
                p, r = ids[:start], ids[start:]
            else:
                p, r = prompt_ids[i], response_ids[i] + (eos if plain[i] else [])
            if max_len is not None and len(p) + len(r) > max_len:
                if self.overlong == "error":
                    raise rows.error(i, messages_key if self.format == "messages" else response_key,
                                     f"prompt+response has {len(p) + len(r)} tokens, expected at most "
                                     f"max_len={max_len} (or set overlong='truncate'/'drop')")
                if self.overlong == "drop" or len(p) >= max_len:
                    self.stats.dropped_rows.append(i)
                    continue
                r = r[: max_len - len(p)]
                self.stats.truncated_rows.append(i)
            labels = [IGNORE_INDEX] * len(p) + r
            if i in labelled:
                labels = labelled[i][1][:len(p) + len(r)]
            self.examples.append(SFTExample(index=i, input_ids=p + r, labels=labels, prompt_len=len(p)))
        self._finish(rows.source, "SFT demonstrations", f"max_len={max_len}")

    def collate(self, examples: Sequence[SFTExample]) -> SFTBatch:
        """SFTBatch padded on `padding_side` (a `collate_fn`)."""
        return collate_sft(examples, pad_token_id=self.tokenizer.pad_token_id, padding_side=self.padding_side)


def assistant_labels(tokenizer: Any, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, labels) of a whole conversation rendered with the chat template, the labels IGNORE_INDEX
    except on each assistant turn (its content and what the template closes it with).

    Turn k's tokens are found by rendering the conversation up to it (with the generation prompt) and
    through it; both renderings' ids must be prefixes of the whole one's, else ValueError (a template or
    tokenizer that merges across turns cannot be split into turns token for token)."""
    ids = tokenize(tokenizer, [chat_text(tokenizer, messages, False)], [False])[0]
    labels = [IGNORE_INDEX] * len(ids)
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = (tokenize(tokenizer, [chat_text(tokenizer, messages[:k], True)], [False])[0] if k else [],
                           tokenize(tokenizer, [chat_text(tokenizer, messages[:k + 1], False)], [False])[0])
        for part in (before, through):
            if ids[:len(part)] != part:
                raise ValueError(f"assistant turn {k}: the conversation's ids up to it are not a prefix of the whole "
                                 "conversation's (the tokenizer merges across turns); use train_on='last'")
        labels[len(before):len(through)] = ids[len(before):len(through)]
    return ids, labels

