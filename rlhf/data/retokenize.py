"""Rollouts in another model's tokens: a reward model with its own tokenizer (and chat template).

The actor samples in its own token ids; a reward model from another family reads other ids, so scoring
the actor's ids with it would be garbage without any error. `Retokenizer` turns each rollout row into
the reward model's ids the way its training data was encoded (rlhf/data/encode.py): the prompt as the
dataset gave it (a string or chat messages, `RolloutBatch.raw_prompts`) and the decoded response, either
as plain text (prompt with the RM tokenizer's special tokens, response without, EOS appended when the
actor's response ended with EOS) or through the RM's chat template (`use_chat_template`, as for
datasets). When both tokenizers are the same (`same_tokenizer`), the actor's ids are used as they are.

    retok = Retokenizer(actor_tokenizer, rm_tokenizer, use_chat_template=None, max_len=2048)
    ids_BS, mask_BS = retok(batch)        # [B, S'] long, right-padded with the RM's pad id; [B, S'] long
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from rlhf.data.collate import pad_sequences
from rlhf.data.encode import check_tokenizer, render_prompt_response, tokenize

SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def tokenizer_difference(a: Any, b: Any) -> str | None:
    """None when `a` and `b` map every token to the same id (vocabulary and special tokens), else the first
    difference found, in words."""
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    if len(vocab_a) != len(vocab_b):
        return f"vocabulary sizes differ ({len(vocab_a)} vs {len(vocab_b)})"
    if vocab_a != vocab_b:
        token = next(t for t in vocab_a if vocab_b.get(t) != vocab_a[t])
        return f"token {token!r} has id {vocab_a[token]} in one and {vocab_b.get(token)} in the other"
    for name in SPECIAL_IDS:
        if getattr(a, name, None) != getattr(b, name, None):
            return f"{name} differs ({getattr(a, name, None)} vs {getattr(b, name, None)})"
    return None


def same_tokenizer(a: Any, b: Any) -> bool:
    return tokenizer_difference(a, b) is None


class Retokenizer:
    """The reward model's token ids of rollout rows (see the module docstring).

    Args:
        source: the actor's tokenizer (decodes prompts that have no raw form).
        target: the reward model's tokenizer.
        use_chat_template: None = the target's template for chat-message prompts only; True = also wrap
            plain prompts as a user message; False = never.
        max_len: the reward model's context; a longer row is an error naming it (a truncated row would
            be scored on another text than the one sampled).
    """

    def __init__(self, source: Any, target: Any, use_chat_template: bool | None = None, max_len: int | None = None):
        check_tokenizer(target)
        self.source, self.target = source, target
        self.use_chat_template, self.max_len = use_chat_template, max_len

    def encode(self, prompts: Sequence[Any], responses: Sequence[str], ended: Sequence[bool]) -> list[list[int]]:
        """[B] id lists: prompt + response in the target's tokens; `ended[i]`: row i's response ended with EOS."""
        prompt_texts, response_texts, templated = [], [], []
        for row, (prompt, response) in enumerate(zip(prompts, responses)):
            try:
                p, r, chat = render_prompt_response(self.target, prompt, response, self.use_chat_template)
            except ValueError as err:
                raise ValueError(f"rollout row {row}: cannot render it for the reward model's tokenizer: {err}") from err
            prompt_texts.append(p)
            response_texts.append(r)
            templated.append(chat)
        prompt_ids = tokenize(self.target, prompt_texts, [not chat for chat in templated])
        response_ids = tokenize(self.target, response_texts, [False] * len(response_texts))
        eos = self.target.eos_token_id
        rows = []
        for row, (p, r, chat, done) in enumerate(zip(prompt_ids, response_ids, templated, ended)):
            ids = p + r + ([eos] if done and not chat else [])
            if self.max_len is not None and len(ids) > self.max_len:
                raise ValueError(f"rollout row {row}: {len(ids)} tokens in the reward model's tokenizer, more than its "
                                 f"context of {self.max_len}")
            rows.append(ids)
        return rows

    def __call__(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids_BS, mask_BS) of a RolloutBatch, right-padded with the target's pad id."""
        raw = batch.raw_prompts if batch.raw_prompts is not None else [None] * len(batch)
        decoded = self._decoded_prompts(batch) if any(p is None for p in raw) else raw
        prompts = [p if p is not None else d for p, d in zip(raw, decoded)]
        ended = (~batch.truncated_B).tolist() if batch.truncated_B is not None else [True] * len(batch)
        rows = self.encode(prompts, batch.responses, ended)
        return pad_sequences(rows, self.target.pad_token_id, side="right")

    def _decoded_prompts(self, batch) -> list[str]:
        prompt_BL = batch.input_ids_BS[:, :batch.prompt_len]
        mask_BL = batch.attention_mask_BS[:, :batch.prompt_len].bool()
        return [self.source.decode(ids[keep].tolist(), skip_special_tokens=True) for ids, keep in zip(prompt_BL, mask_BL)]
