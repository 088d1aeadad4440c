"""Tiny models for tests/models, built once per session (≈1 s) in a temp dir.

Models use initializer_range=0.2 so random logits are peaked enough that sampling options visibly
change what is sampled (with the default 0.02 every token is ≈ equally likely).
"""
import pytest

from rlhf.models.tiny import build_tiny_model, build_tiny_reward_model, build_tiny_tokenizer

ARCHS = ("llama", "gpt2")
TINY = dict(num_layers=2, hidden_size=64, num_heads=4, initializer_range=0.2)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    build_tiny_tokenizer(root / "tok")
    return root


@pytest.fixture(scope="session")
def lm_dirs(tiny_root):
    """{arch: causal-LM directory}."""
    return {arch: build_tiny_model(tiny_root / f"lm_{arch}", tiny_root / "tok", arch=arch, seed=0, **TINY)
            for arch in ARCHS}


@pytest.fixture(scope="session")
def rm_dirs(tiny_root):
    """{arch: reward-model directory} (random but saved score head)."""
    return {arch: build_tiny_reward_model(tiny_root / f"rm_{arch}", tiny_root / "tok", arch=arch, seed=1, **TINY)
            for arch in ARCHS}


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param
