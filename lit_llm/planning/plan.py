"""Enumerate candidate plans, estimate each, recommend one and say why.

Example::
    from lit_llm.planning import PlanRequest, make_plan, resolve_hardware, resolve_model

    report = make_plan(PlanRequest(resolve_model("bert-large"), "mlm", seq_len=512, global_batch=256,
                                   hardware=resolve_hardware("A100-40GB"), devices=8, steps=10_000))
    report.best.choice.label, report.reasons
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Any, cast

from lit_llm.planning.choice import ADAPTERS, PRECISIONS, STRATEGIES, Adapter, PlanChoice, Precision, Strategy
from lit_llm.planning.memory import Attention, MemoryEstimate, estimate_memory
from lit_llm.planning.params import TASKS, Task, lora_parameters, parameter_tensors
from lit_llm.planning.presets import GIB, HardwareSpec, ModelDims
from lit_llm.planning.throughput import StepTime, estimate_step_time

__all__ = ["PlanRequest", "Candidate", "PlanReport", "NothingFitsError", "make_plan", "evaluate_candidates"]

_PRECISION_PEAK = {"32-true": "32", "bf16-mixed": "bf16", "16-mixed": "16"}
_TIGHT = 0.92  # above this share of device memory a plan counts as tight (fragmentation, spikes)


class NothingFitsError(ValueError):
    """No candidate fits in device memory; the message says what would."""


@dataclass(frozen=True)
class PlanRequest:
    """What to train and on what: the planner's whole input.

    Args:
        model: the model's dimensions (see :func:`~lit_llm.planning.presets.resolve_model`).
        task: ``mlm``, ``clm`` or ``classification``.
        seq_len: tokens per sequence.
        global_batch: sequences per optimizer step over all devices.
        hardware: the device type.
        devices: devices per node.
        nodes: nodes.
        tokens: tokens to train on (sets the number of steps); or give ``steps``.
        steps: optimizer steps.
        micro_batch: fix the micro-batch instead of searching for the best one.
        precision: fix the precision; default: try every precision the hardware supports.
        strategy: fix the strategy; default: try DDP and the FSDP variants that apply.
        allow_offload: consider FSDP CPU offload.
        attention: ``flash`` (SDPA / FlashAttention) or ``eager``.
        num_labels: classes, for classification.
        model_spec: how the emitted config names the model (a directory, hub id, or a config dict).
        adapter: ``lora`` or ``qlora`` to plan parameter-efficient fine-tuning, ``none`` for full training;
            default (None): recommend full training and show the best LoRA and QLoRA plans beside it (for clm
            and classification: fine-tuning tasks).
        lora_rank: the LoRA rank of adapter plans.

    Raises:
        ValueError: every contradiction found, in one message (e.g. ``tokens`` and ``steps`` both, a global batch
            that does not divide over the devices).
    """

    model: ModelDims
    task: Task
    seq_len: int
    global_batch: int
    hardware: HardwareSpec
    devices: int = 1
    nodes: int = 1
    tokens: int | None = None
    steps: int | None = None
    micro_batch: int | None = None
    precision: str | None = None
    strategy: str | None = None
    allow_offload: bool = True
    attention: Attention = "flash"
    num_labels: int = 2
    model_spec: Any = field(default=None, compare=False)
    adapter: str | None = None
    lora_rank: int = 8

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.task not in TASKS:
            problems.append(f"task {self.task!r}: choose one of {', '.join(TASKS)}")
        elif self.task == "mlm" and self.model.arch != "bert":
            problems.append(f"task 'mlm' needs an encoder, but {self.model.name!r} is a {self.model.arch} decoder; "
                            "use --task clm")
        for key in ("seq_len", "global_batch", "devices", "nodes"):
            if getattr(self, key) < 1:
                problems.append(f"{key}={getattr(self, key)!r} must be >= 1")
        if self.tokens is not None and self.steps is not None:
            problems.append(f"give tokens ({self.tokens}) or steps ({self.steps}), not both: steps follow from "
                            "tokens / (global_batch * seq_len)")
        for key in ("tokens", "steps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                problems.append(f"{key}={value!r} must be >= 1")
        world = self.devices * self.nodes
        if world >= 1 and self.global_batch >= 1 and self.global_batch % world:
            lower = max(world, self.global_batch // world * world)
            problems.append(f"global batch {self.global_batch} does not divide over {world} devices "
                            f"({self.devices} x {self.nodes} nodes); use a multiple of {world}, e.g. {lower} or "
                            f"{lower + world}")
        elif self.micro_batch is not None and world >= 1 and self.global_batch >= 1:
            per_device = self.global_batch // world
            if self.micro_batch < 1 or per_device % self.micro_batch:
                problems.append(f"micro batch {self.micro_batch} does not divide the per-device batch {per_device} "
                                f"(global {self.global_batch} / {world} devices); choose a divisor of {per_device}")
        if self.model.max_positions and self.seq_len > self.model.max_positions:
            problems.append(f"seq_len {self.seq_len} exceeds {self.model.name}'s {self.model.max_positions} "
                            "position embeddings; use a shorter --seq_len")
        if self.precision is not None:
            if self.precision not in PRECISIONS:
                problems.append(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
            elif not _precision_ok(self.precision, self.hardware):
                problems.append(f"precision {self.precision!r} is not supported on {self.hardware.name} "
                                f"(supported: {', '.join(_precisions(self.hardware))})")
        if self.strategy is not None:
            if self.strategy not in STRATEGIES:
                problems.append(f"strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
            elif self.strategy.startswith("fsdp") and not self.hardware.is_gpu:
                problems.append(f"strategy {self.strategy!r} on CPU: Lightning's FSDPStrategy refuses CPU; use ddp "
                                "(or ModelParallelStrategy with FSDP2, which the planner does not model)")
            elif self.strategy == "fsdp-hybrid" and self.nodes < 2:
                problems.append("strategy 'fsdp-hybrid' shards within a node and replicates across nodes; it "
                                "needs --nodes >= 2 (use fsdp-full on one node)")
        if self.attention not in ("flash", "eager"):
            problems.append(f"attention {self.attention!r}: choose flash or eager")
        if self.adapter is not None and self.adapter not in ADAPTERS:
            problems.append(f"adapter {self.adapter!r}: choose one of {', '.join(ADAPTERS)}")
        elif self.adapter in ("lora", "qlora") and self.task == "mlm":
            problems.append(f"adapter {self.adapter!r} with task 'mlm': LoRA fine-tunes a pre-trained model, while "
                            "mlm pre-trains every weight; use --task clm or classification, or --adapter none")
        if self.lora_rank < 1:
            problems.append(f"lora_rank={self.lora_rank!r} must be >= 1")
        if problems:
            raise ValueError("contradictory or invalid plan request: " + "; ".join(problems) + ".")

    @property
    def world_size(self) -> int:
        return self.devices * self.nodes

    @property
    def total_steps(self) -> int | None:
        if self.steps is not None:
            return self.steps
        if self.tokens is not None:
            return math.ceil(self.tokens / (self.global_batch * self.seq_len))
        return None


@dataclass(frozen=True)
class Candidate:
    """One plan with its estimates."""

    choice: PlanChoice
    memory: MemoryEstimate
    time: StepTime
    fits: bool
    tight: bool
    tokens_per_s: float
    total_s: float | None
    trainable: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.choice.label,
            "adapter": self.choice.adapter,
            "trainable_parameters": self.trainable,
            "strategy": self.choice.strategy,
            "precision": self.choice.precision,
            "checkpointing": self.choice.checkpointing,
            "optimizer_8bit": self.choice.optimizer_8bit,
            "offload": self.choice.offload,
            "micro_batch": self.choice.micro_batch,
            "accumulation": self.choice.accumulation,
            "memory_gib": self.memory.gib(),
            "fits": self.fits,
            "tight": self.tight,
            "step_s": self.time.step_s,
            "compute_s": self.time.compute_s,
            "comm_s": self.time.comm_s,
            "comm_gb": self.time.comm_bytes / 1e9,
            "tokens_per_s": self.tokens_per_s,
            "total_s": self.total_s,
        }


@dataclass(frozen=True)
class PlanReport:
    """Every candidate (best first), the recommendation and why."""

    request: PlanRequest
    candidates: list[Candidate]
    best: Candidate
    reasons: list[str]
    alternatives: list[Candidate] = field(default_factory=list)  # the best LoRA / QLoRA plans that fit

    def as_dict(self) -> dict[str, Any]:
        req = self.request
        return {
            "model": req.model.name, "task": req.task, "seq_len": req.seq_len, "global_batch": req.global_batch,
            "hardware": req.hardware.name, "hardware_notes": req.hardware.notes, "devices": req.devices,
            "nodes": req.nodes, "steps": req.total_steps,
            "parameters": sum(t.numel for t in _tensors(req.model, req.task, req.num_labels)),
            "recommendation": self.best.as_dict(), "reasons": self.reasons,
            "candidates": [c.as_dict() for c in self.candidates],
            "alternatives": [c.as_dict() for c in self.alternatives],
        }


@functools.lru_cache(maxsize=64)
def _tensors(dims: ModelDims, task: str, num_labels: int) -> list[Any]:
    return parameter_tensors(dims, task, num_labels)  # type: ignore[arg-type]


def _precision_ok(precision: str, hw: HardwareSpec) -> bool:
    if precision == "16-mixed" and not hw.is_gpu:
        return False  # Lightning's CPU accelerator only has bf16 autocast
    return _PRECISION_PEAK[precision] in hw.peak_tflops


def _precisions(hw: HardwareSpec) -> list[Precision]:
    return [p for p in PRECISIONS if _precision_ok(p, hw)]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _adapters(req: PlanRequest) -> list[Adapter]:
    if req.adapter is not None:
        return [cast(Adapter, req.adapter)]  # checked against ADAPTERS in PlanRequest.__post_init__
    return ["none"] if req.task == "mlm" else ["none", "lora", "qlora"]


def _strategies(req: PlanRequest) -> list[Strategy]:
    # req.strategy was checked against STRATEGIES in PlanRequest.__post_init__.
    if req.strategy:
        return [cast(Strategy, req.strategy)]
    strategies: list[Strategy] = ["ddp"]
    if req.hardware.is_gpu:
        strategies += ["fsdp-full", "fsdp-grad-op"] if req.world_size > 1 else ["fsdp-full"]  # 1 device: offload
        strategies += ["fsdp-hybrid"] if req.nodes > 1 else []
    return strategies


def _choices(req: PlanRequest) -> list[PlanChoice]:
    world, hw = req.world_size, req.hardware
    precisions = [cast(Precision, req.precision)] if req.precision else _precisions(hw)
    per_device = req.global_batch // world
    micros = [req.micro_batch] if req.micro_batch else _divisors(per_device)
    out = []
    for adapter in _adapters(req):
        full = adapter == "none"  # adapters hold little state: 8-bit AdamW and offload buy them nothing
        for strategy in _strategies(req):
            offloads = [False, True] if (full and strategy.startswith("fsdp") and req.allow_offload and hw.is_gpu) \
                else [False]
            for precision, ckpt, adam8, offload, mb in itertools.product(
                precisions, (False, True), (False, True) if full else (False,), offloads, micros
            ):
                if offload and adam8:
                    continue  # bitsandbytes' optimizer wants device tensors; offload runs AdamW on the host
                if strategy == "fsdp-full" and world == 1 and not offload:
                    continue  # one device has nothing to shard
                out.append(PlanChoice(strategy, precision, ckpt, adam8, offload, mb, per_device // mb, world,
                                      req.devices, adapter, req.lora_rank))
    return out


def evaluate_candidates(req: PlanRequest) -> list[Candidate]:
    """Every candidate of ``req`` with its memory and time estimates, unsorted."""
    budget = req.hardware.memory_gib * GIB
    steps = req.total_steps
    n_params = sum(t.numel for t in _tensors(req.model, req.task, req.num_labels))
    trainable = {a: n_params if a == "none" else lora_parameters(req.model, req.task, req.lora_rank, req.num_labels)
                 for a in _adapters(req)}
    out = []
    for choice in _choices(req):
        mem = estimate_memory(req.model, req.task, choice, req.seq_len, req.hardware, req.attention, req.num_labels)
        t = estimate_step_time(req.model, req.task, choice, req.seq_len, req.hardware, req.num_labels, req.attention)
        host_ok = mem.host <= req.hardware.host_memory_gib * GIB
        fits = mem.peak <= budget and host_ok
        tokens_per_s = req.global_batch * req.seq_len / t.step_s
        total = steps * t.step_s if steps is not None else None
        out.append(Candidate(choice, mem, t, fits, mem.peak > _TIGHT * budget, tokens_per_s, total,
                             trainable[choice.adapter]))
    return out


def _score(c: Candidate) -> float:
    # Faster is better; each extra technique must buy at least 3% and a tight fit 5%, so a simple plan wins ties.
    return c.time.step_s * (1 + 0.03 * c.choice.complexity) * (1.05 if c.tight else 1.0)


def make_plan(req: PlanRequest) -> PlanReport:
    """Estimate every candidate and recommend the fastest that fits, preferring simpler plans on near-ties.

    Full training is recommended unless ``req.adapter`` asks for LoRA / QLoRA: adapters change what is trained
    (and so the accuracy), which no speed-up decides for the user; the best LoRA and QLoRA plans that fit are
    returned as ``alternatives`` with their memory.

    Raises:
        NothingFitsError: no candidate fits; the message says what would (more devices, offload, a smaller
            micro-batch, a shorter sequence, LoRA / QLoRA).

    Example::
        report = make_plan(PlanRequest(resolve_model("gpt2"), "clm", 1024, 64, resolve_hardware("A10"), devices=4))
    """
    candidates = evaluate_candidates(req)
    wanted = req.adapter or "none"
    primary = [c for c in candidates if c.choice.adapter == wanted]
    fitting = sorted((c for c in primary if c.fits), key=_score)
    if not fitting:
        raise NothingFitsError(_nothing_fits_message(req, primary, candidates))
    rest = sorted((c for c in primary if not c.fits), key=lambda c: c.memory.peak)
    alternatives = [alt for a in ("lora", "qlora") if a != wanted
                    for alt in [_best_where(candidates, adapter=a)] if alt is not None]
    best = fitting[0]
    return PlanReport(req, fitting + rest, best, _reasons(req, best, primary, alternatives), alternatives)


def _fits_any(req: PlanRequest) -> Candidate | None:
    # only the kind of training asked for (full unless an adapter is named): alternatives are not searched here
    fitting = [c for c in evaluate_candidates(replace(req, adapter=req.adapter or "none")) if c.fits]
    return min(fitting, key=_score) if fitting else None


def _nothing_fits_message(req: PlanRequest, candidates: list[Candidate], everything: list[Candidate]) -> str:
    smallest = min(candidates, key=lambda c: c.memory.peak)
    hw = req.hardware
    head = (
        f"nothing fits: {req.model.name} ({req.task}, seq {req.seq_len}, global batch {req.global_batch}) on "
        f"{req.world_size} x {hw.name} ({hw.memory_gib:g} GiB); the smallest plan ({smallest.choice.label}) "
        f"needs {smallest.memory.peak / GIB:.1f} GiB per device"
        + (f" and {smallest.memory.host / GIB:.0f} GiB of host memory" if smallest.memory.host else "")
        + "."
    )
    ideas: list[str] = []
    if hw.is_gpu and req.strategy in (None, "fsdp-full", "fsdp-grad-op", "fsdp-hybrid"):
        per_node = max(req.devices, 8)  # fill nodes of (at least) 8 devices before adding nodes
        for factor in (2, 4, 8, 16, 32, 64):
            world = req.world_size * factor
            devices, nodes = (world, 1) if world <= per_node else (per_node, -(-world // per_node))
            world = devices * nodes
            batch = max(req.global_batch, world) // world * world
            more = _try(req, devices=devices, nodes=nodes, global_batch=batch, micro_batch=None)
            if more:
                ideas.append(f"more devices: {devices} per node x {nodes} node(s) ({more.choice.label}, "
                             f"{more.memory.peak / GIB:.1f} GiB)")
                break
    if hw.is_gpu and not req.allow_offload:
        off = _try(req, allow_offload=True)
        if off:
            ideas.append(f"CPU offload (drop --no_offload): {off.choice.label}, {off.memory.peak / GIB:.1f} GiB")
    if req.micro_batch is not None and req.micro_batch > 1:
        small = _try(req, micro_batch=1)
        if small:
            ideas.append(f"a smaller micro-batch: 1 with accumulation ({small.memory.peak / GIB:.1f} GiB)")
    seq = req.seq_len // 2
    while seq >= 32:
        short = _try(req, seq_len=seq)
        if short:
            ideas.append(f"a shorter sequence: --seq_len {seq} ({short.memory.peak / GIB:.1f} GiB)")
            break
        seq //= 2
    for adapter, name in (("lora", "LoRA"), ("qlora", "QLoRA")):
        alt = _best_where(everything, adapter=adapter) if req.adapter is None else None
        if alt is not None:
            ideas.append(f"{name} fine-tuning (--adapter {adapter}): {alt.choice.label}, "
                         f"{alt.memory.peak / GIB:.1f} GiB, {alt.trainable:,} trainable parameters")
            break
    if not hw.is_gpu:
        ideas.append("a machine with more memory (--memory_gb)")
    if not ideas:
        ideas.append("a device with more memory (--hardware) or a smaller model")
    return head + " What would fit: " + "; or ".join(ideas) + "."


def _try(req: PlanRequest, **changes: Any) -> Candidate | None:
    try:
        return _fits_any(replace(req, **changes))
    except ValueError:
        return None


def _best_where(candidates: list[Candidate], **want: Any) -> Candidate | None:
    pool = [c for c in candidates if c.fits and all(getattr(c.choice, k) == v for k, v in want.items())]
    return min(pool, key=_score) if pool else None


def _adapter_reasons(req: PlanRequest, best: Candidate, alternatives: list[Candidate]) -> list[str]:
    n_params = sum(t.numel for t in _tensors(req.model, req.task, req.num_labels))
    out = []
    if best.choice.adapter != "none":
        base = "4-bit NF4" if best.choice.adapter == "qlora" else ("bf16" if best.choice.mixed else "fp32")
        out.append(f"{best.choice.adapter} r{best.choice.lora_rank}: {best.trainable:,} trainable parameters "
                   f"({best.trainable / n_params:.2%} of {n_params:,}); frozen base in {base}; gradients and "
                   "optimizer states for the adapters only")
    if alternatives:
        names = " and ".join(alt.choice.adapter for alt in alternatives)
        out.append(f"full training recommended: {names} would train adapters instead of every weight (a change of "
                   "method, not of speed alone), so they are listed as alternatives, not chosen")
    return out


def _reasons(
    req: PlanRequest, best: Candidate, everything: list[Candidate], alternatives: list[Candidate]
) -> list[str]:
    c, hw = best.choice, req.hardware
    out = [
        f"fits: peak {best.memory.peak / GIB:.1f} GiB of {hw.memory_gib:g} GiB per device "
        f"({best.memory.peak / (hw.memory_gib * GIB):.0%})" + (", tight: little headroom" if best.tight else "")
    ]
    if c.strategy == "ddp":
        if req.world_size > 1:
            out.append("DDP: a full replica fits on each device, so sharding would only add communication")
    else:
        ddp = _best_where(everything, strategy="ddp")
        why = (f"the best DDP plan is {ddp.time.step_s / best.time.step_s:.2f}x slower" if ddp
               else "no DDP plan fits: every device would hold all weights, gradients and optimizer states")
        out.append(f"{c.strategy}: {why}")
    for attr, name, cost in (
        ("checkpointing", "activation checkpointing", "recomputes the forward (+1/3 block compute)"),
        ("optimizer_8bit", "8-bit AdamW", "2 instead of 8 bytes of optimizer state per parameter"),
        ("offload", "CPU offload", "moves weights, gradients and AdamW to host memory over PCIe"),
    ):
        if attr == "offload" and not (hw.is_gpu and req.allow_offload):
            continue  # never a candidate: CPU training, or --no_offload
        if attr != "checkpointing" and c.adapter != "none":
            continue  # never a candidate with adapters: their state is small
        other = _best_where(everything, **{attr: not getattr(c, attr)})
        if getattr(c, attr):
            alt = f"without it the best plan is {other.time.step_s / best.time.step_s:.2f}x slower" if other else \
                "without it nothing fits"
            out.append(f"{name} on ({cost}): {alt}")
        elif other is not None and other.time.step_s < best.time.step_s:
            out.append(f"{name} off: with it the step is only {best.time.step_s / other.time.step_s:.2f}x "
                       "faster, not worth one more moving part")
        else:
            out.append(f"{name} off: not needed to fit")
    if c.precision != "32-true":
        out.append(f"{c.precision}: {hw.peak_tflops[_PRECISION_PEAK[c.precision]]:g} vs "
                   f"{hw.peak_tflops['32']:g} TFLOP/s in fp32 on {hw.name}")
    out.append(f"micro-batch {c.micro_batch} x accumulation {c.accumulation} x {req.world_size} device(s) = global "
               f"batch {req.global_batch}")
    out += _adapter_reasons(req, best, alternatives)
    t = best.time
    line = (f"~{t.step_s:.3g} s/step ({t.compute_s:.3g} compute, {t.comm_s:.3g} exposed communication of "
            f"{t.comm_bytes / 1e9:.3g} GB), {best.tokens_per_s:,.0f} tokens/s")
    if best.total_s is not None:
        total = f"{best.total_s / 3600:.3g} h" if best.total_s >= 3600 else f"{best.total_s / 60:.3g} min"
        line += f", {total} for {req.total_steps} steps"
    out.append(line)
    return out
