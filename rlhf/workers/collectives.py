"""Reductions across the ranks of one role, for the workers: the rule of which device a collective's
tensor must be on lives in `rlhf.engine.collectives` (the only module that calls torch.distributed
collectives); this module keeps the workers' import path."""
from __future__ import annotations

from rlhf.engine.collectives import all_reduce_max, all_reduce_sum, barrier

__all__ = ["all_reduce_max", "all_reduce_sum", "barrier"]
