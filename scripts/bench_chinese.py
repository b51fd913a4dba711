"""Benchmark: whole-word vs character masking for a Chinese BERT, and what pre-training buys on two Chinese tasks.

1. Pre-trains ``configs/pretrain/bert_zh_wwm.yaml`` twice at the same budget (``--pretrain-steps`` optimizer
   steps, same seed, same tokenizer): whole-word masking on People's Daily's gold words, and character masking
   (``whole_word_masking: false``). Both keep the config's other settings (its sentence-order objective too), or
   those ``--pretrain-args`` sets for both.
2. Scores both on held-out text (``data/zh/pretrain/heldout.txt``, articles no pre-training run saw): masked-token
   accuracy and perplexity, under character masks and under whole-word masks (the same masks for both models).
3. Fine-tunes ``configs/finetune/bert_zh_sentiment.yaml`` and ``configs/finetune/bert_zh_ner.yaml`` from the WWM
   export, from the character-masked export, and from a random initialization of the same architecture and
   tokenizer, at the same budget (training subsets of ``--sentiment-train`` reviews / ``--ner-train`` sentences,
   ``--finetune-epochs`` epochs), and tests each on the full test split: accuracy and macro-F1 (sentiment),
   strict entity micro-F1 (NER). With ``--sentiment-lrs`` / ``--ner-lrs`` each start gets the learning rate that
   is best on validation, and ``--finetune-seeds`` repeats the chosen one over seeds (mean and spread).

Every run goes through ``LitLLMCLI`` (what ``lit-llm fit`` runs) in this process, with the configs and the command
line overrides recorded in the result. Writes ``benchmarks/chinese.json`` and ``benchmarks/chinese.md``
(``--smoke``: ``benchmarks/chinese_smoke.*`` from a tiny model and tiny subsets, in a minute or two, to check the
script; its numbers mean nothing).

Usage::

    .venv/bin/python scripts/prepare_chinese.py
    .venv/bin/python scripts/bench_chinese.py --pretrain-steps 1500 --sentiment-lrs 5e-4 --ner-lrs 1e-3 \
        --finetune-seeds 2                               # benchmarks/chinese.md: 44 minutes on 2 idle CPU cores
    .venv/bin/python scripts/bench_chinese.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a clone without installing

from lit_llm.cli import LitLLMCLI  # noqa: E402
from lit_llm.datamodules.corpus import tokenize_texts  # noqa: E402
from lit_llm.datamodules.packing import pack_blocks  # noqa: E402
from lit_llm.text.masking import mask_tokens  # noqa: E402

DATA = Path("data/zh")
PRETRAIN = "configs/pretrain/bert_zh_wwm.yaml"
FINETUNE = {"sentiment": "configs/finetune/bert_zh_sentiment.yaml", "ner": "configs/finetune/bert_zh_ner.yaml"}
TINY_MODEL = ("{model_type: roformer, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
              "intermediate_size: 37, max_position_embeddings: 512}")
HEADLINE = {"sentiment": "accuracy", "ner": "entity_f1_strict"}  # the test score a table row leads with
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary",
         "false"]


def run_cli(args: list[str]) -> tuple[Any, float, list[str]]:
    """One ``lit-llm fit`` in this process: the CLI object, its wall time and the arguments."""
    start = time.perf_counter()
    cli = LitLLMCLI(args=["fit", *args])
    return cli, time.perf_counter() - start, args


def subset_lines(source: Path, out: Path, n: int | None, seed: int, blank_separated: bool = False) -> Path:
    """The first ``n`` records of a seeded shuffle (lines, or blank-line separated CoNLL sentences)."""
    text = source.read_text(encoding="utf-8")
    records = [r for r in text.split("\n\n") if r.strip()] if blank_separated else text.splitlines()
    random.Random(seed).shuffle(records)
    records = records if n is None else records[:n]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(r.strip("\n") + ("\n\n" if blank_separated else "\n") for r in records), encoding="utf-8")
    return out


def heldout_blocks(path: Path, tokenizer: Any, n_blocks: int) -> dict[str, torch.Tensor]:
    """Held-out text in 128-token blocks as the pre-training datamodule builds them (gold words, packed)."""
    lines = path.read_text(encoding="utf-8").splitlines()[: 3 * n_blocks + 10]  # ~95 tokens a line: enough
    cols = pack_blocks(tokenize_texts(lines, tokenizer, None, True, "tagged"), block_size=128)
    return {name: torch.tensor(values[:n_blocks]) for name, values in cols.items()}


@torch.inference_mode()
def heldout_scores(export: Path, blocks: dict[str, torch.Tensor], whole_word: bool, seed: int) -> dict[str, float]:
    """Masked-token accuracy and perplexity of an exported MLM on held-out blocks, under fixed masks."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    generator = torch.Generator().manual_seed(seed)  # the same masks for every model
    loss_sum, correct, count = 0.0, 0, 0
    for start in range(0, len(blocks["input_ids"]), 32):
        ids = blocks["input_ids"][start : start + 32]
        out = mask_tokens(ids, blocks["special_tokens_mask"][start : start + 32],
                          mask_token_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                          word_starts=blocks["word_starts"][start : start + 32] if whole_word else None,
                          generator=generator)
        logits = model(input_ids=out.input_ids).logits  # (B, T, V)
        target = out.labels != -100
        picked, labels = logits[target], out.labels[target]  # (N, V), (N,)
        loss_sum += float(torch.nn.functional.cross_entropy(picked, labels, reduction="sum"))
        correct += int((picked.argmax(-1) == labels).sum())
        count += int(target.sum())
    return {"masked_accuracy": correct / count, "perplexity": float(torch.exp(torch.tensor(loss_sum / count))),
            "masked_tokens": count}


