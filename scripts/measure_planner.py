"""Check `lit-llm plan`'s memory and step-time predictions against real training steps on this CPU.

For each configuration a fresh subprocess builds the HF model from a config (no download), runs one warm-up
step (so AdamW's states exist, as in every later step), then measures step 2:

- peak memory: what was live before the step (weights, buffers and optimizer states, summed over their
  storages; gradients were set to None) plus the maximum of ``total_allocated`` over the allocation events
  that ``torch.profiler(profile_memory=True)`` records from torch's CPU allocator during the step. Every tensor
  byte goes through that allocator, and the events carry its running total of the bytes allocated (and not yet
  freed) since profiling began, so the sum is the exact peak of live tensor bytes. ``tracemalloc`` does not see
  these allocations, and the process RSS also counts glibc arenas that are freed but kept, the Python heap and
  library code paged in by the first step; the RSS high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs`` right before the step) minus the RSS before the model was built is shown only as
  a cross-check (it is far above the tensor bytes for small models: code and allocator slack).
- step time: the fastest of 5 further steps (forward, backward, optimizer step), without the profiler.

The optimizer is the one a lit-llm module builds (``lit_llm.training.optim.build_optimizer``): AdamW with torch's
fused kernel, or bitsandbytes' AdamW8bit for the 8-bit rows.

The prediction is ``lit_llm.planning.estimate_memory`` / ``estimate_step_time`` with the CPU's measured fp32
matmul peak and copy bandwidth as the hardware's numbers; the ``accelerate`` column is what
``accelerate estimate-memory`` counts for training (weights + grads + Adam = 16 B/param; accelerate is not
installed here, so the formula is computed directly).

Usage::
    .venv/bin/python scripts/measure_planner.py            # writes benchmarks/planner.{json,md}
    .venv/bin/python scripts/measure_planner.py --gpu      # on a GPU: $OUT/planner_gpu.* ($OUT set) or benchmarks/

Each configuration runs in its own process; the tables are rewritten after every row, so a run stopped by a
timeout keeps what it measured, and a configuration that fails (bitsandbytes missing for an 8-bit row) is
reported and skipped instead of ending the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python scripts/measure_planner.py` from a checkout without `pip install -e .`
THREADS = 1  # the machine is shared; one thread keeps timings comparable between configurations
GPU_HARDWARE = "H200"  # the planner preset for --gpu predictions when the device's name matches no preset

CONFIGS: list[dict[str, Any]] = [
    dict(name="bert-L2-h64 mlm s128 b8", arch="bert", task="mlm", layers=2, hidden=64, heads=2, vocab=1000,
         seq=128, batch=8, attention="flash"),
    dict(name="bert-L4-h128 mlm s128 b16 eager", arch="bert", task="mlm", layers=4, hidden=128, heads=4,
         vocab=8000, seq=128, batch=16, attention="eager", attention_dropout=0.1),
    dict(name="bert-L4-h128 mlm s256 b8 ckpt", arch="bert", task="mlm", layers=4, hidden=128, heads=4,
         vocab=8000, seq=256, batch=8, attention="flash", checkpointing=True),
    dict(name="bert-L6-h256 cls s128 b16 8bit", arch="bert", task="classification", layers=6, hidden=256,
         heads=4, vocab=30522, seq=128, batch=16, attention="flash", optimizer_8bit=True),
    dict(name="minilm-L6-h384 mlm s128 b8", arch="bert", task="mlm", layers=6, hidden=384, heads=12,
         vocab=30522, seq=128, batch=8, attention="flash"),
    dict(name="gpt2-L4-h128 clm s256 b8", arch="gpt2", task="clm", layers=4, hidden=128, heads=4, vocab=8000,
         seq=256, batch=8, attention="flash"),
    dict(name="gpt2-L6-h256 clm s128 b8 ckpt 8bit", arch="gpt2", task="clm", layers=6, hidden=256, heads=8,
         vocab=16000, seq=128, batch=8, attention="flash", checkpointing=True, optimizer_8bit=True),
    dict(name="gpt2-L2-h64 clm s512 b4 eager", arch="gpt2", task="clm", layers=2, hidden=64, heads=4,
         vocab=2000, seq=512, batch=4, attention="eager", attention_dropout=0.1),
]


# BERT-base-sized configurations for the GPU check (`--gpu`): bf16 autocast as Lightning's bf16-mixed does.
GPU_CONFIGS: list[dict[str, Any]] = [
    dict(name="bert-base mlm s128 b32 bf16", arch="bert", task="mlm", layers=12, hidden=768, heads=12,
         vocab=30522, seq=128, batch=32, attention="flash", precision="bf16-mixed"),
    dict(name="bert-base mlm s512 b16 fp32 eager", arch="bert", task="mlm", layers=12, hidden=768, heads=12,
         vocab=30522, seq=512, batch=16, attention="eager", attention_dropout=0.1),
    dict(name="bert-base mlm s512 b32 bf16 ckpt", arch="bert", task="mlm", layers=12, hidden=768, heads=12,
         vocab=30522, seq=512, batch=32, attention="flash", precision="bf16-mixed", checkpointing=True),
    dict(name="bert-base cls s256 b64 bf16 8bit", arch="bert", task="classification", layers=12, hidden=768,
         heads=12, vocab=30522, seq=256, batch=64, attention="flash", precision="bf16-mixed", optimizer_8bit=True),
    dict(name="gpt2 clm s1024 b8 bf16", arch="gpt2", task="clm", layers=12, hidden=768, heads=12, vocab=50257,
         seq=1024, batch=8, attention="flash", precision="bf16-mixed"),
    dict(name="bert-large mlm s512 b8 fp32", arch="bert", task="mlm", layers=24, hidden=1024, heads=16,
         vocab=30522, seq=512, batch=8, attention="flash"),
]
for _cfg in GPU_CONFIGS:
    _cfg["device"] = "cuda"


# Held out: configurations the memory model was not fitted on (bf16 autocast on the CPU, causal LMs, a Llama with
# grouped-query attention), run with --held-out into benchmarks/planner_heldout.{json,md}.
HELD_OUT: list[dict[str, Any]] = [
    dict(name="bert-L4-h128 mlm s128 b8 bf16", arch="bert", task="mlm", layers=4, hidden=128, heads=4, vocab=8000,
         seq=128, batch=8, attention="flash", precision="bf16-mixed"),
    dict(name="gpt2-L4-h128 clm s128 b8 bf16", arch="gpt2", task="clm", layers=4, hidden=128, heads=4, vocab=8000,
         seq=128, batch=8, attention="flash", precision="bf16-mixed"),
    dict(name="llama-L2-h128 gqa clm s128 b4", arch="llama", task="clm", layers=2, hidden=128, heads=4,
         kv_heads=2, vocab=4000, seq=128, batch=4, attention="flash"),
    dict(name="gpt2-L3-h96 clm s256 b4 eager", arch="gpt2", task="clm", layers=3, hidden=96, heads=4, vocab=3000,
         seq=256, batch=4, attention="eager", attention_dropout=0.1),
]


def _dims(cfg: dict[str, Any]):
    from lit_llm.planning.presets import ModelDims

    if cfg["arch"] == "llama":
        return ModelDims(cfg["name"], "llama", cfg["layers"], cfg["hidden"], cfg["heads"], 4 * cfg["hidden"],
                         cfg["vocab"], 0, kv_heads=cfg.get("kv_heads"), activation="silu", dropout=0.0,
                         attention_dropout=0.0)
    return ModelDims(
        cfg["name"], cfg["arch"], cfg["layers"], cfg["hidden"], cfg["heads"], 4 * cfg["hidden"], cfg["vocab"],
        max_positions=max(512, cfg["seq"]), activation="gelu_new" if cfg["arch"] == "gpt2" else "gelu",
        dropout=0.1, attention_dropout=cfg.get("attention_dropout", 0.0),
    )


def _hf_model(cfg: dict[str, Any]):
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    d = _dims(cfg)
    if d.arch == "llama":
        config = LlamaConfig(vocab_size=d.vocab, hidden_size=d.hidden, num_hidden_layers=d.num_layers,
                             num_attention_heads=d.heads, num_key_value_heads=d.kv_heads, intermediate_size=d.ffn)
        cls = LlamaForCausalLM
    elif d.arch == "bert":
        config = BertConfig(
            vocab_size=d.vocab, hidden_size=d.hidden, num_hidden_layers=d.num_layers, num_attention_heads=d.heads,
            intermediate_size=d.ffn, max_position_embeddings=d.max_positions, hidden_dropout_prob=d.dropout,
            attention_probs_dropout_prob=d.attention_dropout,
        )
        cls = BertForMaskedLM if cfg["task"] == "mlm" else BertForSequenceClassification
    else:
        config = GPT2Config(
            vocab_size=d.vocab, n_embd=d.hidden, n_layer=d.num_layers, n_head=d.heads, n_positions=d.max_positions,
            resid_pdrop=d.dropout, embd_pdrop=d.dropout, attn_pdrop=d.attention_dropout,
        )
        cls = GPT2LMHeadModel
    config._attn_implementation = "sdpa" if cfg["attention"] == "flash" else "eager"
    return cls(config)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _optimizer(cfg: dict[str, Any], model: Any) -> Any:
    """The optimizer a lit-llm module would build (``build_optimizer``): AdamW, fused where torch has the kernel,
    or bitsandbytes' AdamW8bit for an 8-bit row."""
    import functools

    import torch

    from lit_llm.training.optim import build_optimizer

    if cfg.get("optimizer_8bit"):
        import bitsandbytes as bnb

        cls = bnb.optim.AdamW8bit
    else:
        cls = torch.optim.AdamW
    return build_optimizer(model, functools.partial(cls, lr=1e-4))


