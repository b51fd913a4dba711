#!/usr/bin/env python
"""The GPU check: one script for one NVIDIA GPU with no network, under 8 minutes, writing JSON + markdown.

Measures, on the GPU:
1. MLM pre-training throughput (tokens/s) and MFU of a BERT-base-sized model (hidden 768, 12 layers, 12 heads)
   in bf16-mixed at sequence 128 and 512, through lit-llm's MaskedLanguageModel and the Lightning Trainer
   (dense LM head, so every counted FLOP is computed);
2. TransformerFSDP on one GPU as a smoke test (a few steps, finite loss), in a child process with a timeout so
   that an NCCL hang cannot eat the GPU's time;
3. the bitsandbytes int8 backend on CUDA (logit agreement with bf16, latency);
4. AdamW8bit optimizer-state memory against fp32 AdamW on BERT-base.

MFU needs the GPU's peak: Lightning's table first, else the planner's hardware presets (an "NVIDIA H200" is
not in Lightning's table; the planner gives 989 TFLOP/s dense bf16). Throughput is timed over a window of steps
with one device synchronization at each end, not one per step. Without bitsandbytes, parts 3 and 4 print a
"skipped" line and the rest runs. Results are written after every part, under ``$OUT`` when that is set (the
GPU machine sends back only ``$OUT``), else under ``benchmarks/``.

``--dry-run`` runs the same code with tiny sizes on the CPU (what the test suite exercises): the FSDP child
process and its timeout run too, and the child reports FSDP1 as skipped since FSDP1 needs CUDA.

Usage::
    bash scripts/gpu_check.sh [--out DIR/gpu_check] [--dry-run]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FSDP_TIMEOUT_S = 150  # the FSDP child process; a healthy run takes under a minute on one GPU

WORDS = (
    "the of and to in a is was for on as with by he she it at from his her an are were be this that which "
    "or had first one new their also after two been time its who years city film war world state music"
).split()


def make_tokenizer(out: Path, vocab_size: int) -> Path:
    """A WordPiece tokenizer of ``vocab_size`` tokens built locally (the GPU machine has no hub access)."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,")
    vocab = list(dict.fromkeys(specials + WORDS + chars + [f"##{c}" for c in chars]))
    vocab += [f"tok{i}" for i in range(vocab_size - len(vocab))]
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, model_max_length=512).save_pretrained(out)
    return out


