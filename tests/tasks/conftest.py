"""Fixtures for the task tests."""
import pytest


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """The project's char-level tokenizer (the one the embedded default trains with)."""
    from rlhf.models.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))
