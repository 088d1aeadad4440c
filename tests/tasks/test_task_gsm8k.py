"""The GSM8K verifier and data conversion, on a hand-written sample in GSM8K's format (no download)."""
import json

import pytest

from rlhf.data.prompts import PromptDataset
from rlhf.data.sources import DataError
from rlhf.models.tiny import build_tiny_tokenizer
from rlhf.tasks import get_task, gsm8k_reward

SAMPLE = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A book costs $1,200 and a pen $5. Total?", "answer": "1200 + 5 = 1205\n#### 1,205"},
    {"question": "Half of 9?", "answer": "9 / 2 = 4.5\n#### 4.5"},
]


@pytest.mark.parametrize("response,reference,expected", [
    ("3 + 4 = 7. #### 7", "#### 7", 1.0),
    ("so the answer is 7", "7", 1.0),             # no ####: the last number counts
    ("7 apples, then 2 more... 9", "7", 0.0),       # the last number, not the first
    ("#### 1,205", "1205", 1.0),                    # thousands separators
    ("The total is $1205.", "1,205", 1.0),          # "$" and a trailing period
    ("#### 4.50", "4.5", 1.0),                      # equal by value
    ("#### 7 then 8", "7", 1.0),                    # after ####, the first number
    ("", "7", 0.0), ("no idea", "7", 0.0), (None, "7", 0.0),
    ("#### -3", "-3", 1.0), ("#### 3", "-3", 0.0),
])
def test_verifier(response, reference, expected):
    assert gsm8k_reward(response, reference) == expected


def test_reference_without_a_number_is_a_data_error():
    with pytest.raises(ValueError, match="no number"):
        gsm8k_reward("7", "unknown")


def test_write_files_converts_gsm8k_rows_for_the_prompt_loader(tmp_path):
    src = tmp_path / "gsm8k"
    src.mkdir()
    for split in ("train", "test"):
        (src / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SAMPLE))
    files = get_task("gsm8k", source=str(src)).write_files(tmp_path / "out")
    rows = [json.loads(line) for line in files["train_prompts"].read_text().splitlines()]
    assert [r["answer"] for r in rows] == ["7", "1205", "4.5"]
    assert rows[0]["prompt"].startswith("Tom has 3 apples") and rows[0]["prompt"].endswith('after "####".')
    tok = build_tiny_tokenizer(tmp_path / "tok", alphabet="".join(sorted({c for r in rows for c in r["prompt"]})))
    prompts = PromptDataset(files["eval_prompts"], tok)
    assert len(prompts) == 3 and prompts[1].reference == "1205"


def test_malformed_source_row_names_the_row_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(SAMPLE[0]) + "\n" + json.dumps({"question": "x?", "answer": "no final"}) + "\n")
    with pytest.raises(DataError, match=r"row 1.*answer"):
        get_task("gsm8k", source=str(bad)).write_files(tmp_path / "out")


def test_hub_name_with_config_is_passed_to_datasets(monkeypatch, tmp_path):
    """`org/name:config` reaches datasets.load_dataset as (name, config); offline it fails naming the source."""
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config, kwargs.get("split")))
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataError, match="openai/gsm8k:main"):
        get_task("gsm8k").write_files(tmp_path / "out")
    assert calls == [("openai/gsm8k", "main", "train")]