def measure_one_cuda(cfg: dict[str, Any]) -> dict[str, Any]:
    """The GPU variant: peak from the caching allocator's own statistics (``max_memory_allocated``)."""
    import contextlib

    import torch

    torch.manual_seed(0)
    model = _hf_model(cfg).cuda().train()
    if cfg.get("checkpointing"):
        model.gradient_checkpointing_enable()
    optimizer = _optimizer(cfg, model)
    ids = torch.randint(5, cfg["vocab"], (cfg["batch"], cfg["seq"]), device="cuda")
    labels = torch.randint(0, 2, (cfg["batch"],), device="cuda") if cfg["task"] == "classification" else ids
    mixed = cfg.get("precision", "32-true") != "32-true"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if mixed else contextlib.nullcontext()
        with ctx:
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()

    step()
    torch.cuda.synchronize()
    optimizer.zero_grad(set_to_none=True)
    batch_bytes = ids.numel() * 8 + (labels.numel() * 8 if labels is not ids else 0)
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - batch_bytes
    # one window of steps with a synchronization at each end: a sync per step would stall the GPU's queue
    steps = 5
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return {"measured_peak_bytes": peak, "rss_delta_bytes": torch.cuda.max_memory_reserved(),
            "measured_step_s": (time.perf_counter() - start) / steps,
            "params": sum(p.numel() for p in model.parameters()),
            "cpu_fp32_matmul_tflops": float("nan"), "cpu_copy_gbps": float("nan")}


