"""Checkpoints are read with torch.load(weights_only=True) (issue 16 §17): DeepSpeed's own state files
load, a file holding any other Python object is refused without running it. The engines' resume
through this loader is proven by tests/engine/test_engines.py (ZeRO 0, 2 and 3)."""
import os

import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from rlhf.engine.safe_load import UnsafeCheckpointError, WeightsOnlyCheckpointEngine  # noqa: E402


class Payload:
    """What a tampered checkpoint could hold: unpickling it would create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_holding_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "extra": Payload(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"mp_rank_00_model_states.pt: refused to load: .*GLOBAL.*open"):
        WeightsOnlyCheckpointEngine().load(str(path))
    assert not marker.exists()
    torch.load(path, weights_only=False)  # negative control: the full unpickler DeepSpeed uses runs it
    assert marker.exists()


def test_deepspeed_state_records_load(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    path = tmp_path / "optim_states.pt"
    state = {"optimizer_state_dict": {"zero_stage": ZeroStageEnum.gradients, "loss_scaler": LossScaler(1.0),
                                      "state": {0: {"exp_avg": torch.zeros(3)}}}, "ds_version": "0.19"}
    torch.save(state, path)
    loaded = WeightsOnlyCheckpointEngine().load(str(path), map_location=lambda storage, loc: storage)
    assert loaded["optimizer_state_dict"]["zero_stage"] == ZeroStageEnum.gradients
    assert torch.equal(loaded["optimizer_state_dict"]["state"][0]["exp_avg"], torch.zeros(3))
