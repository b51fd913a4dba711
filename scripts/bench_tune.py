"""`lit-llm tune` on the main job with a small budget, then the best values retrained on the full data.

1. Budget: a copy of ``configs/finetune/minilm_rotten_tomatoes.yaml`` that trains 1 epoch on a seeded random
   subset of the training snippets (3,000 by default); ``lit-llm tune`` runs N trials of it (8 by default) over
   ``configs/tune/minilm_rotten_tomatoes_search.yaml`` (lr, weight decay, batch size), TPE seeded.
2. Retrain: the main config with the best trial's values (written as a runnable YAML by
   :func:`lit_llm.commands.tune.write_best_config`) and the hand-set main config, each a full ``lit-llm fit
   --test_after_fit true`` run on all training snippets; both report validation accuracy (best checkpoint), then
   test accuracy.

Validation selects; test is read once per config, after the choice is made.

Usage::
    .venv/bin/python scripts/bench_tune.py                     # full: about 40 min on the 2-core CPU
    .venv/bin/python scripts/bench_tune.py --smoke             # seconds: a tiny BERT, tiny subsets, 2 trials

Full results go to benchmarks/tune.{json,md} and benchmarks/tune_*.png; a smoke run writes only under --work.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MAIN_CONFIG = REPO / "configs" / "finetune" / "minilm_rotten_tomatoes.yaml"
SEARCH = REPO / "configs" / "tune" / "minilm_rotten_tomatoes_search.yaml"


def subset_csv(source: Path, out: Path, n: int | None, seed: int) -> int:
    """Write a seeded random sample of ``n`` rows of a CSV (all rows when ``n`` is None); returns the row count."""
    with source.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or []), list(reader)
    if n is not None and n < len(rows):
        rows = random.Random(seed).sample(rows, n)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def tiny_model(out: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer, hidden-32 BERT with the main job's tokenizer: the smoke run trains it in seconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def fit(config: Path, run_root: Path, extra: list[str]) -> dict[str, Any]:
    """``lit-llm fit --config CONFIG --test_after_fit true``: best validation accuracy, test accuracy, wall time."""
    from lit_llm.cli import LitLLMCLI

    start = time.perf_counter()
    cli = LitLLMCLI(args=["fit", "--config", str(config), "--test_after_fit", "true", "--run_root", str(run_root),
                          *extra])
    checkpoint = cli.trainer.checkpoint_callback
    score = getattr(checkpoint, "best_model_score", None)
    return {
        "run_dir": str(cli.run_dir),
        "val_accuracy": None if score is None else float(score),
        "test_accuracy": float(cli.trainer.callback_metrics["test/accuracy"]),
        "minutes": round((time.perf_counter() - start) / 60, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--subset", type=int, default=3000, help="training snippets each trial sees")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset and of the TPE sampler")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_tune", help="scratch folder (new)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    parser.add_argument("--smoke", action="store_true", help="tiny model and data, 2 trials: checks the script")
    args = parser.parse_args(argv)

    from lit_llm.commands import tune

    main_cfg = yaml.safe_load(MAIN_CONFIG.read_text())
    data_args = main_cfg["data"]["init_args"]
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    files = {k: REPO / data_args[k] for k in ("train_file", "validation_file", "test_file")}
    for path in files.values():
        if not path.is_file():
            print(f"bench_tune: {path} is missing; run `make data` first", file=sys.stderr)
            return 2

    # The "full" config: the main job itself, or in smoke mode a miniature of it (tiny model, small files).
    full_cfg = main_cfg
    if args.smoke:
        args.trials, args.subset = 2, 96
        model = tiny_model(args.work / "tiny_bert", REPO / data_args["tokenizer"])
        full_cfg = json.loads(json.dumps(main_cfg))
        full_cfg["model"]["init_args"]["model"] = str(model)
        full_cfg["data"]["init_args"]["tokenizer"] = str(model)
        for key, n in (("train_file", 256), ("validation_file", 64), ("test_file", 64)):
            full_cfg["data"]["init_args"][key] = str(args.work / f"smoke_{key}.csv")
            subset_csv(files[key], Path(full_cfg["data"]["init_args"][key]), n, args.seed)
        full_cfg["trainer"]["max_epochs"] = 1
    full_config = args.work / "minilm_rotten_tomatoes.yaml"
    full_config.write_text(yaml.safe_dump(full_cfg, sort_keys=False))

    # 1. the budget: 1 epoch on a subset of the training snippets
    budget = json.loads(json.dumps(full_cfg))
    train_source = Path(full_cfg["data"]["init_args"]["train_file"])
    subset = args.work / f"train_{args.subset}.csv"
    n_subset = subset_csv(REPO / train_source if not train_source.is_absolute() else train_source, subset,
                          args.subset, args.seed)
    budget["data"]["init_args"]["train_file"] = str(subset)
    budget["trainer"]["max_epochs"] = 1
    budget_config = args.work / "minilm_rotten_tomatoes_budget.yaml"
    budget_config.write_text(yaml.safe_dump(budget, sort_keys=False))
    run_root = args.work / "runs"
    start = time.perf_counter()
    status = tune.main(["--config", str(budget_config), "--search", str(SEARCH), "--trials", str(args.trials),
                        "--run_root", str(run_root), "--seed", str(args.seed)])
    if status != 0:
        return status
    tune_minutes = round((time.perf_counter() - start) / 60, 1)
    study = tune.open_study(f"sqlite:///{run_root / budget_config.stem / 'study.db'}", budget_config.stem, "max")
    best = study.best_trial

    # 2. retrain the best values and the hand-set config on all the training data
    best_config = tune.write_best_config(
        full_config, tune.full_config(str(full_config)), best, args.work / "tuned.yaml",
        f"# {MAIN_CONFIG.name} with the values of trial {best.number} of the budget study\n", run_name="tuned",
    )
    tuned = fit(best_config, run_root, [])
    hand_set = fit(full_config, run_root, [])

    trials = [
        {"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
         "steps_reported": sorted(t.intermediate_values)}
        for t in study.trials
    ]
    result = {
        "command": "python scripts/bench_tune.py" + (" --smoke" if args.smoke else ""),
        "smoke": args.smoke,
        "budget": {"trials": args.trials, "train_snippets": n_subset, "epochs": 1, "minutes": tune_minutes,
                   "search": str(SEARCH.relative_to(REPO)), "sampler_seed": args.seed},
        "trials": trials,
        "best_trial": best.number,
        "best_params": best.params,
        "hand_set": hand_set,
        "tuned": tuned,
    }
    out_dir = args.work if args.smoke else args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tune.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "tune.md").write_text(report(result))
    for name in ("optimization_history.png", "param_importances.png"):
        source = run_root / budget_config.stem / name
        if source.exists():
            shutil.copy(source, out_dir / f"tune_{name}")
    print(report(result))
    return 0


def report(r: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    def line(name: str, run: dict[str, Any]) -> str:
        return f"| {name} | {pct(run['val_accuracy'])} | {pct(run['test_accuracy'])} | {run['minutes']} |"

    rows = "\n".join(
        f"| {t['number']} | {t['state']} | {pct(t['value'])} | "
        + ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                    for k, v in t["params"].items())
        + " |"
        for t in r["trials"]
    )
    b = r["budget"]
    return f"""# `lit-llm tune` on the main job: a small budget, then the best values on all the data

Command: `{r['command']}` ({'smoke run: tiny model and data, the numbers mean nothing' if r['smoke'] else '2-core CPU'})

Budget: {b['trials']} trials of {b['epochs']} epoch on {b['train_snippets']:,} training snippets (seeded sample),
search space `{b['search']}`, TPE seed {b['sampler_seed']}, median pruning; {b['minutes']} min.
Objective: best validation accuracy of the trial.

| trial | state | val accuracy | values |
|---|---|---|---|
{rows}

Retrained on all training snippets with the main config's schedule (`lit-llm fit --test_after_fit true`):

| config | val accuracy (best checkpoint) | test accuracy | minutes |
|---|---|---|---|
{line('hand-set (' + MAIN_CONFIG.name + ')', r['hand_set'])}
{line('tuned (trial ' + str(r['best_trial']) + ')', r['tuned'])}

Best values: {', '.join(f'{k}={v!r}' for k, v in r['best_params'].items())}

Plots: `tune_optimization_history.png`, `tune_param_importances.png`.
"""


if __name__ == "__main__":
    sys.exit(main())