def measure_one(cfg: dict[str, Any]) -> dict[str, Any]:
    """Build, warm up and measure one configuration in this (fresh) process."""
    if cfg.get("device") == "cuda":
        return measure_one_cuda(cfg)
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    rss_before = _rss_kib("VmRSS")
    model = _hf_model(cfg)
    model.train()
    if cfg.get("checkpointing"):
        model.gradient_checkpointing_enable()
    optimizer = _optimizer(cfg, model)
    ids = torch.randint(5, cfg["vocab"], (cfg["batch"], cfg["seq"]))
    labels = torch.randint(0, 2, (cfg["batch"],)) if cfg["task"] == "classification" else ids
    batch = {"input_ids": ids, "labels": labels}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        _forward_backward_step()

    def _forward_backward_step() -> None:
        # bf16-mixed as Lightning's CPU precision plugin runs it: autocast around the forward
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.get("precision") == "bf16-mixed"):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()

    step()  # warm-up: optimizer states are created here
    optimizer.zero_grad(set_to_none=True)
    # The profiler's running total starts at 0 and counts only blocks allocated while it runs, so what was
    # live before (weights, buffers, optimizer states) is added from the tensors themselves.
    live_before = _storage_bytes(
        [*model.parameters(), *model.buffers()]
        + [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    )
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _forward_backward_step()
    rss_peak = _rss_kib("VmHWM")
    totals = [
        ev.extra_fields.total_allocated
        for ev in _walk(prof.profiler.kineto_results.experimental_event_tree())
        if type(ev.extra_fields).__name__ == "_ExtraFields_Allocation" and ev.extra_fields.device.type == "cpu"
    ]
    # The machine is shared: calibrate the hardware numbers right next to the timed steps, take the fastest
    # of each, so contention hits prediction and measurement alike.
    peak, bandwidth = cpu_peak_tflops(), cpu_memory_gbps()
    peak_bf16 = cpu_peak_tflops(dtype="bf16") if cfg.get("precision") == "bf16-mixed" else float("nan")
    times = []
    for _ in range(5):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "measured_peak_bytes": live_before + max(totals),
        "rss_delta_bytes": (rss_peak - rss_before) * 1024,
        "measured_step_s": min(times),
        "cpu_fp32_matmul_tflops": peak,
        "cpu_bf16_matmul_tflops": peak_bf16,
        "cpu_copy_gbps": bandwidth,
        "params": sum(p.numel() for p in model.parameters()),
    }