def random_init(export: Path, out: Path, seed: int) -> Path:
    """The same architecture and tokenizer as ``export``, with freshly initialized weights."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    torch.manual_seed(seed)
    AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(export)).save_pretrained(out)
    AutoTokenizer.from_pretrained(export).save_pretrained(out)
    return out


def pretrain_corpus(work: Path, seed: int, smoke: bool) -> list[Path]:
    """The config's ``data_files`` (300-line subsets of them with ``smoke``)."""
    corpus = [DATA / "pretrain" / "train.txt", DATA / "pretrain" / "reviews.txt"]
    if smoke:
        corpus = [subset_lines(path, work / "data" / f"pretrain_{path.name}", 300, seed) for path in corpus]
    return corpus


def pretrain_overrides(name: str, steps: int, seed: int, corpus: list[Path], work: Path, runs: str, smoke: bool,
                       extra: list[str]) -> list[str]:
    """The ``lit-llm fit`` arguments of one pre-training run of the config at the benchmark's budget: every run
    shares ``work/tokenizer`` (trained by the first, then loaded), and validates (and so checkpoints the best) at
    the last step too, since the export is the best checkpoint."""
    overrides = ["--config", PRETRAIN, *QUIET, "--run_root", runs, "--run_name", f"pretrain_{name}",
                 "--trainer.max_steps", str(steps), "--seed_everything", str(seed),
                 "--trainer.val_check_interval", str(max(1, steps // 4)),
                 "--data.init_args.data_files", "[" + ", ".join(map(str, corpus)) + "]",
                 "--data.init_args.tokenizer_dir", str(work / "tokenizer"), *extra]
    if smoke:
        overrides += ["--model.init_args.model", TINY_MODEL, "--data.init_args.vocab_size", "3000",
                      "--data.init_args.batch_size", "8"]
    return overrides


def finetune_files(work: Path, seed: int, sentiment_train: int, ner_train: int, smoke: bool
                   ) -> dict[str, dict[str, Path]]:
    """Per task, the seeded training subset, the validation split (NER: 1,000 sentences; 64 records with
    ``smoke``) and the test split (the validation subset with ``smoke``)."""
    files = {
        "sentiment": {"train": subset_lines(DATA / "sentiment" / "train.jsonl", work / "data" / "sentiment_train.jsonl",
                                            sentiment_train, seed),
                      "val": subset_lines(DATA / "sentiment" / "validation.jsonl",
                                          work / "data" / "sentiment_val.jsonl", 64 if smoke else None, seed),
                      "test": DATA / "sentiment" / "test.jsonl"},
        "ner": {"train": subset_lines(DATA / "ner" / "train.conll", work / "data" / "ner_train.conll", ner_train,
                                      seed, blank_separated=True),
                "val": subset_lines(DATA / "ner" / "validation.conll", work / "data" / "ner_val.conll",
                                    64 if smoke else 1000, seed, blank_separated=True),
                "test": DATA / "ner" / "test.conll"},
    }
    if smoke:
        for task in files:
            files[task]["test"] = files[task]["val"]
    return files


def finetune_once(task: str, start: str, files: dict[str, Path], lr: float | None, seed: int, runs: str,
                  args: argparse.Namespace, records: dict[str, Any]) -> dict[str, Any]:
    """One fine-tuning run tested after fit: its validation and test scores (its arguments go to ``records``)."""
    tag = f"{task}_{start}" + ("" if lr is None else f"_lr{lr:g}") + f"_seed{seed}"
    overrides = ["--config", FINETUNE[task], *QUIET, "--run_root", runs, "--run_name", tag, "--test_after_fit", "true",
                 "--seed_everything", str(seed), "--trainer.max_epochs", str(args.finetune_epochs),
                 "--model.init_args.model", str(files["model"]), "--data.init_args.tokenizer", str(files["model"]),
                 "--data.init_args.train_file", str(files["train"]), "--data.init_args.validation_file",
                 str(files["val"]), "--data.init_args.test_file", str(files["test"])]
    if lr is not None:
        overrides += ["--model.init_args.optimizer.init_args.lr", str(lr)]
    cli, wall, used = run_cli(overrides + shlex.split(args.finetune_args))
    if task == "sentiment":
        report = json.loads((cli.run_dir / "reports" / "classification_report.json").read_text())
        scores = {"accuracy": report["accuracy"], "f1_macro": report["macro avg"]["f1-score"]}
    else:
        report = json.loads((cli.run_dir / "reports" / "ner_report.json").read_text())
        scores = {"entity_f1_strict": report["micro"]["f1"],
                  "per_type_f1": {k: v["f1"] for k, v in report["per_type"].items()}}
    best = cli.trainer.checkpoint_callback.best_model_score  # the config's first ModelCheckpoint: its metric
    trial = {"lr": lr, "seed": seed, "val_best": float("nan") if best is None else float(best), "test": scores}
    records[tag] = {"args": shlex.join(used), "wall_s": round(wall, 1)}
    print(f"{tag}: validation {trial['val_best']:.4f}, test {scores} ({wall:.0f} s)", flush=True)
    return trial


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model and subsets: checks the script, in minutes")
    parser.add_argument("--pretrain-steps", type=int, default=700, help="optimizer steps of 32 x 128 tokens each")
    parser.add_argument("--sentiment-train", type=int, default=4000, help="training reviews (of 13,886)")
    parser.add_argument("--ner-train", type=int, default=3000, help="training sentences (of 36,906)")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--heldout-blocks", type=int, default=400, help="128-token held-out blocks scored")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--pretrain-args", default="", metavar="ARGS",
                        help="extra `lit-llm fit` arguments for both pre-training runs, one shell-quoted string "
                             "(e.g. \"--model.init_args.optimizer.init_args.lr 1e-3\"); recorded with each run")
    parser.add_argument("--finetune-args", default="", metavar="ARGS",
                        help="extra `lit-llm fit` arguments for every fine-tuning run, as --pretrain-args")
    parser.add_argument("--sentiment-lrs", default="", metavar="LR,LR",
                        help="fine-tuning learning rates tried from each start; the best on validation is kept "
                             "(default: the config's)")
    parser.add_argument("--ner-lrs", default="", metavar="LR,LR", help="as --sentiment-lrs, for NER")
    parser.add_argument("--finetune-seeds", type=int, default=1,
                        help="fine-tuning seeds at the chosen learning rate: the table gives their mean and spread")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_chinese"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    args = parser.parse_args(argv)
    command = "python scripts/bench_chinese.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    sys.argv = sys.argv[:1]  # LightningCLI(args=...) warns when the process has command-line arguments too
    os.chdir(REPO)
    for need in ("pretrain/train.txt", "pretrain/reviews.txt", "pretrain/heldout.txt", "sentiment/train.jsonl",
                 "ner/train.conll"):
        if not (DATA / need).exists():
            sys.exit(f"{DATA / need} is missing: run `python scripts/prepare_chinese.py` first.")
    if args.smoke:
        args.pretrain_steps, args.sentiment_train, args.ner_train = 4, 64, 64
        args.finetune_epochs, args.heldout_blocks = 1, 8
    name = "chinese_smoke" if args.smoke else "chinese"
    work = args.work / name
    if work.exists():
        shutil.rmtree(work)  # the benchmark's own scratch directory
    runs = str(work / "runs")
    started = time.perf_counter()
    result: dict[str, Any] = {"command": command.strip(),
                              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                                         f"torch {torch.__version__}, {torch.get_num_threads()} threads",
                              "settings": {k: str(v) for k, v in vars(args).items()}, "runs": {}}

    # -- 1. pre-training: WWM vs character masking, same budget, same tokenizer ---------------------------------
    corpus = pretrain_corpus(work, args.seed, args.smoke)
    exports: dict[str, Path] = {}
    for masking, wwm in (("wwm", "true"), ("char", "false")):
        overrides = pretrain_overrides(masking, args.pretrain_steps, args.seed, corpus, work, runs, args.smoke,
                                       ["--model.init_args.whole_word_masking", wwm])
        cli, wall, used = run_cli(overrides + shlex.split(args.pretrain_args))
        exports[masking] = cli.run_dir / "export"
        result["runs"][f"pretrain_{masking}"] = {
            "args": shlex.join(used), "wall_s": round(wall, 1),
            "val_loss": float(cli.trainer.callback_metrics.get("val/loss", float("nan"))),
            "val_accuracy": float(cli.trainer.callback_metrics.get("val/accuracy", float("nan")))}
        print(f"pre-training {masking}: {wall:.0f} s", flush=True)

    # -- 2. held-out masked-token accuracy and perplexity --------------------------------------------------------
    from transformers import AutoTokenizer

    blocks = heldout_blocks(DATA / "pretrain" / "heldout.txt", AutoTokenizer.from_pretrained(exports["wwm"]),
                            args.heldout_blocks)
    result["heldout"] = {f"{model}_model/{masks}_masks": heldout_scores(exports[model], blocks, masks == "wwm",
                                                                        args.seed)
                         for model in ("wwm", "char") for masks in ("char", "wwm")}
    result["heldout_blocks"] = len(blocks["input_ids"])

    # -- 3. fine-tuning from each start, same budget --------------------------------------------------------------
    exports["random"] = random_init(exports["wwm"], work / "random_init", args.seed)
    files_by_task = finetune_files(work, args.seed, args.sentiment_train, args.ner_train, args.smoke)
    result["finetune"] = {}
    lrs = {task: [float(x) for x in getattr(args, f"{task}_lrs").split(",") if x.strip()] or [None]
           for task in ("sentiment", "ner")}
    for task in ("sentiment", "ner"):
        for start in ("random", "char", "wwm"):
            files = {"model": exports[start], **files_by_task[task]}
            # the learning rate is chosen on validation, per start, at the first seed; the test split is read
            # only for the reports (the chosen learning rate's runs are the ones in the table)
            trials = [finetune_once(task, start, files, lr, args.seed, runs, args, result["runs"])
                      for lr in lrs[task]]
            chosen = max(trials, key=lambda t: t["val_best"])
            runs_at_lr = [chosen] + [finetune_once(task, start, files, chosen["lr"], args.seed + k, runs, args,
                                                   result["runs"]) for k in range(1, args.finetune_seeds)]
            trials += runs_at_lr[1:]
            key = HEADLINE[task]
            values = [t["test"][key] for t in runs_at_lr]
            summary: dict[str, Any] = {"lr": chosen["lr"], "trials": trials,
                                       "test_runs": [t["test"] for t in runs_at_lr],
                                       key: statistics.fmean(values),
                                       f"{key}_std": statistics.stdev(values) if len(values) > 1 else 0.0}
            if task == "sentiment":
                summary["f1_macro"] = statistics.fmean(t["test"]["f1_macro"] for t in runs_at_lr)
            else:
                summary["per_type_f1"] = {
                    k: statistics.fmean(t["test"]["per_type_f1"].get(k, 0.0) for t in runs_at_lr)
                    for k in ("PER", "LOC", "ORG")}
            result["finetune"][f"{task}/{start}"] = summary

    result["total_wall_s"] = round(time.perf_counter() - started, 1)
    result["loadavg_15min"] = round(os.getloadavg()[2], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (args.out / f"{name}.md").write_text(render(result, args.smoke))
    print(f"wrote {args.out / name}.json and .md ({result['total_wall_s']:.0f} s)")
    return 0


def _lr(lr: float | None) -> str:
    return "config" if lr is None else f"{lr:g}"


def render(r: dict[str, Any], smoke: bool) -> str:
    s = r["settings"]
    h = r["heldout"]
    f = r["finetune"]
    lines = [
        "# Chinese: whole-word vs character masking, and pre-trained vs random initialization",
        "",
        *(["**SMOKE RUN: tiny model and subsets; the numbers mean nothing.**", ""] if smoke else []),
        f"Command: `{r['command']}` (after `python scripts/prepare_chinese.py`). Machine: {r['machine']}; "
        f"15-minute load average at the end {r['loadavg_15min']}. Total wall time **{r['total_wall_s'] / 60:.1f} "
        "min**.",
        "",
        "## Pre-training (same budget)",
        "",
        f"`{PRETRAIN}` ({s['pretrain_steps']} optimizer steps, seed {s['seed']}), whole-word masking on the gold "
        "words vs character masking, the same tokenizer. Held-out: "
        f"{r['heldout_blocks']} blocks of 128 tokens of `data/zh/pretrain/heldout.txt`, the same masks for both.",
        "",
        "| pre-trained with | eval masks | masked-token accuracy | perplexity | wall time |",
        "|---|---|---|---|---|",
    ]
    for model in ("wwm", "char"):
        for masks in ("char", "wwm"):
            x = h[f"{model}_model/{masks}_masks"]
            wall = r["runs"][f"pretrain_{model}"]["wall_s"]
            lines.append(f"| {model} | {masks} | {x['masked_accuracy']:.4f} | {x['perplexity']:.2f} | {wall:.0f} s |")
    lines += [
        "",
        "## Fine-tuning (same budget)",
        "",
        f"Sentiment: {s['sentiment_train']} training reviews, {s['finetune_epochs']} epochs, tested on "
        f"{'a validation subset' if smoke else 'the full test split (1,736 reviews)'}. NER: {s['ner_train']} training "
        f"sentences, {s['finetune_epochs']} epochs, strict entity F1 (seqeval strict) on "
        + ("a validation subset." if smoke else
           "the full test split (4,484 sentences of articles not in the pre-training corpus)."),
        "",
        f"Learning rate per start and task: the best on validation of {s['sentiment_lrs'] or 'the config'} "
        f"(sentiment) and {s['ner_lrs'] or 'the config'} (NER), at seed {s['seed']}; then "
        f"{s['finetune_seeds']} seed(s) at that rate (seeds {s['seed']} to "
        f"{int(s['seed']) + int(s['finetune_seeds']) - 1}): test mean ± standard deviation over them.",
        "",
        "| initialization | sentiment lr | sentiment accuracy | sentiment macro-F1 | NER lr | NER entity F1 (strict) "
        "| PER | LOC | ORG |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for start in ("random", "char", "wwm"):
        sen, ner = f[f"sentiment/{start}"], f[f"ner/{start}"]
        per = ner["per_type_f1"]
        lines.append(f"| {start} | {_lr(sen['lr'])} | {sen['accuracy']:.4f} ± {sen['accuracy_std']:.4f} | "
                     f"{sen['f1_macro']:.4f} | {_lr(ner['lr'])} | {ner['entity_f1_strict']:.4f} ± "
                     f"{ner['entity_f1_strict_std']:.4f} | "
                     + " | ".join(f"{per.get(t, 0.0):.3f}" for t in ("PER", "LOC", "ORG")) + " |")
    lines += ["", "Validation (best of the run; sentiment accuracy, NER strict entity F1) by learning rate and seed:",
              "", "| task | initialization | lr | seed | validation | test |", "|---|---|---|---|---|---|"]
    for name, x in f.items():
        task, start = name.split("/")
        key = HEADLINE[task]
        lines += [f"| {task} | {start} | {_lr(t['lr'])} | {t['seed']} | {t['val_best']:.4f} | {t['test'][key]:.4f} |"
                  for t in x["trials"]]
    lines += ["", "## Runs", "", "| run | wall time | arguments |", "|---|---|---|"]
    lines += [f"| {k} | {v['wall_s']:.0f} s | `{v['args']}` |" for k, v in r["runs"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
