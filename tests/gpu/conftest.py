"""tests/gpu: files ending `_gpu.py` need a CUDA device and are skipped without one; the other files
test the CUDA-free parts of the one-GPU smoke check (bench/gpu_smoke.py) on CPU."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (tests/gpu/*_gpu.py)")
    for item in items:
        if item.path.name.endswith("_gpu.py"):
            item.add_marker(skip)
