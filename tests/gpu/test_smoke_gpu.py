"""Every check of the one-GPU smoke script on the CUDA device (skipped without one: conftest.py)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import gpu_smoke  # noqa: E402


@pytest.mark.parametrize("check", [c for c in gpu_smoke.CHECKS if c != "quickstart_ray"])
def test_smoke_check_passes_on_the_gpu(check, tmp_path):
    ctx = gpu_smoke.Context("cuda", gpu_smoke.FULL, tmp_path / "work", tmp_path / "out")
    result = gpu_smoke.run_check(check, ctx)
    assert result.status in ("passed", "skipped"), result.error
