"""Tiny models for tests/rollout, built once per session: a Llama whose head dim (32) vLLM's CPU
attention supports (it has no kernel for 16), so the same directories serve the vLLM lane."""
import pytest

from rlhf.models.tiny import build_tiny_model, build_tiny_tokenizer

TINY = dict(num_layers=2, hidden_size=64, num_heads=2, initializer_range=0.2)


@pytest.fixture(scope="session")
def rollout_models(tmp_path_factory):
    """{"tok", "lm", "lm_other"}: a tokenizer and two causal LMs with different weights (seeds 0, 1)."""
    root = tmp_path_factory.mktemp("rollout_models")
    build_tiny_tokenizer(root / "tok")
    return {"tok": root / "tok",
            "lm": build_tiny_model(root / "lm", root / "tok", seed=0, **TINY),
            "lm_other": build_tiny_model(root / "lm_other", root / "tok", seed=1, **TINY)}
