"""Reading labelled and unlabelled tables from local files (CSV, TSV, JSON, JSONL, Parquet) or the HF hub.

Every check that can fail on user data lives here, so each error names the file, the line or row, and the
column or value, and says what to do. Loading goes through ``datasets.load_dataset`` so results are cached
and memory-mapped like any HF dataset.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import datasets

from lit_llm.errors import UserInputError

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "DataFileError",
    "check_utf8",
    "first_bad_line",
    "load_table",
    "require_columns",
    "row_location",
    "check_texts",
]

# extension -> (datasets builder, extra builder kwargs)
SUPPORTED_EXTENSIONS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".txt": ("text", {}),
}


class DataFileError(ValueError, UserInputError):
    """A data file that cannot be used as it is; the message says where and what to do."""


def _extension(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    # Compressed files keep the format before the compression suffix: reviews.csv.gz
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst") and len(suffixes) > 1:
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


def check_utf8(path: Path) -> None:
    """Raise with the line number of the first byte sequence that is not UTF-8 (plain-text formats only).

    Raises:
        DataFileError: the file is not valid UTF-8.
    """
    if _extension(path) == ".parquet" or path.suffix.lower() in (".gz", ".bz2", ".xz", ".zst"):
        return
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataFileError(
            f"{path}: line {line}, column {column} is not valid UTF-8 (byte {data[err.start]:#04x}). "
            "Re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`."
        ) from None


_OPENERS: dict[str, Any] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _open_text(path: Path) -> IO[str] | None:
    """The file as text, decompressed if needed; None for a compression we do not read ourselves (.zst)."""
    opener = _OPENERS.get(path.suffix.lower())
    if opener is not None:
        return io.TextIOWrapper(opener(path, "rb"), encoding="utf-8", errors="replace", newline="")
    if path.suffix.lower() == ".zst":
        return None
    return open(path, encoding="utf-8", errors="replace", newline="")


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")


def _bad_csv_line(lines: Iterator[str], delimiter: str) -> str | None:
    reader = csv.reader(lines, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return None
    for row in reader:
        # Fewer fields are read as missing values (the column checks report them); more fields break the reader.
        if len(row) > len(header):
            shown = "\\t" if delimiter == "\t" else delimiter
            return (
                f"line {reader.line_num} has {len(row)} fields, the header (line 1) has {len(header)} "
                f"(an unquoted delimiter? quote fields that contain {shown!r}, e.g. \"a{shown} b\")"
            )
    return None


def _bad_json_line(lines: Iterator[str]) -> str | None:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as err:
            return f"line {number} is not valid JSON ({err.msg} at column {err.colno})"
        if not isinstance(value, dict):
            return f"line {number} is a JSON {_json_kind(value)}, not an object with one field per column"
    return None


def first_bad_line(path: str | Path) -> str | None:
    """What is wrong with the first line of a CSV / TSV / JSONL file that its reader cannot parse, or None.

    A row with more fields than the header, a JSONL line that is not valid JSON or not an object. A ``.json``
    file that is one JSON document (an array of records) is checked as a whole. Used to explain a reader's error
    (``datasets`` says only "An error occurred while generating the dataset").

    Example::
        first_bad_line("train.csv")  # 'line 7 has 3 fields, the header (line 1) has 2 (...)'
    """
    path = Path(path)
    ext = _extension(path)
    if ext not in (".csv", ".tsv", ".json", ".jsonl"):
        return None
    stream = _open_text(path)
    if stream is None:
        return None
    with stream:
        if ext in (".csv", ".tsv"):
            return _bad_csv_line(stream, "\t" if ext == ".tsv" else ",")
        if ext == ".json":
            text = stream.read()
            try:
                json.loads(text)
                return None  # one valid JSON document
            except json.JSONDecodeError as err:
                document_error = f"line {err.lineno} is not valid JSON ({err.msg} at column {err.colno})"
            lines = text.splitlines()
            first = next((line for line in lines if line.strip()), "")
            if first.lstrip().startswith("["):
                return document_error  # an array of records, broken somewhere inside
            try:
                json.loads(first)
            except json.JSONDecodeError:
                return document_error  # one document spread over lines
            return _bad_json_line(iter(lines))  # JSON lines in a .json file
        return _bad_json_line(stream)


def load_table(path: str | Path, split_name: str) -> datasets.Dataset:
    """Load one local file as a ``datasets.Dataset`` after checking it exists, its format and its encoding.

    Args:
        path: a .csv, .tsv, .json, .jsonl, .parquet or .txt file (optionally .gz/.bz2/.xz compressed).
        split_name: which split the file is for, quoted in errors.

    Raises:
        FileNotFoundError: the file does not exist.
        DataFileError: an unsupported extension, bad UTF-8, a file the reader cannot parse, or no rows.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{split_name} file {str(path)!r} does not exist (resolved from {Path.cwd()}).")
    ext = _extension(path)
    if ext not in SUPPORTED_EXTENSIONS:
        raise DataFileError(
            f"{split_name} file {str(path)!r}: unsupported extension {ext or '(none)'!r}; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}."
        )
    check_utf8(path)
    builder, kwargs = SUPPORTED_EXTENSIONS[ext]
    try:
        dataset = datasets.load_dataset(builder, data_files={"data": str(path)}, split="data", **kwargs)
    except Exception as err:  # the readers raise many types; say which file broke
        if "no data" in str(err):
            raise DataFileError(
                f"{split_name} file {str(path)!r} has no rows; give a file with at least one example."
            ) from None
        where = first_bad_line(path)
        raise DataFileError(
            f"{split_name} file {str(path)!r} could not be read as {ext[1:]}: "
            + (f"{where}. Fix that line (and any like it) and run again." if where else str(err))
        ) from err
    if len(dataset) == 0:
        raise DataFileError(f"{split_name} file {str(path)!r} has no rows; give a file with at least one example.")
    return dataset


