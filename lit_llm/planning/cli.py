"""``lit-llm plan``: which training techniques fit a model on given hardware, how fast, and a config to run it.

Flags are snake_case like the rest of ``lit-llm`` (``--seq_len``); the kebab-case spellings of earlier versions
(``--seq-len``) still work and print a deprecation note. ``--config FILE`` reads a YAML file whose keys are the flag
names (``seq_len: 512``); flags on the command line override it.

Example::
    lit-llm plan --model bert-large --task mlm --seq_len 512 --global_batch 256 --hardware A100-40GB \\
        --devices 8 --tokens 2e9 --emit_config configs/pretrain/bert_large_plan.yaml
    lit-llm plan --config plan.yaml --devices 16
    lit-llm plan --model path/to/any_hf_model --task classification --seq_len 128 --global_batch 32 \\
        --hardware cpu --calibrate
    lit-llm plan --model llama-7b --task clm --seq_len 2048 --global_batch 16 --hardware A10 --adapter qlora

``--hardware cpu`` describes this machine: its bf16 hardware is read from ``/proc/cpuinfo`` (or ``--cpuinfo FILE``
for another machine) and its matmul peaks are measured once with ``--calibrate`` and cached (see
:mod:`lit_llm.planning.cpu`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lit_llm.errors import InvalidArgumentError
from lit_llm.planning.choice import ADAPTERS, PRECISIONS, STRATEGIES
from lit_llm.planning.cpu import cpu_hardware, cpu_peaks, read_cpuinfo
from lit_llm.planning.emit import emit_config
from lit_llm.planning.params import TASKS
from lit_llm.planning.plan import NothingFitsError, PlanRequest, make_plan
from lit_llm.planning.presets import (
    HARDWARE_PRESETS,
    MODEL_PRESETS,
    HardwareSpec,
    ModelDims,
    resolve_hardware,
    resolve_model,
)

__all__ = ["build_parser", "parse_args", "request_from_args", "main"]

_DIM_FLAGS = ("layers", "hidden", "heads", "vocab", "ffn", "max_positions")


def _count(text: str) -> int:
    # accept 2e9 and 2_000_000_000 for token counts
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 1e9 or 2_000_000_000)") from None
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-llm plan",
        description="Estimate memory and time of every way to train a model on given hardware and recommend one.",
        epilog="Earlier kebab-case flags (--seq-len) still work but are deprecated; use the snake_case ones.",
    )
    parser.add_argument("--config", metavar="FILE", type=Path,
                        help="YAML file of options named as the flags (seq_len: 512); flags given here override it")
    m = parser.add_argument_group("model")
    m.add_argument("--model", help=f"a preset ({', '.join(MODEL_PRESETS)}), an HF model directory, a config.json "
                   "or a hub id (any architecture: its parameters are counted from its config on the meta device)")
    m.add_argument("--arch", choices=("bert", "gpt2", "llama"), default="bert", help="with explicit dimensions")
    for flag in _DIM_FLAGS:
        m.add_argument(f"--{flag}", type=int, help="explicit dimension (instead of --model)")
    m.add_argument("--task", required=True, choices=TASKS)
    m.add_argument("--num_labels", type=int, default=2, help="classes, for --task classification")
    m.add_argument("--attention", choices=("flash", "eager"), default="flash",
                   help="flash: SDPA/FlashAttention keeps no s*s matrix (default); eager keeps the softmax")
    w = parser.add_argument_group("workload")
    w.add_argument("--seq_len", type=int, required=True)
    w.add_argument("--global_batch", type=int, required=True, help="sequences per optimizer step, all devices")
    w.add_argument("--tokens", type=_count, help="tokens to train on (or --steps)")
    w.add_argument("--steps", type=_count, help="optimizer steps (or --tokens)")
    h = parser.add_argument_group("hardware")
    h.add_argument("--hardware", default="A100-80GB", help=f"{', '.join(HARDWARE_PRESETS)} or custom")
    h.add_argument("--devices", type=int, default=1, help="devices per node")
    h.add_argument("--nodes", type=int, default=1)
    h.add_argument("--memory_gb", type=float, help="memory per device, GiB")
    h.add_argument("--peak_tflops", type=float, help="dense 16-bit peak TFLOP/s")
    h.add_argument("--peak_tflops_fp32", type=float, help="dense fp32 peak TFLOP/s")
    h.add_argument("--mfu", type=float, help="expected model FLOPs utilization, e.g. 0.4")
    h.add_argument("--bandwidth_gbps", type=float, help="per-device bandwidth within a node, GB/s")
    h.add_argument("--inter_node_gbps", type=float, help="per-device bandwidth between nodes, GB/s")
    h.add_argument("--cpuinfo", metavar="FILE", type=Path,
                   help="with --hardware cpu: plan for the CPU of this /proc/cpuinfo copy instead of this machine's")
    h.add_argument("--calibrate", action="store_true",
                   help="with --hardware cpu: measure this CPU's fp32 and bf16 matmul peaks now (cached for later)")
    c = parser.add_argument_group("constraints")
    c.add_argument("--micro_batch", type=int, help="fix the micro-batch (default: search)")
    c.add_argument("--precision", choices=PRECISIONS, help="fix the precision (default: try all supported)")
    c.add_argument("--strategy", choices=STRATEGIES, help="fix the strategy (default: try all that apply)")
    c.add_argument("--no_offload", action="store_true", help="do not consider FSDP CPU offload")
    c.add_argument("--adapter", choices=ADAPTERS,
                   help="plan LoRA / QLoRA fine-tuning (or none: full); default: full, with LoRA and QLoRA shown")
    c.add_argument("--lora_rank", type=int, default=8, help="rank of the LoRA / QLoRA adapters")
    o = parser.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    o.add_argument("--emit_config", metavar="FILE",
                   help="write a LightningCLI config (for lit-llm fit --config) of the recommended plan")
    o.add_argument("--data_path", help="training data to put in the emitted config")
    o.add_argument("--top", type=int, default=12, help="candidates to show in the table")
    return parser


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``{name: action}`` of every ``--name`` flag (argparse has no public list of them; ``_actions`` is stable)."""
    return {opt[2:]: action for action in parser._actions for opt in action.option_strings if opt.startswith("--")}


