"""Collation: lists of tokenized examples → padded tensors in small typed batches.

Shape key: `B` rows in the batch, `L` prompt tokens (prompt batches), `S` prompt+response tokens.
Every mask is 1 on real tokens and 0 on padding; every padded id is the tokenizer's pad id.
- prompts are always LEFT-padded, so generation continues from the last column of every row;
- preference pairs and SFT sequences are right-padded by default (`padding_side="left"` also works);
  chosen and rejected are padded to one common S, so the two can go through one forward pass as
  `torch.cat([chosen_input_ids_BS, rejected_input_ids_BS])`.
SFT labels follow the HF convention: aligned with `input_ids_BS` (the model shifts them), −100 on
prompt tokens and padding, so the loss covers response tokens only.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch

IGNORE_INDEX = -100  # label of tokens that carry no loss (torch's cross_entropy default ignore_index)


def pad_sequences(seqs: Sequence[Sequence[int]], pad_value: int, side: str = "right",
                  length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad `seqs` to `length` (default: the longest) → (values [B, length] long, mask [B, length] long)."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    longest = max((len(s) for s in seqs), default=0)
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"cannot pad sequences of length {longest} to {length}")
    values = torch.full((len(seqs), length), pad_value, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, seq in enumerate(seqs):
        n = len(seq)
        if n == 0:
            continue
        cols = slice(length - n, length) if side == "left" else slice(0, n)
        values[row, cols] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, cols] = 1
    return values, mask


class _TensorBatch:
    """`.to(device)` and `len()` for the batch dataclasses below."""

    def to(self, device: torch.device | str):
        updates = {f.name: getattr(self, f.name).to(device) for f in fields(self)  # type: ignore[arg-type]
                   if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **updates)  # type: ignore[type-var]

    def __len__(self) -> int:
        return int(next(getattr(self, f.name) for f in fields(self)  # type: ignore[arg-type]
                        if isinstance(getattr(self, f.name), torch.Tensor)).shape[0])


@dataclass
class PromptBatch(_TensorBatch):
    input_ids_BL: torch.Tensor  # [B, L] long: prompt ids, left-padded
    attention_mask_BL: torch.Tensor  # [B, L] long: 1 on prompt tokens, 0 on left padding
    prompts: list[str]  # B prompt texts
    references: list[Any]  # B references (None where the data has none)
    indices: list[int]  # B row indices in the source


@dataclass
class PreferenceBatch(_TensorBatch):
    chosen_input_ids_BS: torch.Tensor  # [B, S] long: prompt + chosen response
    chosen_attention_mask_BS: torch.Tensor  # [B, S] long
    rejected_input_ids_BS: torch.Tensor  # [B, S] long: prompt + rejected response (same S)
    rejected_attention_mask_BS: torch.Tensor  # [B, S] long
    prompt_lens_B: torch.Tensor  # [B] long: prompt tokens at the start of both sequences
    prompts: list[str]  # B prompt texts
    tags: list[str | None]  # B per-pair tags (e.g. the arithmetic negative type), None if absent
    indices: list[int]  # B row indices in the source


@dataclass
class SFTBatch(_TensorBatch):
    input_ids_BS: torch.Tensor  # [B, S] long: prompt + response
    attention_mask_BS: torch.Tensor  # [B, S] long
    labels_BS: torch.Tensor  # [B, S] long: input ids on response tokens, IGNORE_INDEX elsewhere
    indices: list[int]  # B row indices in the source


def collate_prompts(examples: Sequence[Any], pad_token_id: int) -> PromptBatch:
    """PromptExamples → left-padded PromptBatch."""
    ids_BL, mask_BL = pad_sequences([e.input_ids for e in examples], pad_token_id, side="left")
    return PromptBatch(input_ids_BL=ids_BL, attention_mask_BL=mask_BL, prompts=[e.prompt for e in examples],
                       references=[e.reference for e in examples], indices=[e.index for e in examples])


def collate_preferences(examples: Sequence[Any], pad_token_id: int, padding_side: str = "right") -> PreferenceBatch:
    """PreferenceExamples → PreferenceBatch with chosen and rejected padded to one common S."""
    S = max(max(len(e.chosen_ids), len(e.rejected_ids)) for e in examples)
    chosen_BS, chosen_mask_BS = pad_sequences([e.chosen_ids for e in examples], pad_token_id, padding_side, S)
    rejected_BS, rejected_mask_BS = pad_sequences([e.rejected_ids for e in examples], pad_token_id, padding_side, S)
    return PreferenceBatch(
        chosen_input_ids_BS=chosen_BS, chosen_attention_mask_BS=chosen_mask_BS,
        rejected_input_ids_BS=rejected_BS, rejected_attention_mask_BS=rejected_mask_BS,
        prompt_lens_B=torch.tensor([e.prompt_len for e in examples], dtype=torch.long),
        prompts=[e.prompt for e in examples], tags=[e.tag for e in examples], indices=[e.index for e in examples],
    )


def collate_sft(examples: Sequence[Any], pad_token_id: int, padding_side: str = "right") -> SFTBatch:
    """SFTExamples → SFTBatch; padding gets label IGNORE_INDEX."""
    ids_BS, mask_BS = pad_sequences([e.input_ids for e in examples], pad_token_id, padding_side)
    labels_BS, _ = pad_sequences([e.labels for e in examples], IGNORE_INDEX, padding_side)
    return SFTBatch(input_ids_BS=ids_BS, attention_mask_BS=mask_BS, labels_BS=labels_BS,
                    indices=[e.index for e in examples])
