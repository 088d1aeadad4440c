"""Fixtures for the data tests: the project's char-level tokenizer and helpers to write bad files."""
import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """Char-level tokenizer: 0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, one id per character; trivial chat template."""
    from rlhf.models.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture
def cache_dir(tmp_path):
    """A private `datasets` cache, so tests neither read nor litter the user's cache."""
    return str(tmp_path / "hf_cache")


@pytest.fixture
def write_jsonl(tmp_path):
    """write_jsonl(rows, name) → path; a row that is a str is written verbatim as one line."""
    def write(rows, name="data.jsonl") -> Path:
        path = tmp_path / name
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
        return path

    return write