def _storage_bytes(tensors) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _walk(roots):
    stack = list(roots)
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children)


def cpu_peak_tflops(threads: int = THREADS, dtype: str = "32") -> float:
    """Matmul throughput of this CPU with ``threads`` threads in fp32 (``"32"``) or ``"bf16"``, the hardware 'peak'
    (lit_llm.planning.cpu's measurement, the one ``lit-llm plan --calibrate`` caches)."""
    import torch

    from lit_llm.planning.cpu import measure_matmul_tflops

    torch.set_num_threads(threads)
    if dtype == "32":
        return measure_matmul_tflops(torch.float32, size=1024, threads=threads, repeats=6)
    return measure_matmul_tflops(torch.bfloat16, size=256, threads=threads, repeats=6)  # ~100x slower without AMX


def cpu_memory_gbps(threads: int = THREADS) -> float:
    """Copy bandwidth of this CPU with ``threads`` threads (best of 5, 256 MiB read + 256 MiB written), GB/s."""
    import torch

    torch.set_num_threads(threads)
    src = torch.ones(64 * 2**20)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def gpu_hardware():
    """The planner preset of this machine's GPU (by its name), else the ``GPU_HARDWARE`` preset."""
    import torch

    from lit_llm.planning.presets import hardware_for_device, resolve_hardware

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return hardware_for_device(name) or resolve_hardware(GPU_HARDWARE)


