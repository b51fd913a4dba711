"""Make a DistilBERT-style student from a fine-tuned model: keep every k-th transformer block, copy the rest.

    python scripts/make_student.py runs/minilm_rotten_tomatoes/version_0/export data/models/minilm-rt-student-3l

The result is an HF directory (model, config with the new layer count, tokenizer, label names) that the
``configs/compress/distill_3layer.yaml`` recipe trains with ``DistillationTeacher``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers import AutoModelForSequenceClassification

from lit_llm.compression.distillation import student_from_teacher
from lit_llm.hf import check_export_dir, export_pretrained, load_model, load_tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", help="HF directory of the fine-tuned teacher (a run's export/)")
    parser.add_argument("out_dir", help="new or empty directory for the student")
    parser.add_argument("--keep_every", type=int, default=2, help="keep blocks 0, k, 2k, ... (default 2: 6 -> 3)")
    args = parser.parse_args(argv)
    if not Path(args.teacher, "config.json").is_file():
        print(f"make_student: {args.teacher} is not an HF model directory (no config.json); give a run's export/ "
              "directory, written by lit-llm fit.", file=sys.stderr)
        return 2
    try:
        check_export_dir(args.out_dir)
        teacher = load_model(AutoModelForSequenceClassification, args.teacher)
        student = student_from_teacher(teacher, keep_every=args.keep_every)
    except (FileExistsError, ValueError) as err:
        print(f"make_student: {err}", file=sys.stderr)
        return 2
    out = export_pretrained(student, load_tokenizer(args.teacher), args.out_dir)
    layers = student.config.num_hidden_layers
    print(f"student with {layers} of {teacher.config.num_hidden_layers} blocks written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