class _RandomTokens(torch.utils.data.Dataset):
    """Random token ids (no padding): throughput does not depend on the text."""

    def __init__(self, n: int, seq_len: int, vocab_size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(50, vocab_size, (n, seq_len), generator=g)
        self.ids[:, 0], self.ids[:, -1] = 2, 3  # [CLS] ... [SEP]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i])}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _StepTimer:
    """Wall time of optimizer steps ``warmup + 1 .. warmup + steps``: one synchronization at each end of the window.

    Synchronizing after every step would stall the GPU's queue and understate its throughput.
    """

    def __init__(self, device: torch.device, warmup: int, steps: int) -> None:
        from lightning.pytorch.callbacks import Callback

        timer = self

        class _CB(Callback):
            def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
                if trainer.global_step == warmup:
                    _sync(device)
                    timer.start = time.perf_counter()
                elif trainer.global_step == warmup + steps:
                    _sync(device)
                    timer.end = time.perf_counter()
                    timer.steps = steps

        self.callback = _CB()
        self.start = self.end = 0.0
        self.steps = 0


def out_path(arg: str | None, name: str = "gpu_check") -> Path:
    """``--out`` if given, else ``$OUT/<name>`` when ``$OUT`` is set (what comes back from the GPU machine),
    else ``benchmarks/<name>``."""
    if arg:
        return Path(arg)
    base = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks"
    return base / name


def bitsandbytes_missing() -> str | None:
    """None when bitsandbytes imports, else the line that says why its parts are skipped."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        return f"bitsandbytes is not installed here ({err}); pip install bitsandbytes to run this part"
    return None


def vocab_size(dry_run: bool) -> int:
    return 256 if dry_run else 30522


def bert_config(dry_run: bool, vocab_size: int) -> dict[str, Any]:
    """BERT-base dimensions, or tiny ones for ``--dry-run``, as a config dict with ``model_type``."""
    if dry_run:
        size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    else:
        size = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    return dict(model_type="bert", vocab_size=vocab_size, max_position_embeddings=512, **size)


def hf_bert_config(dry_run: bool, **overrides: Any) -> Any:
    """The same dimensions as a ``transformers`` config object."""
    from transformers import AutoConfig

    spec = bert_config(dry_run, vocab_size(dry_run))
    return AutoConfig.for_model(spec.pop("model_type"), **spec, **overrides)


def peak_flops(device_name: str, lightning_flops: float | None) -> tuple[float | None, str]:
    """The bf16 dense peak FLOP/s of ``device_name`` and where it came from.

    Lightning's table first; else the planner's preset whose name the device's name contains (an
    ``NVIDIA H200`` gets the H200 preset's 989 TFLOP/s); else ``(None, "unknown")``.

    Example::
        peak_flops("NVIDIA H200", None)  # (9.89e14, 'planner preset H200')
    """
    if lightning_flops:
        return float(lightning_flops), "lightning"
    from lit_llm.planning.presets import hardware_for_device

    hw = hardware_for_device(device_name)
    if hw is not None and hw.is_gpu and "bf16" in hw.peak_tflops:
        return hw.peak_tflops["bf16"] * 1e12, f"planner preset {hw.name}"
    return None, "unknown"


def device_peak_flops(device: torch.device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return peak_flops(platform.processor() or "cpu", None)
    from lightning.fabric.utilities.throughput import get_available_flops

    return peak_flops(torch.cuda.get_device_name(device), get_available_flops(device, torch.bfloat16))


def mlm_throughput(tok: Path, device: torch.device, seq_len: int, batch: int, dry_run: bool) -> dict[str, Any]:
    from lightning.pytorch import Trainer

    from lit_llm.training.flops import flops_per_batch
    from lit_llm.modules import MaskedLanguageModel

    vocab = vocab_size(dry_run)
    model = MaskedLanguageModel(
        bert_config(dry_run, vocab),
        tokenizer=str(tok),
        export=False,
        sparse_prediction=False,
        exact_token_loss=False,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4, fused=device.type == "cuda"),
    )
    warmup, steps = (1, 2) if dry_run else (10, 40)
    data = torch.utils.data.DataLoader(_RandomTokens(batch * (warmup + steps + 1), seq_len, vocab), batch_size=batch)
    timer = _StepTimer(device, warmup, steps)
    trainer = Trainer(
        accelerator=device.type,
        devices=1,
        precision="bf16-mixed",
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer.callback],
        limit_val_batches=0,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, train_dataloaders=data)
    elapsed = timer.end - timer.start
    flops = flops_per_batch(model.model, batch, seq_len) * timer.steps
    peak, source = device_peak_flops(device)
    result = {
        "seq_len": seq_len,
        "batch": batch,
        "steps_timed": timer.steps,
        "seconds": elapsed,
        "tokens_per_s": batch * seq_len * timer.steps / elapsed if elapsed > 0 else None,
        "achieved_tflops": flops / elapsed / 1e12 if elapsed > 0 else None,
        "peak_tflops_bf16": peak / 1e12 if peak else None,
        "peak_source": source,
        "mfu": flops / elapsed / peak if peak and elapsed > 0 else None,
        "params": sum(p.numel() for p in model.parameters()),
    }
    if device.type == "cuda":
        result["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def run_child_part(part: str, tok: Path, dry_run: bool, timeout_s: float) -> dict[str, Any]:
    """Run one part in a child process killed after ``timeout_s`` (a hung NCCL collective never returns)."""
    cmd = [sys.executable, __file__, "--part", part, "--tokenizer", str(tok)] + (["--dry-run"] if dry_run else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"{part} timed out after {timeout_s:g} s (killed; a hung collective?)"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        return {"error": f"{part} exited with {proc.returncode}: {proc.stderr[-1500:]}"}
    return dict(json.loads(lines[-1]))


def fsdp_smoke(tok: Path, device: torch.device, dry_run: bool) -> dict[str, Any]:
    if device.type != "cuda":
        return {"skipped": "TransformerFSDP (FSDP1) needs CUDA; the CPU path is TransformerFSDP2, tested in the suite"}
    from lightning.pytorch import Trainer

    from lit_llm.modules import MaskedLanguageModel
    from lit_llm.strategies import TransformerFSDP

    model = MaskedLanguageModel(bert_config(dry_run, 30522), tokenizer=str(tok), export=False)
    data = torch.utils.data.DataLoader(_RandomTokens(64, 128, 30522), batch_size=16)
    losses: list[float] = []

    from lightning.pytorch.callbacks import Callback

    class _Loss(Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any) -> None:
            losses.append(float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs))

    trainer = Trainer(
        accelerator="cuda",
        devices=1,
        strategy=TransformerFSDP(activation_checkpointing=True),
        precision="bf16-mixed",
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_Loss()],
        limit_val_batches=0,
    )
    trainer.fit(model, train_dataloaders=data)
    wrapped = sum(type(m).__name__ == "FullyShardedDataParallel" for m in trainer.strategy.model.modules())
    return {
        "steps": trainer.global_step,
        "losses": losses,
        "finite": all(map(lambda x: x == x, losses)),
        "fsdp_units": wrapped,
    }


def int8_check(device: torch.device, dry_run: bool) -> dict[str, Any]:
    missing = bitsandbytes_missing()
    if missing:
        return {"skipped": missing}
    from transformers import AutoModelForSequenceClassification

    from lit_llm.compression.quantization import quantize_bitsandbytes

    config = hf_bert_config(dry_run, num_labels=2)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    ids = torch.randint(50, config.vocab_size, (32, 128))
    ref_model = model.to(device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    with torch.no_grad():
        ref = ref_model(input_ids=ids.to(device)).logits.float()
    replaced = quantize_bitsandbytes(model.float().eval())
    model.to(device)
    with torch.no_grad():
        out = model(input_ids=ids.to(device)).logits.float()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            model(input_ids=ids.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        latency = (time.perf_counter() - start) / 5
    return {
        "backend": "bitsandbytes",
        "device": device.type,
        "linears_replaced": replaced,
        "max_abs_logit_diff_vs_reference": float((out - ref).abs().max()),
        "latency_batch32_s": latency,
    }


def optimizer_memory(device: torch.device, dry_run: bool) -> dict[str, Any]:
    missing = bitsandbytes_missing()
    if missing:
        return {"skipped": missing}
    import bitsandbytes as bnb
    from transformers import AutoModelForMaskedLM

    config = hf_bert_config(dry_run)
    out: dict[str, Any] = {}
    for name, factory in (("AdamW", torch.optim.AdamW), ("AdamW8bit", bnb.optim.AdamW8bit)):
        torch.manual_seed(0)
        model = AutoModelForMaskedLM.from_config(config).to(device)
        opt = factory(model.parameters(), lr=1e-4)
        model(input_ids=torch.randint(50, config.vocab_size, (2, 16), device=device)).logits.float().mean().backward()
        opt.step()
        state_bytes = sum(
            t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)
        )
        out[name] = {
            "state_bytes": state_bytes,
            "bytes_per_param": state_bytes / sum(p.numel() for p in model.parameters()),
        }
        del model, opt
    out["reduction"] = 1 - out["AdamW8bit"]["state_bytes"] / out["AdamW"]["state_bytes"]
    return out


def write_results(out: Path, result: dict[str, Any]) -> None:
    """``out.json`` and ``out.md``; called after every part so a killed run still leaves what it measured."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# GPU check ({result['device']})", "", f"Command: `{result['command']}`", ""]
    rows = result.get("mlm_bf16")
    for row in rows if isinstance(rows, list) else []:
        mfu = f"{row['mfu']:.1%} (peak: {row['peak_source']})" if row.get("mfu") else "n/a (no peak for this device)"
        lines.append(
            f"- MLM bf16 seq {row['seq_len']} batch {row['batch']}: {row['tokens_per_s']:.0f} tokens/s, MFU {mfu}"
        )
    for key in ("fsdp_smoke", "int8_bitsandbytes", "optimizer_memory"):
        if key in result:
            lines.append(f"- {key}: `{json.dumps(result[key])[:300]}`")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _child_main(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    parts = {"fsdp_smoke": fsdp_smoke}
    print(json.dumps(parts[args.part](Path(args.tokenizer), device, args.dry_run)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="output path without suffix (default $OUT/gpu_check, else "
                        "benchmarks/gpu_check)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--part", choices=("fsdp_smoke",), help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--fsdp-timeout", type=float, default=FSDP_TIMEOUT_S, help="seconds for the FSDP child")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.part:
        return _child_main(args)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --dry-run on a CPU machine", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    out = out_path(args.out)
    result: dict[str, Any] = {
        "command": "bash scripts/gpu_check.sh" + (" --dry-run" if args.dry_run else ""),
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tok = make_tokenizer(Path(tmp) / "tok", vocab_size(args.dry_run))
        sizes = [(128, 4), (512, 2)] if args.dry_run else [(128, 64), (512, 16)]
        parts = {
            "mlm_bf16": lambda: [mlm_throughput(tok, device, s, b, args.dry_run) for s, b in sizes],
            "fsdp_smoke": lambda: run_child_part("fsdp_smoke", tok, args.dry_run, args.fsdp_timeout),
            "int8_bitsandbytes": lambda: int8_check(device, args.dry_run),
            "optimizer_memory": lambda: optimizer_memory(device, args.dry_run),
        }
        for name, run in parts.items():
            t0 = time.perf_counter()
            try:
                result[name] = run()
            except Exception as err:  # one failing part must not hide the others' results
                result[name] = {"error": f"{type(err).__name__}: {err}"}
            status = result[name].get("skipped") if isinstance(result[name], dict) else None
            print(f"{name}: {time.perf_counter() - t0:.1f}s" + (f" (skipped: {status})" if status else ""),
                  flush=True)
            result["total_seconds"] = time.perf_counter() - started
            write_results(out, result)
    print(json.dumps(result, indent=2))
    print(f"gpu_check: results in {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    errors = [k for k, v in result.items() if isinstance(v, dict) and "error" in v]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
