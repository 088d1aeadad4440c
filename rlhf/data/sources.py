"""Reading raw rows: a hub dataset name, a local json/jsonl/parquet/csv file, or a directory of them.

Everything goes through `datasets.load_dataset`, so real data and the built-in tasks' JSONL files take
the same path. What this module adds is that bad input is never passed on silently: every problem
raises `DataError`, whose message names the source (file), the row (0-based index, plus the 1-based
line number for JSON-lines files), the field, and what was expected.

JSON files are parsed line by line before `datasets` sees them, because its own loader reports a
malformed line as an opaque Arrow error with no line number, and fails (or silently converts values)
when a field changes type between rows — so each field must keep one JSON type (nulls aside). For a
directory or a hub dataset, `row` is the index within the loaded split and the source is the
directory or name; for a single file, it is the index within the file.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

# File extension → `datasets` builder name.
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(ValueError):
    """Bad input data. `source`, `row` and `field` say where; the message says what was expected."""

    def __init__(self, source: str, message: str, row: int | None = None, field: str | None = None,
                 line: int | None = None):
        self.source, self.message, self.row, self.field, self.line = source, message, row, field, line
        where = [source]
        if row is not None:
            where.append(f"row {row}" + (f" (line {line})" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(": ".join([", ".join(where), message]))

    def __reduce__(self):  # picklable, so the error survives a trip out of a Ray worker
        return DataError, (self.source, self.message, self.row, self.field, self.line)


@dataclass
class RawRows:
    """Rows loaded from one source, with the information needed to point at a bad row.

    `lines[i]` is the 1-based line number of row i in a single JSON-lines file (None otherwise).
    """

    dataset: Any  # datasets.Dataset
    source: str  # the file, directory or hub name, as shown in error messages
    lines: list[int] | None = None
    columns: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.dataset)

    def error(self, row: int, field_name: str | None, message: str) -> DataError:
        """A DataError pointing at `row` (and its line number when known)."""
        line = self.lines[row] if self.lines is not None and row < len(self.lines) else None
        return DataError(self.source, message, row=row, field=field_name, line=line)

    def column(self, name: str) -> list[Any]:
        """Values of column `name` (a DataError naming the field if no row has it)."""
        if name not in self.columns:
            raise self.error(0, name, f"missing field; the rows have fields {self.columns}")
        return list(self.dataset.select_columns([name])[:][name])  # one batched read, not row by row


def load_rows(source: str | Path, split: str = "train", cache_dir: str | None = None) -> RawRows:
    """Load the rows of `split` from `source`.

    - an existing file: the builder is inferred from its extension (.json/.jsonl/.parquet/.csv); the
      file is the whole split, whatever its name (slicing such as `train[:100]` works);
    - an existing directory: `datasets` infers the builder and the splits from the file names
      (e.g. `train.jsonl`, `test.jsonl`);
    - anything else is a hub dataset name (`org/name`, or `org/name:config` for a dataset with named
      configs, e.g. `openai/gsm8k:main`); a path-like string that does not exist (has a data
      extension, or starts with `/`, `.` or `~`) is reported as a missing file.
    """
    import datasets

    text = str(source)
    path = Path(text).expanduser()
    split_name = split.split("[", 1)[0]
    lines = None
    if path.is_file():
        builder = BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(text, f"unsupported file type {path.suffix!r}; expected one of {sorted(BUILDERS)}")
        data_file = path
        if builder == "json":
            lines = check_json_file(path)
            data_file = _without_bom(path)
        load = partial(datasets.load_dataset, builder, data_files={split_name: str(data_file)}, split=split,
                       cache_dir=cache_dir)
    elif path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")]
        if not any(p.suffix.lower() in BUILDERS for p in files):
            raise DataError(text, f"directory holds no data files; expected files ending in {sorted(BUILDERS)}")
        for p in files:
            if BUILDERS.get(p.suffix.lower()) == "json":
                check_json_file(p)
        load = partial(datasets.load_dataset, str(path), split=split, cache_dir=cache_dir)
    elif path.suffix.lower() in BUILDERS or text.startswith(("/", ".", "~")):
        raise DataError(text, "file not found")
    else:
        name, _, config = text.partition(":")
        load = partial(datasets.load_dataset, name, config or None, split=split, cache_dir=cache_dir)
    try:
        dataset = load()
    except DataError:
        raise
    except Exception as exc:  # datasets/pyarrow raise many types; keep the cause, name the source
        raise DataError(text, f"could not load split {split!r}: {type(exc).__name__}: {exc}") from exc
    if lines is not None and len(lines) != len(dataset):
        if "[" in split:  # a slice keeps a window of rows; line numbers only map for the whole file
            lines = None
        else:
            raise DataError(text, f"datasets read {len(dataset)} rows but the file has {len(lines)} records")
    return RawRows(dataset=dataset, source=text, lines=lines, columns=list(dataset.column_names))


_BOM = b"\xef\xbb\xbf"


def _without_bom(path: Path) -> Path:
    """`path`, or for a file starting with a UTF-8 byte-order mark (Windows editors write one) a copy
    without it in the temp directory: `datasets`' JSON reader rejects the mark."""
    raw = path.read_bytes()
    if not raw.startswith(_BOM):
        return path
    import hashlib

    copy = Path(tempfile.gettempdir()) / "rlhf-bom-free" / f"{hashlib.sha256(raw).hexdigest()[:16]}{path.suffix}"
    if not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        partial_copy = copy.with_suffix(copy.suffix + f".{os.getpid()}.tmp")
        partial_copy.write_bytes(raw[len(_BOM):])
        os.replace(partial_copy, copy)
    return copy