def predict(cfg: dict[str, Any], peak_tflops: float, memory_gbps: float, bf16_tflops: float = float("nan")
            ) -> dict[str, Any]:
    from lit_llm.planning.choice import PlanChoice
    from lit_llm.planning.memory import accelerate_estimate, estimate_memory
    from lit_llm.planning.presets import resolve_hardware
    from lit_llm.planning.throughput import estimate_step_time

    dims = _dims(cfg)
    if cfg.get("device") == "cuda":
        hw = gpu_hardware()
    else:
        peaks = {"32": peak_tflops} if bf16_tflops != bf16_tflops else {"32": peak_tflops, "bf16": bf16_tflops}
        hw = resolve_hardware("cpu", peak_tflops=peaks, memory_gbps=memory_gbps)
    choice = PlanChoice(
        "ddp", cfg.get("precision", "32-true"), checkpointing=cfg.get("checkpointing", False),
        optimizer_8bit=cfg.get("optimizer_8bit", False), micro_batch=cfg["batch"],
    )
    mem = estimate_memory(dims, cfg["task"], choice, cfg["seq"], hw, attention=cfg["attention"])
    timing = estimate_step_time(dims, cfg["task"], choice, cfg["seq"], hw, attention=cfg["attention"])
    return {
        "predicted_peak_bytes": mem.tensor_peak,  # live tensors only: what both measurements count
        "predicted_breakdown_gib": mem.gib(),
        "accelerate_bytes": accelerate_estimate(dims, cfg["task"]),
        "predicted_step_s": timing.step_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--only", type=int, nargs="*", help="indices of CONFIGS to run (default: all)")
    parser.add_argument("--out", default=None, help="output path without suffix (default benchmarks/planner[_gpu])")
    parser.add_argument("--rewrite", action="store_true", help="rewrite the .md from the .json, measure nothing")
    parser.add_argument("--gpu", action="store_true", help=f"the BERT-base-sized GPU check on one {GPU_HARDWARE}")
    parser.add_argument("--held-out", action="store_true",
                        help="configurations the model was not fitted on (bf16 on CPU, causal LMs, Llama)")
    args = parser.parse_args(argv)
    configs = GPU_CONFIGS if args.gpu else (HELD_OUT if args.held_out else CONFIGS)
    name = "planner_gpu" if args.gpu else ("planner_heldout" if args.held_out else "planner")
    base = Path(os.environ["OUT"]) if args.gpu and os.environ.get("OUT") else ROOT / "benchmarks"
    out = Path(args.out) if args.out else base / name
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one))))
        return 0
    if args.rewrite:  # regenerate the markdown from a committed JSON, without measuring
        saved = json.loads(out.with_suffix(".json").read_text())
        _write(out, saved["rows"], saved["meta"]["command"].removeprefix(".venv/bin/python "))
        return 0
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    command = " ".join(["scripts/measure_planner.py", *(argv or sys.argv[1:])])
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    for i, cfg in enumerate(configs):
        if args.only and i not in args.only:
            continue
        proc = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True, env=env, check=False
        )
        if proc.returncode:
            reason = _skip_reason(cfg, proc.stderr)
            print(f"{cfg['name']:38s} skipped: {reason}", flush=True)
            skipped.append({"config": cfg["name"], "reason": reason})
            continue
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
        row = {"config": cfg, **measured, **predict(cfg, measured["cpu_fp32_matmul_tflops"], measured["cpu_copy_gbps"],
                                                     measured.get("cpu_bf16_matmul_tflops", float("nan")))}
        row["memory_error"] = row["predicted_peak_bytes"] / row["measured_peak_bytes"] - 1
        row["time_ratio"] = row["predicted_step_s"] / row["measured_step_s"]
        rows.append(row)
        print(
            f"{cfg['name']:38s} measured {row['measured_peak_bytes'] / 2**20:8.1f} MiB  predicted "
            f"{row['predicted_peak_bytes'] / 2**20:8.1f} MiB ({row['memory_error']:+.1%})  "
            f"rss {row['rss_delta_bytes'] / 2**20:7.1f}  "
            f"accelerate {row['accelerate_bytes'] / 2**20:7.1f}  step {row['measured_step_s'] * 1e3:7.1f} ms "
            f"pred {row['predicted_step_s'] * 1e3:7.1f} ms",
            flush=True,
        )
        _write(out, rows, command, skipped)  # after every row: a timeout keeps what was measured
    if not rows:
        print("measure_planner: no configuration could be measured", file=sys.stderr)
        return 1
    _write(out, rows, command, skipped)
    return 0


def _skip_reason(cfg: dict[str, Any], stderr: str) -> str:
    if cfg.get("optimizer_8bit") and "No module named 'bitsandbytes'" in stderr:
        return "bitsandbytes is not installed here (AdamW8bit row)"
    return "the measurement failed: " + (stderr.strip().splitlines() or ["no output"])[-1][:300]


def _largest_time_misses(rows: list[dict[str, Any]]) -> str:
    """The configurations whose step time is off by more than 1.5x either way, with the known cause of each kind."""
    misses = sorted((r for r in rows if not 1 / 1.5 <= r["time_ratio"] <= 1.5),
                    key=lambda r: -abs(math.log(r["time_ratio"])))
    if not misses:
        return "Every prediction is within 1.5x of the measured step."
    causes = []
    bf16 = [r for r in misses if r["config"].get("precision") == "bf16-mixed" and r["config"].get("device") != "cuda"]
    if bf16:
        from lit_llm.planning.cpu import read_cpuinfo

        share = max(r["cpu_bf16_matmul_tflops"] / r["cpu_fp32_matmul_tflops"] for r in bf16)
        charged = (f"bf16 autocast on a CPU whose bf16 unit is {read_cpuinfo().bf16_unit!r}: the planner charges the "
                   "step's matmul FLOPs at the measured rate of a plain 256x256 bf16 matmul")
        if share > 1:
            causes.append(f"{charged} (up to {share:.1%} of fp32's), but the casts of the fp32 weights and the "
                          "softmax, layer norms and GELU that autocast keeps in fp32 do not speed up with it")
        else:
            causes.append(f"{charged} (at most {share:.1%} of fp32), but under autocast the step's matmuls do not "
                          "all take that slow path (on such a CPU the planner recommends fp32 anyway)")
    if any(r["config"].get("attention") == "eager" and r["config"].get("attention_dropout") for r in misses):
        causes.append("eager attention with attention dropout (softmax and dropout over the s*s matrix cost more "
                      "than the bandwidth term charges on one core)")
    if any(r["params"] < 1e6 for r in misses):
        causes.append("kernel overheads of tiny models")
    listed = ", ".join(f"{r['config']['name']} ({r['time_ratio']:.2f})" for r in misses)
    return f"Off by more than 1.5x: {listed}." + (f" Causes: {'; '.join(causes)}." if causes else "")


