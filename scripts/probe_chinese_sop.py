"""Probe: does ALBERT's sentence-order objective let whole-word-masked pre-training help Chinese sentiment?

``benchmarks/chinese.md`` found that WWM pre-training helps NER but costs sentiment 2.6 points against a random
initialization, and its pooling probe traced the loss to the [CLS] read-out: a masked LM alone never puts [CLS]'s
last hidden state in a loss, and the classifier reads exactly that. Sentence-order prediction (``nsp: true``,
``nsp_negatives: swapped`` on the model and the data; on RoFormer, lit-llm's ``SentencePairHead``) does.

At the benchmark's budget and seeds: ``configs/pretrain/bert_zh_wwm.yaml`` pre-trained twice (``--pretrain-steps``
optimizer steps, the same seed and tokenizer), without and with sentence order; both scored on held-out text
(masked-token accuracy under whole-word masks); then ``scripts/bench_chinese.py``'s fine-tuning runs, at its
learning rates, from each export and from a random initialization of the same architecture, over
``--finetune-seeds`` seeds, tested on the full test splits. Every run is ``lit-llm fit`` (``LitLLMCLI``) in this
process. Writes ``benchmarks/chinese_sop.json`` and ``.md`` (``--smoke``: a tiny model and subsets under
``$TMPDIR/chinese_sop_smoke``, to check the script; its numbers mean nothing).

Usage::

    .venv/bin/python scripts/prepare_chinese.py
    .venv/bin/python scripts/probe_chinese_sop.py --pretrain-steps 1500 --finetune-seeds 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a clone without installing

SOP = ["--model.init_args.nsp", "true", "--model.init_args.nsp_negatives", "swapped",
       "--data.init_args.nsp", "true", "--data.init_args.nsp_negatives", "swapped"]
LRS = {"sentiment": 5e-4, "ner": 1e-3}  # benchmarks/chinese.md's rates


def _bench() -> Any:
    """``scripts/bench_chinese.py``: its fine-tuning and scoring functions, so both measure the same way."""
    spec = importlib.util.spec_from_file_location("_bench_chinese", REPO / "scripts" / "bench_chinese.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model and subsets: checks the script")
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--finetune-seeds", type=int, default=2)
    parser.add_argument("--tasks", default="sentiment,ner", help="comma-separated: sentiment, ner")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--work", type=Path, default=None, help="default: a temporary folder, removed at the end")
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmarks/ ($TMPDIR/chinese_sop_smoke with --smoke)")
    args = parser.parse_args(argv)
    command = "python scripts/probe_chinese_sop.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    sys.argv = sys.argv[:1]  # LightningCLI(args=...) warns when the process has command-line arguments too
    os.chdir(REPO)
    bench = _bench()
    out = args.out or (Path(tempfile.gettempdir()) / "chinese_sop_smoke" if args.smoke else REPO / "benchmarks")
    work = args.work or Path(tempfile.mkdtemp(prefix="chinese_sop_"))
    try:
        result = run(args, bench, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result["command"] = command
    out.mkdir(parents=True, exist_ok=True)
    (out / "chinese_sop.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (out / "chinese_sop.md").write_text(render(result, args.smoke))
    print((out / "chinese_sop.md").read_text())
    return 0


def run(args: argparse.Namespace, bench: Any, work: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    data = bench.DATA
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    sizes = {"sentiment": 4000, "ner": 3000, "heldout": 400, "epochs": 2}
    if args.smoke:
        args.pretrain_steps = 4
        sizes = {"sentiment": 64, "ner": 64, "heldout": 8, "epochs": 1}
    # finetune_once reads these attributes of the benchmark's own arguments
    ft_args = argparse.Namespace(finetune_epochs=sizes["epochs"], finetune_args="")
    runs, started = str(work / "runs"), time.perf_counter()
    result: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                              "settings": {"pretrain_steps": args.pretrain_steps, "seed": args.seed,
                                           "finetune_seeds": args.finetune_seeds, **sizes, "lrs": LRS},
                              "runs": {}, "pretrain": {}}
    corpus = bench.pretrain_corpus(work, args.seed, args.smoke)
    exports: dict[str, Path] = {}
    for name, extra in (("wwm", []), ("wwm_sop", SOP)):
        overrides = bench.pretrain_overrides(name, args.pretrain_steps, args.seed, corpus, work, runs, args.smoke,
                                             extra)
        cli, wall, used = bench.run_cli(overrides)
        exports[name] = cli.run_dir / "export"
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
        result["runs"][f"pretrain_{name}"] = {"args": shlex.join(used), "wall_s": round(wall, 1)}
        result["pretrain"][name] = {"wall_s": round(wall, 1), "val": metrics}
        print(f"pre-training {name}: {wall:.0f} s, {metrics}", flush=True)

    blocks = bench.heldout_blocks(data / "pretrain" / "heldout.txt", AutoTokenizer.from_pretrained(exports["wwm"]),
                                  sizes["heldout"])
    for name in exports:
        result["pretrain"][name]["heldout_wwm_masks"] = bench.heldout_scores(exports[name], blocks, True, args.seed)

    exports["random"] = bench.random_init(exports["wwm"], work / "random_init", args.seed)
    files = bench.finetune_files(work, args.seed, sizes["sentiment"], sizes["ner"], args.smoke)
    result["finetune"] = {}
    for task in tasks:
        for start in ("random", "wwm", "wwm_sop"):
            trials = [bench.finetune_once(task, start, {"model": exports[start], **files[task]}, LRS[task],
                                          args.seed + k, runs, ft_args, result["runs"])
                      for k in range(args.finetune_seeds)]
            key = bench.HEADLINE[task]
            values = [t["test"][key] for t in trials]
            result["finetune"][f"{task}/{start}"] = {
                key: statistics.fmean(values), f"{key}_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "val_best": statistics.fmean(t["val_best"] for t in trials), "trials": trials}
    result["total_wall_s"] = round(time.perf_counter() - started, 1)
    result["loadavg_15min"] = round(os.getloadavg()[2], 2)
    return result


def render(r: dict[str, Any], smoke: bool) -> str:
    s, p, f = r["settings"], r["pretrain"], r["finetune"]
    lines = ["# Chinese: does sentence-order prediction let pre-training help through [CLS]?", "",
             *(["**SMOKE RUN: tiny model and subsets; the numbers mean nothing.**", ""] if smoke else []),
             f"Command: `{r['command']}` (after `python scripts/prepare_chinese.py`). Machine: {r['machine']}; "
             f"15-minute load average at the end {r['loadavg_15min']}. Total wall time "
             f"**{r['total_wall_s'] / 60:.1f} min**.", "",
             f"Pre-training: `configs/pretrain/bert_zh_wwm.yaml`, {s['pretrain_steps']} optimizer steps, seed "
             f"{s['seed']}, whole-word masking, without and with ALBERT's sentence-order objective (RoFormer has no "
             "pre-training class in transformers: lit-llm's `SentencePairHead` on the first token). Held-out: "
             f"{s['heldout']} blocks of `data/zh/pretrain/heldout.txt` under whole-word masks.", "",
             "| pre-training | held-out masked-token accuracy | perplexity | last val/loss | last val/sop_accuracy "
             "| wall time |", "|---|---:|---:|---:|---:|---:|"]
    for name, x in p.items():
        h = x["heldout_wwm_masks"]
        lines.append(f"| {name} | {h['masked_accuracy']:.4f} | {h['perplexity']:.2f} | "
                     f"{x['val'].get('val/loss', float('nan')):.4f} | "
                     f"{x['val'].get('val/sop_accuracy', float('nan')):.4f} | {x['wall_s']:.0f} s |")
    lines += ["", f"Fine-tuning: `scripts/bench_chinese.py`'s runs (sentiment: {s['sentiment']} training reviews; NER: "
              f"{s['ner']} sentences; {s['epochs']} epochs; lr {s['lrs']['sentiment']:g} / {s['lrs']['ner']:g}), "
              f"seeds {s['seed']} to {s['seed'] + s['finetune_seeds'] - 1}, tested on the full test splits: mean ± "
              "standard deviation over the seeds.", "",
              "| task | initialization | test | validation (best, mean) | by seed (test) |", "|---|---|---:|---:|---|"]
    for name, x in f.items():
        task, start = name.split("/")
        key = "accuracy" if task == "sentiment" else "entity_f1_strict"
        seeds = ", ".join(f"{t['test'][key]:.4f}" for t in x["trials"])
        lines.append(f"| {task} ({key}) | {start} | {x[key]:.4f} ± {x[key + '_std']:.4f} | {x['val_best']:.4f} | "
                     f"{seeds} |")
    lines += ["", "## Runs", "", "| run | wall time | arguments |", "|---|---|---|"]
    lines += [f"| {k} | {v['wall_s']:.0f} s | `{v['args']}` |" for k, v in r["runs"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