def _snake_case(argv: list[str], flags: dict[str, argparse.Action]) -> list[str]:
    """``argv`` with the deprecated kebab-case flags (``--seq-len``) renamed, each named once on stderr."""
    out = []
    for token in argv:
        name, eq, value = token[2:].partition("=")
        snake = name.replace("-", "_")
        if token.startswith("--") and "-" in name and snake in flags:
            print(f"lit-llm plan: --{name} is deprecated; use --{snake}", file=sys.stderr)
            token = f"--{snake}{eq}{value}"
        out.append(token)
    return out


def _config_argv(parser: argparse.ArgumentParser, path: Path, flags: dict[str, argparse.Action]) -> list[str]:
    """The flags a ``--config`` YAML file stands for, e.g. ``seq_len: 512`` -> ``["--seq_len", "512"]``."""
    import yaml

    where = f"--config {str(path)!r}"
    if not path.is_file():
        parser.error(f"{where} does not exist (resolved from {Path.cwd()}).")
    try:
        options = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        parser.error(f"{where} is not valid YAML: {err}")
    if options is None:
        return []
    if not isinstance(options, dict):
        parser.error(f"{where} must be a mapping of flag names to values (seq_len: 512), not {type(options).__name__}.")
    keys = sorted(k for k in flags if k not in ("help", "config"))
    argv: list[str] = []
    for key, value in options.items():
        action = flags.get(str(key)) if key not in ("help", "config") else None
        if action is None:
            parser.error(f"{where}: unknown key {key!r}; the keys are the flag names: {', '.join(keys)}.")
        if action.nargs == 0:  # a switch such as no_offload / json
            if not isinstance(value, bool):
                parser.error(f"{where}: {key} must be true or false, not {value!r}.")
            argv += [f"--{key}"] if value else []
        elif isinstance(value, (list, dict)):
            parser.error(f"{where}: {key} takes one value, not {value!r}.")
        elif value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse ``lit-llm plan`` flags: snake_case, deprecated kebab-case aliases, and ``--config FILE`` (YAML).

    The file's options come first, so the flags given on the command line override them.

    Raises:
        SystemExit: bad flags or config file (argparse prints the usage and the reason, exit code 2).

    Example::
        args = parse_args(["--config", "plan.yaml", "--devices", "8"])
    """
    parser = parser or build_parser()
    flags = _flags(parser)
    argv = _snake_case(list(sys.argv[1:] if argv is None else argv), flags)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    config = pre.parse_known_args(argv)[0].config
    if config is not None:
        argv = _config_argv(parser, config, flags) + argv
    return parser.parse_args(argv)


def _cpu(args: argparse.Namespace) -> HardwareSpec:
    """This machine's CPU (or the one of ``--cpuinfo``): its bf16 hardware and, when measured, its matmul peaks."""
    if args.cpuinfo is not None:
        if args.calibrate:
            raise InvalidArgumentError("--calibrate measures this machine; it cannot describe the CPU of --cpuinfo "
                                       f"{str(args.cpuinfo)!r}. Drop one of them.")
        return cpu_hardware(read_cpuinfo(args.cpuinfo))
    if not Path("/proc/cpuinfo").is_file():
        return resolve_hardware("cpu")  # not Linux: the generic preset
    info = read_cpuinfo()
    return cpu_hardware(info, cpu_peaks(info, measure=args.calibrate))


def _peaks(args: argparse.Namespace, base: HardwareSpec) -> dict[str, float] | None:
    if args.peak_tflops is None and args.peak_tflops_fp32 is None:
        return None
    peaks = dict(base.peak_tflops)
    if args.peak_tflops is not None:
        peaks.update({k: args.peak_tflops for k in peaks if k != "32"})
    if args.peak_tflops_fp32 is not None:
        if not base.is_gpu and args.peak_tflops is None:
            # a CPU's 16-bit rate follows its fp32 rate (same units), keep the preset's ratio
            scale = args.peak_tflops_fp32 / base.peak_tflops["32"]
            peaks = {k: v * scale for k, v in peaks.items()}
        peaks["32"] = args.peak_tflops_fp32
    return peaks


