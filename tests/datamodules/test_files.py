"""load_table: a file the reader cannot parse gets an error naming the file, the first bad line and what is wrong."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from lit_llm.datamodules.files import DataFileError, first_bad_line, load_table


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_ragged_csv_names_the_line_and_the_field_counts(tmp_path):
    # The quoted field spans lines 3-4, so the bad row is on line 5 (pandas would say "line 4": it counts records).
    text = 'text,label\ngood movie,pos\n"a, quoted\nline",neg\nbad film,neg,extra\nok,pos\n'
    path = _write(tmp_path / "ragged.csv", text)
    expected = (r"train file '.*ragged\.csv' could not be read as csv: line 5 has 3 fields, the header \(line 1\) "
                r"has 2 \(an unquoted delimiter\? quote fields that contain ',', e\.g\. \"a, b\"\)\. Fix that line")
    with pytest.raises(DataFileError, match=expected):
        load_table(path, "train")


def test_ragged_tsv_counts_tabs(tmp_path):
    path = _write(tmp_path / "ragged.tsv", "text\tlabel\ngood\tpos\nbad\tneg\tx\n")
    expected = r"could not be read as tsv: line 3 has 3 fields, the header \(line 1\) has 2"
    with pytest.raises(DataFileError, match=expected):
        load_table(path, "validation")


def test_broken_jsonl_names_the_line_and_the_json_error(tmp_path):
    path = _write(tmp_path / "broken.jsonl", '{"text": "good", "label": "p"}\n\n{"text": "ok", "label": "n"}\n'
                  '{"text": "bad", "label"\n{"text": "never read", "label": "p"}\n')
    expected = (r"train file '.*broken\.jsonl' could not be read as jsonl: line 4 is not valid JSON "
                r"\(Expecting ':' delimiter at column 24\)")
    with pytest.raises(DataFileError, match=expected):
        load_table(path, "train")


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = _write(tmp_path / "list.jsonl", '{"text": "good", "label": "p"}\n["bad", "n"]\n')
    with pytest.raises(DataFileError, match=r"list\.jsonl' could not be read as jsonl: line 2 is a JSON list, not an "
                                             r"object"):
        load_table(path, "train")


def test_first_bad_line_reads_compressed_files_and_finds_nothing_in_good_ones(tmp_path):
    good = _write(tmp_path / "good.csv", "text,label\na,b\n")
    assert first_bad_line(good) is None
    packed = tmp_path / "bad.jsonl.gz"
    packed.write_bytes(gzip.compress(b'{"text": "a"}\n{"text": \n'))
    assert first_bad_line(packed) == "line 2 is not valid JSON (Expecting value at column 10)"
