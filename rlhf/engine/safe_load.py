"""Resuming never unpickles arbitrary objects: DeepSpeed's checkpoint files are read with
`torch.load(weights_only=True)` (issue 16 §17).

DeepSpeed 0.19 reads its own checkpoints with `weights_only=False`, i.e. full pickle: a tampered or
foreign `*_states.pt` in a run directory could run code when a run resumes. Our engines swap in a
checkpoint engine whose `load` uses torch's restricted unpickler, with only the few plain DeepSpeed
classes its state files hold allow-listed (found by loading ZeRO 0/2/3 checkpoints: a loss-scaler
record, the ZeRO stage enum, and fragment addresses). Anything else in a file is refused with an
error naming the file and the class, and nothing in it is executed.
"""
from __future__ import annotations

import pickle

import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine


def deepspeed_state_classes() -> list[type]:
    """The DeepSpeed classes a ZeRO 0-3 checkpoint's state files hold (plain records, no behaviour on load)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file holds an object that the restricted unpickler does not load."""


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's default checkpoint engine, loading with `weights_only=True`."""

    def load(self, path: str, map_location=None):
        try:
            with torch.serialization.safe_globals(deepspeed_state_classes()):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            reason = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), str(exc).splitlines()[0])
            raise UnsafeCheckpointError(f"{path}: refused to load: {reason} (checkpoints are read with "
                                        f"torch.load(weights_only=True); rlhf/engine/safe_load.py)") from None


def use_weights_only_loading(ds_engine) -> None:
    """Swap `ds_engine`'s default checkpoint engine for WeightsOnlyCheckpointEngine (same config)."""
    if type(ds_engine.checkpoint_engine) is TorchCheckpointEngine:
        ds_engine.checkpoint_engine = WeightsOnlyCheckpointEngine(ds_engine._config)
    else:  # a writer/datastates engine configured by hand: its own loader stays, and we say so
        raise TypeError(f"rlhf reads checkpoints with weights_only=True but this DeepSpeed config selects "
                        f"{type(ds_engine.checkpoint_engine).__name__}; remove its checkpoint writer settings")
