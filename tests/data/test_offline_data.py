"""Offline RL data (rlhf/data/offline.py): saved rollouts read back into the batch they came from, text rows
tokenized as SFT rows, advantages against a slow per-group loop, and bad data refused with file and row."""
import json
import math

import pyarrow.parquet as pq
import pytest
import torch

from rlhf.config.offline import OfflineDataConfig
from rlhf.data.offline import OfflineDataset, data_files, offline_batch, row_advantages
from rlhf.data.sources import DataError
from rlhf.trainers.rollout_store import write_rollout_shard
from tests.trainers.test_rollout_store import hand_built_batch


def saved_run(tmp_path, steps=(1, 2)):
    """Two steps of the hand-built batch (rlhf/trainers/rollout_store.py's test batch) as shards; step 2's
    scores differ so the groups of the two steps differ."""
    for step in steps:
        batch = hand_built_batch()
        if step == 2:
            batch.scores_B = torch.tensor([0.0, 0.0, 3.0, 1.0])
        write_rollout_shard(tmp_path, step, batch, weight_version=step - 1)
    return tmp_path / "rollouts"


class Vocab100:
    """The rollouts' tokenizer as far as the loader asks: 100 ids (the hand-built batch uses ids up to 91)."""

    pad_token_id, eos_token_id = 0, 1

    def __len__(self) -> int:
        return 100


@pytest.fixture
def vocab():
    return Vocab100()


def config(train, **kwargs) -> OfflineDataConfig:
    return OfflineDataConfig(train=str(train), **kwargs)


def test_saved_rollouts_come_back_as_the_batch_they_were_written_from(tmp_path, vocab):
    data = OfflineDataset(config(saved_run(tmp_path, steps=(1,))), vocab, advantage="none")
    assert data.format == "rollouts" and len(data) == 4
    batch, original = offline_batch(list(data), vocab.pad_token_id), hand_built_batch()
    # same layout (left-padded prompts, right-padded responses) and the same values where they matter
    assert torch.equal(batch.input_ids_BS * batch.attention_mask_BS, original.input_ids_BS * original.attention_mask_BS)
    assert torch.equal(batch.attention_mask_BS, original.attention_mask_BS)
    assert torch.equal(batch.mask_BT, original.mask_BT)  # row 3's hole (environment tokens) kept
    assert torch.allclose(batch.old_logprobs_BT, original.old_logprobs_BT)
    assert torch.equal(batch.scores_B, original.scores_B) and torch.equal(batch.gold_B, original.gold_B)
    # advantage "none": the reward itself, on trained tokens only
    assert torch.equal(batch.advantages_BT, original.scores_B[:, None] * original.mask_BT)


def test_groups_are_per_step_and_advantages_match_a_slow_loop(tmp_path, vocab):
    data = OfflineDataset(config(saved_run(tmp_path)), vocab, advantage="grpo", eps=1e-6)
    assert data.num_groups == 4 and data.num_files == 2  # (step, group_id) pairs
    rewards = [e.reward for e in data]
    expected = []
    for e in data:
        members = [r for r, other in zip(rewards, data) if other.group == e.group]
        mean = sum(members) / len(members)
        std = math.sqrt(sum((r - mean) ** 2 for r in members) / (len(members) - 1))
        expected.append((e.reward - mean) / (std + 1e-6))
    assert [e.advantage for e in data] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    report = data.report()
    assert report["data_rows"] == 8 and report["data_groups"] == 4 and report["data_gold_mean"] == 0.5
    assert report["data_zero_advantage_fraction"] == 0.25  # step 2's first group: equal rewards, no signal


def test_row_advantages_rloo_and_dr_grpo_by_hand():
    rewards_N, groups_N = torch.tensor([1.0, 0.0, 0.0, 2.0, 4.0]), torch.tensor([0, 0, 0, 1, 1])
    assert row_advantages(rewards_N, groups_N, "dr_grpo").tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, -1, 1])
    assert row_advantages(rewards_N, groups_N, "rloo").tolist() == pytest.approx([1, -0.5, -0.5, -2, 2])
    assert row_advantages(rewards_N, groups_N, "none").tolist() == rewards_N.tolist()