def _write(out: Path, rows: list[dict[str, Any]], command: str, skipped: list[dict[str, str]] | None = None) -> None:
    import platform

    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": f".venv/bin/python {command}".strip(), "torch": torch.__version__, "threads": THREADS,
            "machine": platform.processor() or platform.machine()}
    payload: dict[str, Any] = {"meta": meta, "rows": rows}
    if skipped:
        payload["skipped"] = skipped
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    mib = 2**20
    lines = [
        "# `lit-llm plan`: predicted vs measured, CPU",
        "",
        f"Made by `{meta['command']}` (torch {meta['torch']}, {THREADS} thread; each configuration's fp32 matmul "
        "peak and copy bandwidth are measured in its own process right before its timed steps; planner's CPU "
        "MFU preset 0.5).",
        "",
        *(["Held out: the memory model's constants were fitted on the configurations of `planner.md`; these four "
           "(bf16 autocast on the CPU for a masked and a causal LM, a Llama with grouped-query attention, another "
           "GPT-2 shape) were not among them.", ""]
          if "--held-out" in command else []),
        "| config | params | measured peak MiB | predicted MiB | error | RSS delta (GPU: reserved) MiB | "
        "accelerate MiB | "
        "matmul TFLOP/s | copy GB/s | measured step ms | predicted ms | time pred/meas |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']['name']} | {r['params'] / 1e6:.2f}M | {r['measured_peak_bytes'] / mib:.1f} | "
            f"{r['predicted_peak_bytes'] / mib:.1f} | {r['memory_error']:+.1%} | {r['rss_delta_bytes'] / mib:.1f} | "
            f"{r['accelerate_bytes'] / mib:.1f} | {r['cpu_fp32_matmul_tflops']:.3f} | {r['cpu_copy_gbps']:.1f} | "
            f"{r['measured_step_s'] * 1e3:.1f} | {r['predicted_step_s'] * 1e3:.1f} | "
            f"{r['time_ratio']:.2f} |"
        )
    worst = max(abs(r["memory_error"]) for r in rows) if rows else float("nan")
    ratios = [r["time_ratio"] for r in rows]
    under = [r["measured_peak_bytes"] / r["accelerate_bytes"] for r in rows]
    lines += [
        "",
        f"Worst memory error: {worst:.1%} (goal: within 15% in every configuration).",
        "",
        f"`accelerate estimate-memory`'s training count (16 B/param) is {min(under):.1f}x to {max(under):.0f}x below "
        "the measured peak: it leaves out activations, the LM head's loss buffers and optimizer temporaries, which "
        "dominate for small models, long sequences and large vocabularies.",
        "",
        f"Step time, predicted / measured: {min(ratios):.2f} to {max(ratios):.2f}. On this shared CPU the machine "
        "numbers are calibrated per configuration. " + _largest_time_misses(rows)
        + " Time is an estimate to rank plans, not a promise.",
        "",
    ]
    method = (__doc__ or "").split("Usage::")[0].split("\n", 2)[2]
    lines += ["## Method", "", method.strip(), ""]
    if any(r["config"].get("device") == "cuda" for r in rows):
        lines += ["GPU rows: the peak is `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()` "
                  "(minus the batch), compared with the planner's `tensor_peak` (no CUDA context, no "
                  f"fragmentation allowance); predictions use the planner preset matching the GPU's name "
                  f"(else {GPU_HARDWARE}).", ""]
    for row in skipped or []:
        lines.append(f"Skipped: {row['config']}: {row['reason']}.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
