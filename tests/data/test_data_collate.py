"""Padding layouts of the collated batches, checked as exact tensors."""
from types import SimpleNamespace

import pytest
import torch

from rlhf.data import IGNORE_INDEX, collate_preferences, collate_prompts, collate_sft, pad_sequences

PAD = 0


def test_prompts_are_left_padded():
    examples = [SimpleNamespace(index=4, prompt="a", input_ids=[5, 6, 7], reference="x"),
                SimpleNamespace(index=9, prompt="b", input_ids=[8], reference=None)]
    batch = collate_prompts(examples, pad_token_id=PAD)
    assert batch.input_ids_BL.tolist() == [[5, 6, 7], [PAD, PAD, 8]]
    assert batch.attention_mask_BL.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.input_ids_BL.dtype == batch.attention_mask_BL.dtype == torch.long
    assert batch.prompts == ["a", "b"] and batch.references == ["x", None] and batch.indices == [4, 9]
    assert len(batch) == 2 and batch.to("cpu").input_ids_BL.tolist() == batch.input_ids_BL.tolist()


def test_preference_pairs_share_one_length():
    examples = [SimpleNamespace(index=0, prompt="p", chosen_ids=[5, 6, 1], rejected_ids=[5, 6, 7, 7, 1],
                                prompt_len=2, tag="t"),
                SimpleNamespace(index=1, prompt="q", chosen_ids=[5, 1], rejected_ids=[5, 7, 1], prompt_len=1, tag=None)]
    right = collate_preferences(examples, pad_token_id=PAD)
    assert right.chosen_input_ids_BS.tolist() == [[5, 6, 1, PAD, PAD], [5, 1, PAD, PAD, PAD]]
    assert right.rejected_input_ids_BS.tolist() == [[5, 6, 7, 7, 1], [5, 7, 1, PAD, PAD]]
    assert right.chosen_attention_mask_BS.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    left = collate_preferences(examples, pad_token_id=PAD, padding_side="left")
    assert left.chosen_input_ids_BS.tolist() == [[PAD, PAD, 5, 6, 1], [PAD, PAD, PAD, 5, 1]]
    assert left.rejected_attention_mask_BS.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert right.prompt_lens_B.tolist() == [2, 1] and right.tags == ["t", None]


def test_sft_padding_carries_no_loss():
    examples = [SimpleNamespace(index=0, input_ids=[5, 6, 7, 1], labels=[IGNORE_INDEX, 6, 7, 1], prompt_len=1),
                SimpleNamespace(index=1, input_ids=[5, 1], labels=[IGNORE_INDEX, 1], prompt_len=1)]
    batch = collate_sft(examples, pad_token_id=PAD)
    assert batch.input_ids_BS.tolist() == [[5, 6, 7, 1], [5, 1, PAD, PAD]]
    assert batch.labels_BS.tolist() == [[IGNORE_INDEX, 6, 7, 1], [IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch.attention_mask_BS.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_pad_sequences_checks_its_arguments():
    values, mask = pad_sequences([[1], []], pad_value=9, side="left", length=3)
    assert values.tolist() == [[9, 9, 1], [9, 9, 9]] and mask.tolist() == [[0, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="padding side"):
        pad_sequences([[1]], 0, side="middle")
    with pytest.raises(ValueError, match="cannot pad sequences of length 2 to 1"):
        pad_sequences([[1, 2]], 0, length=1)