def test_text_rows_are_tokenized_like_sft_rows_and_grouped_by_prompt(write_jsonl, tokenizer, cache_dir):
    path = write_jsonl([{"prompt": "1+2=", "response": "3", "score": 1.0},
                        {"prompt": "1+2=", "response": "4", "score": 0.0},
                        {"prompt": "5+5=", "response": "10", "score": 1.0}])
    with pytest.raises(DataError, match="behaviour=reference"):
        OfflineDataset(config(path), tokenizer, cache_dir=cache_dir)
    data = OfflineDataset(config(path, behaviour="reference"), tokenizer, advantage="dr_grpo", cache_dir=cache_dir)
    assert data.format == "text" and data.num_groups == 2
    first = data[0]
    assert tokenizer.decode(first.prompt_ids) == "1+2=" and first.response_ids[-1] == tokenizer.eos_token_id
    assert first.response_mask == [1] * len(first.response_ids) and first.behaviour_logprobs is None
    # a group of one has no baseline (rlhf/algorithms/advantages.py group_mean_std): its reward is its advantage
    assert [e.advantage for e in data] == pytest.approx([0.5, -0.5, 1.0])
    assert offline_batch(list(data), tokenizer.pad_token_id).old_logprobs_BT is None  # taken from the reference


def _rewrite(path, column, values):
    table = pq.read_table(path)
    import pyarrow as pa

    table = table.set_column(table.column_names.index(column), column, pa.array(values, type=table.schema.field(column).type))
    pq.write_table(table, path)


@pytest.mark.parametrize("column, values, message", [
    ("response_mask", [[1, 1, 1], [1], [1, 1, 1, 1], [1, 0, 0, 1]], r"row 1, field 'response_mask': has 1 entries but"),
    ("behaviour_logprobs", [[-0.1] * 3, [-0.1] * 2, [-0.1] * 4, [-0.1] * 5], r"row 3, field 'behaviour_logprobs'"),
    ("score", [1.0, float("nan"), 0.0, 0.0], r"row 1, field 'score': expected the row's reward as a finite number"),
    ("behaviour_logprobs", [[-0.1] * 3, [float("nan"), -0.1], [-0.1] * 4, [-0.1] * 4], r"row 1, field 'behaviour_logprobs'"),
    ("response_ids", [[21, 22, 1], [23, 1], [24, 25, 26, 27], [28, 90, 9999, 29]], r"row 3, field 'response_ids': token id 9999"),
])
def test_bad_rows_are_refused_naming_the_file_the_row_and_the_field(tmp_path, vocab, column, values, message):
    rollouts = saved_run(tmp_path)
    bad = rollouts / "step_000002.parquet"
    _rewrite(bad, column, values)
    with pytest.raises(DataError, match=message) as info:
        OfflineDataset(config(rollouts), vocab)
    assert str(bad) in str(info.value)  # the file, not only the directory


def test_a_missing_column_and_a_too_long_row_are_named(tmp_path, vocab):
    rollouts = saved_run(tmp_path, steps=(1,))
    table = pq.read_table(rollouts / "step_000001.parquet").drop_columns(["behaviour_logprobs"])
    pq.write_table(table, rollouts / "step_000001.parquet")
    with pytest.raises(DataError, match=r"field 'behaviour_logprobs': missing field .*behaviour=reference"):
        OfflineDataset(config(rollouts), vocab)
    data = OfflineDataset(config(rollouts, behaviour="reference"), vocab)  # then it is not needed
    assert data[0].behaviour_logprobs is None
    with pytest.raises(DataError, match=r"row 2, field 'response_ids': prompt \+ response have 7 tokens, expected at most"):
        OfflineDataset(config(rollouts, behaviour="reference", max_len=6), vocab)
    with pytest.raises(DataError, match=r"field 'group': missing field"):
        OfflineDataset(config(rollouts, behaviour="reference", group_keys=["group"]), vocab)


def test_sources_a_directory_a_glob_and_nothing(tmp_path):
    rollouts = saved_run(tmp_path)
    (rollouts / ".step_000003.parquet.tmp-1").write_bytes(b"partial")  # a crashed writer's temporary file
    assert [p.name for p in data_files(str(rollouts))] == ["step_000001.parquet", "step_000002.parquet"]
    assert [p.name for p in data_files(str(rollouts / "*2.parquet"))] == ["step_000002.parquet"]
    with pytest.raises(DataError, match="matches no file"):
        data_files(str(rollouts / "*.jsonl"))
    assert data_files("org/some-dataset") is None  # a hub name: load_rows resolves it


def test_jsonl_rollouts_with_mismatched_lengths_name_the_line(write_jsonl, vocab, cache_dir):
    row = {"prompt_ids": [11, 12], "response_ids": [21, 1], "response_mask": [1, 1],
           "behaviour_logprobs": [-0.5, -0.1], "score": 1.0, "step": 1, "group_id": 0}
    path = write_jsonl([row, {**row, "response_mask": [1, 1, 1]}])
    with pytest.raises(DataError, match=r"row 1 \(line 2\), field 'response_mask'"):
        OfflineDataset(config(path), vocab, cache_dir=cache_dir)
    assert json.loads(path.read_text().splitlines()[0])["score"] == 1.0
