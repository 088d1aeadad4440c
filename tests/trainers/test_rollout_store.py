"""Saved rollouts (rlhf/trainers/rollout_store.py): one atomic Parquet shard per step, loadable by
`datasets`, unpadded token lists that match the batch they came from."""
import math

import datasets
import torch

from rlhf.data.batch import RolloutBatch
from rlhf.trainers.rollout_store import ROLLOUT_COLUMNS, shard_path, write_rollout_shard


def hand_built_batch() -> RolloutBatch:
    """2 prompts x 2 samples. Prompt block of 3 (left-padded), response block of 4 (right-padded); row 3's
    mask has a hole (an environment's tokens inside the response, as a multi-turn episode will have)."""
    pad = 0
    input_ids_BS = torch.tensor([[pad, 11, 12, 21, 22, 1, pad],
                                 [pad, 11, 12, 23, 1, pad, pad],
                                 [13, 14, 15, 24, 25, 26, 27],
                                 [13, 14, 15, 28, 90, 91, 29]])
    attention_mask_BS = (input_ids_BS != pad).long()
    attention_mask_BS[1, 3:5] = 1
    mask_BT = torch.tensor([[1., 1., 1., 0.], [1., 1., 0., 0.], [1., 1., 1., 1.], [1., 0., 0., 1.]])
    old_BT = -torch.arange(1, 17, dtype=torch.float32).reshape(4, 4) / 10 * mask_BT
    return RolloutBatch(
        input_ids_BS=input_ids_BS, attention_mask_BS=attention_mask_BS, mask_BT=mask_BT, old_logprobs_BT=old_BT,
        ref_logprobs_BT=old_BT - 0.5 * mask_BT, group_ids_B=torch.tensor([0, 0, 1, 1]),
        truncated_B=torch.tensor([False, False, True, False]), scores_B=torch.tensor([1.0, 0.0, 0.5, 0.25]),
        gold_B=torch.tensor([1.0, 0.0, 1.0, 0.0]), prompts=["ab", "ab", "cde", "cde"],
        responses=["xy", "z", "wxyz", "w..z"], references=["3", "3", {"k": 1}, {"k": 1}])


def test_shard_round_trips_through_datasets(tmp_path):
    path = write_rollout_shard(tmp_path, 7, hand_built_batch(), weight_version=12)
    assert path == shard_path(tmp_path, 7) and path.name == "step_000007.parquet"
    rows = datasets.load_dataset("parquet", data_files=str(tmp_path / "rollouts" / "*.parquet"), split="train")
    assert tuple(rows.column_names) == ROLLOUT_COLUMNS and len(rows) == 4
    assert rows["step"] == [7] * 4 and rows["weight_version"] == [12] * 4
    assert rows["group_id"] == [0, 0, 1, 1] and rows["sample_index"] == [0, 1, 0, 1]
    assert rows["prompt_ids"] == [[11, 12], [11, 12], [13, 14, 15], [13, 14, 15]]
    assert rows["response_ids"] == [[21, 22, 1], [23, 1], [24, 25, 26, 27], [28, 90, 91, 29]]
    assert rows["response_mask"] == [[1, 1, 1], [1, 1], [1, 1, 1, 1], [1, 0, 0, 1]]
    assert [len(x) for x in rows["behaviour_logprobs"]] == [3, 2, 4, 4]
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(rows["behaviour_logprobs"][0], [-0.1, -0.2, -0.3]))
    assert all(math.isclose(r - b, -0.5, abs_tol=1e-6) for r, b in zip(rows["ref_logprobs"][2], rows["behaviour_logprobs"][2]))
    assert rows["sampler_logprobs"] == [None] * 4 and rows["turn_rewards"] == [None] * 4  # not in this batch
    assert rows["score"] == [1.0, 0.0, 0.5, 0.25] and rows["gold"] == [1.0, 0.0, 1.0, 0.0]
    assert rows["truncated"] == [False, False, True, False]
    assert rows["reference"] == ["3", "3", '{"k": 1}', '{"k": 1}'] and rows["response"][0] == "xy"


def test_rewriting_a_step_replaces_it_atomically(tmp_path):
    batch = hand_built_batch()
    write_rollout_shard(tmp_path, 1, batch, weight_version=0)
    batch.scores_B = torch.tensor([9.0, 9.0, 9.0, 9.0])
    write_rollout_shard(tmp_path, 1, batch, weight_version=0)  # a resumed run re-doing step 1
    files = sorted(p.name for p in (tmp_path / "rollouts").iterdir())
    assert files == ["step_000001.parquet"]  # no temporary file left, one shard per step
    rows = datasets.load_dataset("parquet", data_files=str(shard_path(tmp_path, 1)), split="train")
    assert rows["score"] == [9.0] * 4


def test_missing_scores_and_gold_are_nan(tmp_path):
    batch = hand_built_batch()
    batch.gold_B = None
    write_rollout_shard(tmp_path, 2, batch, weight_version=3)
    rows = datasets.load_dataset("parquet", data_files=str(shard_path(tmp_path, 2)), split="train")
    assert all(math.isnan(g) for g in rows["gold"])


def test_an_episode_batch_keeps_its_turn_rewards(tmp_path):
    batch = hand_built_batch()
    batch.turn_rewards_BT = torch.zeros_like(batch.mask_BT)
    batch.turn_rewards_BT[3, 0] = 0.5  # row 3's first turn ends at its first token, then environment tokens
    write_rollout_shard(tmp_path, 1, batch, weight_version=0)
    rows = datasets.load_dataset("parquet", data_files=str(shard_path(tmp_path, 1)), split="train")
    assert rows["turn_rewards"] == [[0.0] * 3, [0.0] * 2, [0.0] * 4, [0.5, 0.0, 0.0, 0.0]]