def row_location(path: str | Path | None, index: int) -> str:
    """Human location of data row ``index`` (0-based): a line number for line-based formats."""
    if path is None:
        return f"row {index}"
    ext = _extension(Path(path))
    if ext in (".csv", ".tsv"):
        return f"{path}: line {index + 2} (data row {index + 1}; line 1 is the header)"
    if ext in (".jsonl", ".txt"):
        return f"{path}: line {index + 1}"
    return f"{path}: record {index}"


def require_columns(dataset: datasets.Dataset, columns: dict[str, str | None], source: str) -> None:
    """Raise when a configured column is missing, listing the columns that exist.

    Args:
        dataset: the loaded table.
        columns: argument name -> column name (None entries are skipped), e.g. ``{"text_field": "review"}``.
        source: the file or dataset name, quoted in the error.
    """
    for arg, column in columns.items():
        if column is not None and column not in dataset.column_names:
            raise DataFileError(
                f"{source}: no column {column!r} (the {arg}). Columns found: {', '.join(dataset.column_names)}. "
                f"Set {arg} to one of them."
            )


def check_texts(values: Sequence[Any], column: str, source: str, path: str | Path | None) -> None:
    """Raise on the first empty or null text, naming its line.

    Raises:
        DataFileError: a null, non-string or blank text.
    """
    for i, value in enumerate(values):
        if value is None or (isinstance(value, str) and not value.strip()):
            kind = "null" if value is None else "empty"
            raise DataFileError(
                f"{row_location(path, i) if path else f'{source}: row {i}'}: {kind} {column!r}. "
                "Remove the row or fill in the text."
            )
        if not isinstance(value, str):
            raise DataFileError(
                f"{row_location(path, i) if path else f'{source}: row {i}'}: {column!r} is "
                f"{type(value).__name__} {value!r}, not text."
            )
