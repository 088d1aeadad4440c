"""Bad input never passes silently: every kind of malformed input raises a DataError naming the file,
the row (and line), the field, and what was expected. Also: every supported source kind loads."""
import json

import pytest

from rlhf.data import DataError, PreferenceDataset, PromptDataset, SFTDataset, load_rows


def raises_data_error(build, *, source, field=None, row=None, line=None, expected=None) -> DataError:
    with pytest.raises(DataError) as info:
        build()
    err, message = info.value, str(info.value)
    assert str(source) in message and err.source == str(source)
    if row is not None:
        assert err.row == row and f"row {row}" in message
    if line is not None:
        assert err.line == line and f"line {line}" in message
    if field is not None:
        assert err.field == field and repr(field) in message
    if expected is not None:
        assert expected in message
    return err


GOOD = {"prompt": "1+2=", "answer": "3"}


CHAT = {"prompt": [{"role": "user", "content": "1+2="}], "answer": "3"}


@pytest.mark.parametrize("good, bad_row, field, expected", [
    (GOOD, {"answer": "3"}, "prompt", "expected a non-empty string"),  # missing field
    (GOOD, {"prompt": 12, "answer": "3"}, "prompt", "got int 12 but row 0 has a string"),  # type changes
    (GOOD, {"prompt": "", "answer": "3"}, "prompt", "expected a non-empty string, got str ''"),  # empty text
    (GOOD, {"prompt": "   ", "answer": "3"}, "prompt", "expected a non-empty string"),  # whitespace only
    (GOOD, {"prompt": "1+2=", "answer": None}, "answer", "expected a reference value"),  # null reference
    (GOOD, {"prompt": "1+2=", "answer": 3}, "answer", "got int 3 but row 0 has a string"),  # would be coerced
    (CHAT, {"prompt": [{"role": "user"}], "answer": "3"}, "prompt", "message 0: expected a non-empty string 'content'"),
    (CHAT, {"prompt": [], "answer": "3"}, "prompt", "expected a non-empty list of chat messages"),
])
def test_prompt_field_errors_name_file_row_line_and_field(tokenizer, write_jsonl, cache_dir, good, bad_row, field,
                                                          expected):
    # a blank line before the bad row: row index 2 is on line 4
    path = write_jsonl([good, good, "", bad_row, good])
    raises_data_error(lambda: PromptDataset(path, tokenizer, cache_dir=cache_dir),
                      source=path, field=field, row=2, line=4, expected=expected)


def test_wrong_type_in_every_row(tokenizer, write_jsonl, cache_dir):
    path = write_jsonl([{"prompt": 5, "answer": "3"}, {"prompt": 12, "answer": "3"}])
    raises_data_error(lambda: PromptDataset(path, tokenizer, cache_dir=cache_dir), source=path, row=0, line=1,
                      field="prompt", expected="expected a non-empty string or a list of chat messages, got int 5")


def test_malformed_json_line_reports_its_line_number(tokenizer, write_jsonl, cache_dir):
    path = write_jsonl([GOOD, GOOD, '{"prompt": "1+1=", "answer": "2"', GOOD])
    err = raises_data_error(lambda: PromptDataset(path, tokenizer, cache_dir=cache_dir),
                            source=path, row=2, line=3, expected="malformed JSON")
    assert "one JSON object per line" in str(err)


def test_json_line_that_is_not_an_object(tokenizer, write_jsonl, cache_dir):
    path = write_jsonl([GOOD, "[1, 2]"])
    raises_data_error(lambda: PromptDataset(path, tokenizer, cache_dir=cache_dir),
                      source=path, row=1, line=2, expected="expected a JSON object, got list")


def test_missing_unreadable_and_unsupported_files(tokenizer, tmp_path, cache_dir):
    missing = tmp_path / "nope.jsonl"
    raises_data_error(lambda: PromptDataset(missing, tokenizer, cache_dir=cache_dir), source=missing,
                      expected="file not found")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    raises_data_error(lambda: PromptDataset(empty, tokenizer, cache_dir=cache_dir), source=empty,
                      expected="file is empty")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"prompt": "1+1="}\n{"prompt": "\xff\xfe"}\n')
    raises_data_error(lambda: PromptDataset(binary, tokenizer, cache_dir=cache_dir), source=binary, line=2,
                      expected="not valid UTF-8")
    text = tmp_path / "data.txt"
    text.write_text("1+1=\n")
    raises_data_error(lambda: PromptDataset(text, tokenizer, cache_dir=cache_dir), source=text,
                      expected="unsupported file type '.txt'")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    raises_data_error(lambda: PromptDataset(broken, tokenizer, cache_dir=cache_dir), source=broken,
                      expected="could not load split 'train'")


def test_hub_name_that_cannot_be_reached_is_named(tokenizer, cache_dir):
    # offline (tests/conftest.py): fails fast; the error names the dataset and the split
    raises_data_error(lambda: PromptDataset("no-such-org/no-such-dataset", tokenizer, split="test", cache_dir=cache_dir),
                      source="no-such-org/no-such-dataset", expected="could not load split 'test'")


