"""This machine's CPU as the planner sees it: bf16 hardware from ``/proc/cpuinfo``, matmul peaks measured once.

Intel Xeons since Sapphire Rapids run bf16 matmuls on AMX tiles (``amx_bf16``); Cooper Lake and AMD Zen 4 have
AVX-512 bf16 dot products (``avx512_bf16``). Elsewhere (AVX2 only, e.g. AMD EPYC Zen 2/3) torch emulates bf16
matmuls through fp32 with conversions, slower than plain fp32, so fp32 is the precision to train in there.

The planner's CPU throughput model needs the matmul peak of each dtype. :func:`cpu_peaks` measures them once
(a square matmul, best of a few runs) and caches them per CPU model, thread count and torch version in
``cpu_peaks.json`` under ``$LIT_LLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/lit_llm``, else ``~/.cache/lit_llm``.

How to check a CPU by hand::

    grep -o -w -E 'amx_bf16|avx512_bf16|avx512f|avx2' /proc/cpuinfo | sort -u
    lit-llm plan --hardware cpu --calibrate --model bert-base --task classification --seq_len 128 --global_batch 32
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lit_llm.planning.presets import HARDWARE_PRESETS, HardwareSpec

__all__ = [
    "CACHE_ENV", "BF16_SPEEDUP", "CpuInfo", "parse_cpuinfo", "read_cpuinfo", "local_cpuinfo", "measure_matmul_tflops",
    "cpu_peaks", "cache_path", "cpu_hardware",
]

CACHE_ENV = "LIT_LLM_CACHE_DIR"
# bf16 / fp32 matmul throughput the planner assumes until the peaks are measured: AMX measured on 2 cores of a
# Xeon with plain torch (578 vs 172 GFLOP/s, 2048^2, issue 17); avx512_bf16 is twice fp32 FMA width in theory
# (taken lower); without bf16 hardware torch falls back to a reference kernel: 0.4-0.6 against 27-89 GFLOP/s in
# fp32 on an AVX2-only AMD EPYC (512^2 and 1024^2, torch 2.13, 1 and 2 threads), about 1/100.
BF16_SPEEDUP = {"amx_bf16": 3.4, "avx512_bf16": 1.6, "none": 0.01}


@dataclass(frozen=True)
class CpuInfo:
    """What ``/proc/cpuinfo`` says about bf16.

    Args:
        model: the ``model name`` line.
        processors: logical processors listed.
        flags: the feature flags of the first processor.

    Example::
        info = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
        info.recommended_precision  # "32-true" on an AVX2-only EPYC, "bf16-mixed" on a Xeon with AMX
    """

    model: str
    processors: int
    flags: frozenset[str]

    @property
    def bf16_unit(self) -> str:
        """``amx_bf16``, ``avx512_bf16`` or ``none``: the fastest bf16 matmul hardware present."""
        return next((flag for flag in ("amx_bf16", "avx512_bf16") if flag in self.flags), "none")

    @property
    def recommended_precision(self) -> str:
        """``bf16-mixed`` where the CPU has bf16 matmul hardware (fp32 master weights keep accuracy), else fp32."""
        return "32-true" if self.bf16_unit == "none" else "bf16-mixed"

    def describe(self) -> str:
        vector = "AVX-512" if "avx512f" in self.flags else ("AVX2" if "avx2" in self.flags else "no AVX2")
        unit = {"amx_bf16": "AMX bf16 tiles", "avx512_bf16": "AVX-512 bf16", "none": "no bf16 hardware"}
        return f"{self.model} ({self.processors} logical CPUs, {vector}, {unit[self.bf16_unit]})"


def parse_cpuinfo(text: str) -> CpuInfo:
    """Read the model name, processor count and flags from the text of ``/proc/cpuinfo``.

    Raises:
        ValueError: text with no ``flags`` line (not a Linux cpuinfo).

    Example::
        >>> parse_cpuinfo("processor : 0\\nmodel name : Xeon\\nflags : fpu avx2 amx_bf16\\n").recommended_precision
        'bf16-mixed'
    """
    model, processors, flags = "unknown CPU", 0, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            processors += 1
        elif key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = frozenset(value.split())
    if flags is None:
        raise ValueError(
            "cpuinfo text has no 'flags' line: give the contents of /proc/cpuinfo from a Linux machine "
            f"(first line: {text.splitlines()[0][:80] if text.strip() else '(empty)'!r})."
        )
    return CpuInfo(model, max(processors, 1), flags)


def read_cpuinfo(path: str | Path = "/proc/cpuinfo") -> CpuInfo:
    """:func:`parse_cpuinfo` of a file.

    Raises:
        ValueError: the file does not exist or is no cpuinfo (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cpuinfo file {str(path)!r} does not exist; on Linux it is /proc/cpuinfo (copy it from "
                         "the machine you plan for: cat /proc/cpuinfo > cpuinfo.txt).")
    try:
        return parse_cpuinfo(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def local_cpuinfo() -> CpuInfo | None:
    """This machine's :func:`read_cpuinfo`, or None where there is no readable ``/proc/cpuinfo`` (not Linux):
    callers then assume no bf16 hardware, the choice that is never slow."""
    try:
        return read_cpuinfo()
    except ValueError:
        return None


def measure_matmul_tflops(
    dtype: Any, size: int = 512, threads: int | None = None, repeats: int = 5, budget_s: float = 1.0
) -> float:
    """TFLOP/s of a ``size x size`` matmul in ``dtype`` with ``threads`` threads: the best of ``repeats`` runs,
    fewer when they exceed ``budget_s`` (bf16 without bf16 hardware is ~100x slower than fp32).

    Example::
        measure_matmul_tflops(torch.bfloat16, size=512)
    """
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        a @ b  # first call: kernel selection, page faults
        best, spent = float("inf"), 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
            if spent > budget_s:
                break
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e12


def cache_path(cache_dir: str | Path | None = None) -> Path:
    """``cpu_peaks.json`` under ``cache_dir``, else ``$LIT_LLM_CACHE_DIR``, ``$XDG_CACHE_HOME/lit_llm``,
    ``~/.cache/lit_llm``."""
    if cache_dir is None:
        env = os.environ.get(CACHE_ENV)
        xdg = os.environ.get("XDG_CACHE_HOME")
        cache_dir = Path(env) if env else (Path(xdg) if xdg else Path.home() / ".cache") / "lit_llm"
    return Path(cache_dir) / "cpu_peaks.json"


def _cache_key(info: CpuInfo, threads: int) -> str:
    import torch

    return f"{info.model} | {threads} threads | torch {torch.__version__}"


def cpu_peaks(
    info: CpuInfo,
    *,
    measure: bool = True,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
    size: int = 512,
) -> dict[str, float] | None:
    """Matmul peak TFLOP/s of this CPU per dtype (``"32"``, ``"bf16"``), measured once and cached.

    Args:
        info: this machine's CPU (its model name keys the cache).
        measure: measure when nothing is cached; False returns None instead.
        cache_dir: where ``cpu_peaks.json`` lives (default: see :func:`cache_path`).
        threads: threads to measure with (default: torch's current setting).
        size: the matmul's side.

    Example::
        peaks = cpu_peaks(read_cpuinfo())  # {"32": 0.21, "bf16": 0.09} on 2 AVX2 cores
    """
    import torch

    threads = threads or torch.get_num_threads()
    path = cache_path(cache_dir)
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}  # a damaged cache is measured again and rewritten
    key = _cache_key(info, threads)
    if key in cache:
        return {k: float(v) for k, v in cache[key]["peak_tflops"].items()}
    if not measure:
        return None
    peaks = {name: measure_matmul_tflops(dtype, size, threads)
             for name, dtype in (("32", torch.float32), ("bf16", torch.bfloat16))}
    cache[key] = {"peak_tflops": peaks, "size": size, "measured": datetime.now(timezone.utc).isoformat()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1) + "\n")
    tmp.replace(path)  # atomic: two planners measuring at once never leave half a file
    return peaks


def cpu_hardware(info: CpuInfo, peaks: dict[str, float] | None = None, **overrides: Any) -> HardwareSpec:
    """The ``cpu`` preset for this CPU: measured peaks when given, else fp32's preset peak and the bf16 ratio of
    :data:`BF16_SPEEDUP` for its bf16 hardware; the notes say which and the precision to use.

    Example::
        hw = cpu_hardware(read_cpuinfo(), cpu_peaks(read_cpuinfo()))
    """
    base = HARDWARE_PRESETS["cpu"]
    if peaks is None:
        fp32 = base.peak_tflops["32"]
        peaks = {"32": fp32, "bf16": fp32 * BF16_SPEEDUP[info.bf16_unit]}
        source = ("peaks from the table (fp32 placeholder, bf16 ratio by bf16 hardware); measure them with "
                  "--calibrate")
    else:
        source = f"matmul peaks measured: fp32 {peaks['32']:.3g}, bf16 {peaks['bf16']:.3g} TFLOP/s"
    notes = f"{info.describe()}; recommended precision {info.recommended_precision}; {source}"
    spec = base.replace(peak_tflops=dict(peaks), notes=notes)
    changes = {k: v for k, v in overrides.items() if v is not None}
    return spec.replace(**changes) if changes else spec