def _hardware(args: argparse.Namespace) -> HardwareSpec:
    name = args.hardware.lower()
    if name != "cpu" and (args.cpuinfo is not None or args.calibrate):
        raise InvalidArgumentError(f"--cpuinfo and --calibrate describe a CPU; they need --hardware cpu, not "
                                   f"{args.hardware!r}.")
    if name == "custom":
        missing = [f for f in ("memory_gb", "peak_tflops") if getattr(args, f) is None]
        if missing:
            raise InvalidArgumentError(
                f"--hardware custom needs {' and '.join('--' + f for f in missing)} "
                "(and optionally --peak_tflops_fp32, --bandwidth_gbps, --inter_node_gbps, --mfu)."
            )
        fp32 = args.peak_tflops_fp32 or args.peak_tflops / 8
        return HardwareSpec("custom", args.memory_gb, {"32": fp32, "bf16": args.peak_tflops, "16": args.peak_tflops},
                            mfu=args.mfu or 0.4, intra_node_gbps=args.bandwidth_gbps or 25.0,
                            inter_node_gbps=args.inter_node_gbps or 12.5)
    base = _cpu(args) if name == "cpu" else resolve_hardware(args.hardware)
    changes = {"memory_gib": args.memory_gb, "peak_tflops": _peaks(args, base), "mfu": args.mfu,
               "intra_node_gbps": args.bandwidth_gbps, "inter_node_gbps": args.inter_node_gbps}
    changes = {k: v for k, v in changes.items() if v is not None}
    return base.replace(**changes) if changes else base


def _model(args: argparse.Namespace) -> tuple[ModelDims, Any]:
    given = [f for f in _DIM_FLAGS if getattr(args, f) is not None]
    if args.model and given:
        raise InvalidArgumentError(f"give --model {args.model!r} or explicit dimensions "
                                   f"({', '.join('--' + g for g in given)}), not both.")
    if args.model:
        dims = resolve_model(args.model)
        if args.model in MODEL_PRESETS:
            return dims, None
        path = Path(args.model).expanduser()
        if path.is_file():  # a config.json: its directory when it is a saved model, else the config itself
            return dims, (str(path.parent) if path.name == "config.json" else dims.hf_config_dict())
        return dims, args.model
    missing = [f for f in ("layers", "hidden", "heads", "vocab") if getattr(args, f) is None]
    if missing:
        raise InvalidArgumentError("give --model (a preset, HF directory or hub id) or "
                                   "every explicit dimension; missing: " + ", ".join("--" + f for f in missing) + ".")
    gpt2 = args.arch == "gpt2"
    dims = ModelDims(
        f"custom-{args.arch}-L{args.layers}-h{args.hidden}", args.arch, args.layers, args.hidden, args.heads,
        args.ffn or 4 * args.hidden, args.vocab,
        max_positions=0 if args.arch == "llama" else (args.max_positions or max(512, args.seq_len)),
        activation="gelu_new" if gpt2 else ("silu" if args.arch == "llama" else "gelu"),
        dropout=0.0 if args.arch == "llama" else 0.1, attention_dropout=0.0 if args.arch == "llama" else 0.1,
    )
    return dims, None


def request_from_args(args: argparse.Namespace) -> PlanRequest:
    """Turn parsed arguments into a :class:`PlanRequest`.

    Raises:
        ValueError: contradictory flags, an unknown preset, a missing dimension (InvalidArgumentError for
            the flag checks made here).
    """
    dims, spec = _model(args)
    return PlanRequest(
        dims, args.task, args.seq_len, args.global_batch, _hardware(args), devices=args.devices, nodes=args.nodes,
        tokens=args.tokens, steps=args.steps, micro_batch=args.micro_batch, precision=args.precision,
        strategy=args.strategy, allow_offload=not args.no_offload, attention=args.attention,
        num_labels=args.num_labels, model_spec=spec, adapter=args.adapter, lora_rank=args.lora_rank,
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``lit-llm plan``; 0 on success, 1 when nothing fits, 2 on bad input (the message says why)."""
    args = parse_args(argv)
    try:
        request = request_from_args(args)
        report = make_plan(request)
        if args.emit_config:
            path = emit_config(request, report.best, args.emit_config, args.data_path, report.reasons)
    except NothingFitsError as err:
        print(f"lit-llm plan: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileExistsError) as err:
        print(f"lit-llm plan: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        out = report.as_dict()
        if args.emit_config:
            out["config"] = str(path)
        print(json.dumps(out, indent=2))
    else:
        from lit_llm.planning.render import render_plan

        render_plan(report, top=args.top)
        if args.emit_config:
            print(f"config written: {path}  (run it with: lit-llm fit --config {path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