def test_missing_column_lists_the_fields_present(tokenizer, write_jsonl, cache_dir):
    path = write_jsonl([{"question": "1+1=", "answer": "2"}])
    raises_data_error(lambda: PromptDataset(path, tokenizer, cache_dir=cache_dir), source=path, field="prompt",
                      row=0, expected="the rows have fields ['question', 'answer']")
    # configurable field names make the same file valid
    assert PromptDataset(path, tokenizer, prompt_key="question", cache_dir=cache_dir)[0].prompt == "1+1="


def test_preference_and_sft_field_errors(tokenizer, write_jsonl, cache_dir):
    pair = {"prompt": "1+1=", "chosen": "2", "rejected": "3"}
    path = write_jsonl([pair, {**pair, "rejected": None}])
    raises_data_error(lambda: PreferenceDataset(path, tokenizer, cache_dir=cache_dir), source=path, row=1, line=2,
                      field="rejected", expected="expected a non-empty string or a list of chat messages")
    path = write_jsonl([pair, {**pair, "rejected": "2"}], name="same.jsonl")
    raises_data_error(lambda: PreferenceDataset(path, tokenizer, cache_dir=cache_dir), source=path, row=1,
                      field="rejected", expected="different from the chosen one")
    path = write_jsonl([pair, {**pair, "negative_type": 7}], name="tag.jsonl")
    raises_data_error(lambda: PreferenceDataset(path, tokenizer, cache_dir=cache_dir), source=path, row=1,
                      field="negative_type", expected="expected a string tag")
    path = write_jsonl([{"prompt": "1+1=", "response": "2"}, {"prompt": "1+1=", "response": ""}], name="sft.jsonl")
    raises_data_error(lambda: SFTDataset(path, tokenizer, cache_dir=cache_dir), source=path, row=1, line=2,
                      field="response", expected="expected a non-empty string")
    conversation = [{"role": "user", "content": "1+1="}, {"role": "user", "content": "2"}]
    path = write_jsonl([{"messages": conversation}], name="chat.jsonl")
    raises_data_error(lambda: SFTDataset(path, tokenizer, cache_dir=cache_dir), source=path, row=0,
                      field="messages", expected="the last with role 'assistant'")


def test_csv_rows_are_checked_too(tokenizer, tmp_path, cache_dir):
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,answer\n1+1=,2\n,3\n")
    raises_data_error(lambda: PromptDataset(path, tokenizer, cache_dir=cache_dir), source=path, row=1,
                      field="prompt", expected="expected a non-empty string")


def test_every_source_kind_loads(tokenizer, tmp_path, cache_dir):
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(5)]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    array = tmp_path / "p.json"
    array.write_text(json.dumps(rows))
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,answer\n" + "".join(f"{r['prompt']},{r['answer']}\n" for r in rows))
    parquet = tmp_path / "p.parquet"
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    for path in (jsonl, array, csv, parquet):
        ds = PromptDataset(path, tokenizer, cache_dir=cache_dir)
        assert [e.prompt for e in ds] == [r["prompt"] for r in rows], path
        assert [str(e.reference) for e in ds] == [r["answer"] for r in rows], path
    # a single file is whatever split is asked for, slicing included
    assert [e.prompt for e in PromptDataset(jsonl, tokenizer, split="test[:2]", cache_dir=cache_dir)] == ["0+1=", "1+1="]
    # a directory: splits come from the file names
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (folder / "test.jsonl").write_text(json.dumps(rows[1]) + "\n" + json.dumps(rows[2]) + "\n")
    assert [e.prompt for e in PromptDataset(folder, tokenizer, split="test", cache_dir=cache_dir)] == ["1+1=", "2+1="]
    # a malformed file inside a directory is named with its line
    (folder / "test.jsonl").write_text(json.dumps(rows[1]) + "\n{oops\n")
    raises_data_error(lambda: load_rows(folder, split="test", cache_dir=cache_dir), source=folder / "test.jsonl",
                      line=2, expected="malformed JSON")


def test_data_error_survives_pickling():
    """Datasets may be built inside Ray workers; the error must cross the process boundary intact."""
    import pickle

    err = DataError("f.jsonl", "expected a non-empty string", row=3, field="prompt", line=5)
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) == "f.jsonl, row 3 (line 5), field 'prompt': expected a non-empty string"
    assert (back.row, back.line, back.field) == (3, 5, "prompt")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    """Issue 16 §12: files saved by Windows editors start with a BOM; before, row 0 was 'malformed JSON'."""
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2"}\n')
    rows = load_rows(path)
    assert rows.columns == ["prompt", "answer"] and rows.column("prompt") == ["a", "b"] and rows.lines == [1, 2]
    bad = tmp_path / "bom_bad.jsonl"
    bad.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"row 1 \(line 2\): malformed JSON"):  # errors still point at the line
        load_rows(bad)
