"""RolloutBatch.trim and by_length: padding-free micro-batches (issue 17) lose nothing and undo exactly."""
import pytest
import torch

from rlhf.data.batch import RolloutBatch

PAD = 0


def _batch(prompts, responses, extra_left=0, extra_right=0) -> RolloutBatch:
    """Rows of the given prompt/response lengths, left/right padded by the longest plus `extra_*`."""
    P, T = max(prompts) + extra_left, max(responses) + extra_right
    B = len(prompts)
    ids = torch.full((B, P + T), PAD)
    attention = torch.zeros(B, P + T, dtype=torch.long)
    mask = torch.zeros(B, T)
    g = torch.Generator().manual_seed(0)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        ids[b, P - p:P + r] = torch.randint(3, 30, (p + r,), generator=g)
        attention[b, P - p:P + r] = 1
        mask[b, :r] = 1
    values = torch.randn(B, T, generator=g) * mask
    return RolloutBatch(input_ids_BS=ids, attention_mask_BS=attention, mask_BT=mask, values_BT=values,
                        old_logprobs_BT=-values.abs(), scores_B=torch.arange(B, dtype=torch.float),
                        responses=[f"r{b}" for b in range(B)])


def test_trim_drops_only_columns_that_are_padding_in_every_row():
    batch = _batch([2, 5, 3], [4, 1, 3], extra_left=3, extra_right=6)
    trimmed = batch.trim()
    assert (trimmed.prompt_len, trimmed.response_len) == (5, 4)
    assert trimmed.num_tokens() == batch.num_tokens() and trimmed.attention_mask_BS.sum() == batch.attention_mask_BS.sum()
    assert trimmed.responses == batch.responses and torch.equal(trimmed.scores_B, batch.scores_B)
    restored = trimmed.pad_to(batch.prompt_len, batch.response_len)
    for name in ("input_ids_BS", "attention_mask_BS", "mask_BT", "values_BT", "old_logprobs_BT"):
        assert torch.equal(getattr(restored, name), getattr(batch, name)), name
    assert trimmed.trim() is trimmed  # nothing left to trim


def test_a_batch_without_valid_response_tokens_keeps_one_response_column():
    batch = _batch([2, 3], [0, 0], extra_right=4)
    assert batch.trim().response_len == 1 and batch.trim().prompt_len == 3


def test_by_length_groups_short_rows_together_and_is_stable():
    batch = _batch([2, 9, 2, 9, 3, 2], [1, 8, 1, 7, 2, 1])
    order = batch.by_length().tolist()
    assert order == [0, 2, 5, 4, 3, 1]  # equal lengths keep their order
    micros = [m.trim() for m in batch.select(order).split(3)]
    assert [(m.prompt_len, m.response_len) for m in micros] == [(2, 1), (9, 8)]
    padded_cells = sum(len(m) * m.input_ids_BS.shape[1] for m in micros)
    assert padded_cells == 3 * (2 + 1) + 3 * (9 + 8) < len(batch) * batch.input_ids_BS.shape[1]  # 60 cells, not 102


def test_rows_without_a_response_block_sort_and_trim_by_their_tokens():
    """A reward model's re-encoded rows (rlhf/data/retokenize.py) have T = 0: sorted by attended tokens,
    trimmed on the left only."""
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 5], [0, 0, 0, 4]])
    batch = RolloutBatch(input_ids_BS=ids, attention_mask_BS=(ids != 0).long(), mask_BT=torch.zeros(3, 0))
    assert batch.by_length().tolist() == [2, 0, 1]
    assert batch.select([2, 0]).trim().input_ids_BS.tolist() == [[0, 4], [5, 6]]
    assert batch.trim().response_len == 0


def test_token_budget_groups_pack_short_rows_together_and_cut_to_a_count():
    from rlhf.data.batch import token_budget_groups

    # (prompt, response) widths in length order; a group costs rows × (widest prompt + widest response)
    prompts, responses = [2, 2, 2, 3, 3, 5], [2, 2, 2, 3, 5, 5]
    assert token_budget_groups(prompts, responses, 12) == [[0, 1, 2], [3], [4], [5]]  # 3 × 4 = 12 fits
    assert token_budget_groups(prompts, responses, 16) == [[0, 1, 2], [3, 4], [5]]  # 2 × (3 + 5) = 16 fits
    assert token_budget_groups(prompts, responses, 10) == [[0, 1], [2], [3], [4], [5]]
    # as many groups as another rank needs: the group with most rows is halved, the first of equals first
    assert token_budget_groups(prompts, responses, 16, min_groups=5) == [[0], [1], [2], [3, 4], [5]]
    with pytest.raises(ValueError, match=r"max_tokens=9 is smaller than one row \(5 prompt \+ 5 response"):
        token_budget_groups(prompts, responses, 9)
    with pytest.raises(ValueError, match="cannot cut 6 rows into 7"):
        token_budget_groups(prompts, responses, 100, min_groups=7)


def test_split_by_tokens_keeps_every_row_once_in_order_within_the_budget():
    batch = _batch([2, 5, 3, 1, 4], [4, 1, 3, 6, 2], extra_left=3, extra_right=6)
    ordered = batch.select(batch.by_length())
    micros = ordered.split_by_tokens(14, min_micro_batches=4)
    assert len(micros) == 4
    assert sum((m.responses for m in micros), []) == ordered.responses  # every row once, in order
    for micro in micros:
        trimmed = micro.trim()
        assert len(trimmed) * trimmed.input_ids_BS.shape[1] <= 14
