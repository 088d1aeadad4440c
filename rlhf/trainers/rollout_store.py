"""Each PPO step's rollouts as a dataset shard (`ppo.trainer.save_rollouts`): the owner of that format.

One Parquet file per step, `<stage_dir>/rollouts/step_<NNNNNN>.parquet`, written to a temporary name and
renamed into place, so a crash never leaves a partial shard; a resumed run re-samples the steps after its
checkpoint with the same seeds and rewrites their shards with the same rows. Load them with

    datasets.load_dataset("parquet", data_files="RUN/ppo/rollouts/*.parquet", split="train")

One row per sampled sequence (`ROLLOUT_COLUMNS`). Token lists are unpadded: `prompt_ids` are the prompt's
real tokens, `response_ids` run through the last token the policy sampled, and `response_mask`,
`behaviour_logprobs`, `ref_logprobs` (and `sampler_logprobs` when the run kept the rollout engine's own,
`turn_rewards` for multi-turn episodes: each turn's reward at its last sampled token, 0 elsewhere)
have one entry per response token. `behaviour_logprobs` are the log-probs of the weights that sampled
(`weight_version`) as the policy loss uses them; `score` is the reward the step trained on (before
shaping and the KL term), `gold` the task verifier's (NaN without one).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from rlhf.algorithms.kl import last_valid_index
from rlhf.data.batch import RolloutBatch

ROLLOUT_DIR = "rollouts"
ROLLOUT_COLUMNS = ("step", "weight_version", "group_id", "sample_index", "prompt", "response", "reference",
                   "prompt_ids", "response_ids", "response_mask", "behaviour_logprobs", "ref_logprobs",
                   "sampler_logprobs", "turn_rewards", "score", "gold", "truncated")


def shard_path(stage_dir: str | Path, step: int) -> Path:
    return Path(stage_dir) / ROLLOUT_DIR / f"step_{step:06d}.parquet"


def rollout_rows(batch: RolloutBatch, step: int, weight_version: int) -> dict[str, list]:
    """The batch as columns of ROLLOUT_COLUMNS (row order kept)."""
    T = batch.response_len
    prompt_mask_BP = batch.attention_mask_BS[:, : batch.input_ids_BS.shape[1] - T].bool()
    lengths_B = _response_lengths(batch.mask_BT)
    group_B = batch.group_ids_B if batch.group_ids_B is not None else torch.arange(len(batch))
    columns: dict[str, list] = {name: [] for name in ROLLOUT_COLUMNS}
    seen: dict[int, int] = {}
    for i in range(len(batch)):
        n, group = int(lengths_B[i]), int(group_B[i])
        seen[group] = seen.get(group, -1) + 1
        columns["step"].append(step)
        columns["weight_version"].append(int(weight_version))
        columns["group_id"].append(group)
        columns["sample_index"].append(seen[group])
        columns["prompt"].append(batch.prompts[i] if batch.prompts else None)
        columns["response"].append(batch.responses[i] if batch.responses else None)
        columns["reference"].append(_json(batch.references[i]) if batch.references else None)
        columns["prompt_ids"].append(batch.input_ids_BS[i, : prompt_mask_BP.shape[1]][prompt_mask_BP[i]].tolist())
        columns["response_ids"].append(batch.response_ids_BT[i, :n].tolist())
        columns["response_mask"].append(batch.mask_BT[i, :n].to(torch.int8).tolist())
        for name, tensor in (("behaviour_logprobs", batch.old_logprobs_BT), ("ref_logprobs", batch.ref_logprobs_BT),
                             ("sampler_logprobs", batch.rollout_logprobs_BT),
                             ("turn_rewards", batch.turn_rewards_BT)):
            columns[name].append(tensor[i, :n].float().tolist() if tensor is not None else None)
        columns["score"].append(float(batch.scores_B[i]) if batch.scores_B is not None else math.nan)
        columns["gold"].append(float(batch.gold_B[i]) if batch.gold_B is not None else math.nan)
        columns["truncated"].append(bool(batch.truncated_B[i]) if batch.truncated_B is not None else False)
    return columns


def write_rollout_shard(stage_dir: str | Path, step: int, batch: RolloutBatch, weight_version: int) -> Path:
    """Write step `step`'s shard atomically (temporary file, then rename); returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = shard_path(stage_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(rollout_rows(batch, step, weight_version), schema=_schema(pa))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def _schema(pa) -> Any:
    ints, floats = pa.list_(pa.int32()), pa.list_(pa.float32())
    return pa.schema([("step", pa.int32()), ("weight_version", pa.int64()), ("group_id", pa.int32()),
                      ("sample_index", pa.int32()), ("prompt", pa.string()), ("response", pa.string()),
                      ("reference", pa.string()), ("prompt_ids", ints), ("response_ids", ints),
                      ("response_mask", pa.list_(pa.int8())), ("behaviour_logprobs", floats),
                      ("ref_logprobs", floats), ("sampler_logprobs", floats), ("turn_rewards", floats),
                      ("score", pa.float32()),
                      ("gold", pa.float32()), ("truncated", pa.bool_())])


def _response_lengths(mask_BT: torch.Tensor) -> torch.Tensor:
    """[B] long: 1 + the index of each row's last response token with mask 1 (0 for an all-zero row)."""
    if mask_BT.shape[1] == 0:
        return torch.zeros(len(mask_BT), dtype=torch.long)
    last_B, has_B = last_valid_index(mask_BT)
    return (last_B + 1) * has_B


def _json(value: Any) -> str | None:
    """A reference as text: strings as they are, anything else as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)
