"""One session fixture runs the four DeepSpeed jobs the engine tests compare, concurrently.

Each job is a fresh process group (one process cannot change its world size), so they run as
subprocesses (`_launch.py` → `_job.py`): 1 rank at stage 0 (the reference, plus a plain-torch oracle),
2 ranks at ZeRO-2, 2 ranks at ZeRO-3, and a LoRA model on 2 ranks at ZeRO-3. Each does its updates,
checkpoint round trip and HF export in one go, so DeepSpeed start-up is paid 7 times in total rather
than once per check. The first run on a machine also JIT-compiles DeepSpeed's shared-memory comm op
(~40–70 s, cached afterwards).
"""
import pytest
import torch

from . import _launch

JOBS = {"ref": ("ref", 0, 1), "zero2": ("dp", 2, 2), "zero3": ("dp", 3, 2), "lora_zero3": ("lora", 3, 2)}


@pytest.fixture(scope="session")
def engine_jobs(tmp_path_factory):
    """{job name: (result dict written by rank 0, job directory)} for the jobs in JOBS."""
    root = tmp_path_factory.mktemp("engine_jobs")
    started = {name: (_launch.start(mode, stage, world, root / name), root / name)
               for name, (mode, stage, world) in JOBS.items()}
    for procs, out in started.values():
        _launch.wait(procs, out)
    return {name: (torch.load(out / "result.pt", weights_only=False), out) for name, (_, out) in started.items()}