def check_json_file(path: Path) -> list[int] | None:
    """Validate a .json/.jsonl file; return the 1-based line number of each record (None for a JSON array).

    A file holding one JSON array of objects is accepted; otherwise every non-blank line must be one
    JSON object. Each field must keep one JSON type across rows (nulls aside): Arrow needs one type
    per column, and `datasets` either fails without saying where or silently converts values.
    Raises DataError naming the file and the first bad row/line.
    """
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(source, f"cannot read file: {exc.strerror or exc}") from exc
    if raw.startswith(_BOM):  # a UTF-8 byte-order mark is not part of the first record
        raw = raw[len(_BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(source, f"not valid UTF-8 (byte {exc.start})", line=line) from exc
    if not text.strip():
        raise DataError(source, "file is empty; expected JSON objects, one per line")
    kinds: dict[str, tuple[str, int]] = {}  # field → (JSON type, first row having it)
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(source, f"malformed JSON array: {exc.msg} (column {exc.colno})", line=exc.lineno) from exc
        for i, record in enumerate(records):
            _check_record(source, record, i, None, kinds)
        return None
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(source, f"malformed JSON: {exc.msg} (column {exc.colno}); expected one JSON "
                            "object per line", row=len(lines), line=number) from exc
        _check_record(source, record, len(lines), number, kinds)
        lines.append(number)
    return lines


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _check_record(source: str, record: Any, row: int, line: int | None, kinds: dict[str, tuple[str, int]]) -> None:
    if not isinstance(record, dict):
        raise DataError(source, f"expected a JSON object, got {type(record).__name__}", row=row, line=line)
    for key, value in record.items():
        if value is None:
            continue
        kind = _kind(value)
        first = kinds.setdefault(key, (kind, row))
        if first[0] != kind:
            raise DataError(source, f"got {_describe(value)} but row {first[1]} has a {first[0]}; expected one "
                            "type per field", row=row, field=key, line=line)


# --- field checks: each returns the value or raises a DataError naming row and field -------------------


def _describe(value: Any) -> str:
    if value is None:
        return "null (or missing)"
    shown = repr(value)
    return f"{type(value).__name__} {shown if len(shown) <= 60 else shown[:57] + '...'}"


def expect_text(rows: RawRows, i: int, key: str, value: Any) -> str:
    """A non-empty (not all-whitespace) string."""
    if not isinstance(value, str) or not value.strip():
        raise rows.error(i, key, f"expected a non-empty string, got {_describe(value)}")
    return value


CHAT_ROLES = ("system", "user", "assistant", "tool")  # what chat templates render; anything else is a typo


def expect_messages(rows: RawRows, i: int, key: str, value: Any) -> list[dict[str, str]]:
    """A non-empty list of {"role": one of CHAT_ROLES, "content": non-empty str} chat messages."""
    if not isinstance(value, list) or not value:
        raise rows.error(i, key, f"expected a non-empty list of chat messages, got {_describe(value)}")
    for j, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise rows.error(i, key, f"message {j}: expected an object with a string 'role', got {_describe(message)}")
        if message["role"] not in CHAT_ROLES:
            raise rows.error(i, key, f"message {j}: unknown role {message['role']!r}; expected one of {list(CHAT_ROLES)}")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise rows.error(i, key, f"message {j}: expected a non-empty string 'content', got {_describe(content)}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def expect_text_or_messages(rows: RawRows, i: int, key: str, value: Any) -> str | list[dict[str, str]]:
    """A non-empty string, or a list of chat messages."""
    if isinstance(value, list):
        return expect_messages(rows, i, key, value)
    if not isinstance(value, str):
        raise rows.error(i, key, f"expected a non-empty string or a list of chat messages, got {_describe(value)}")
    return expect_text(rows, i, key, value)
