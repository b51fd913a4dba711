"""Keep large freed blocks in the process on CPU, so a training step does not page-fault its big buffers anew.

glibc's ``malloc`` serves every block above 32 MiB with a fresh ``mmap`` and returns it to the kernel on ``free``.
A training step frees and re-allocates such blocks each time: all-MiniLM-L6-v2's word-embedding gradient is
30,522 x 384 fp32, 47 MB, allocated zeroed by the embedding's backward. Every step the kernel hands out those pages
again and zeroes them, one fault per 4 kB page: 13 ms a step on the build machines against 2.4 ms from memory
already held, 4% of the main job's bf16 step. Intel's launcher (``ipexrun``) and TorchServe swap in jemalloc or
tcmalloc for this; neither ships on PyPI, so this sets glibc's own knobs instead (``mallopt``, the same as the
``GLIBC_TUNABLES`` ``glibc.malloc.mmap_max`` / ``trim_threshold``): large blocks come from the heap, and up to
``trim_threshold`` bytes of freed heap stay in the process for the next step.

The cost: freed memory up to ``trim_threshold`` is not handed back to the system while the process lives, so the
process's resident memory stays near its peak. ``lit-llm`` commands on CPU do this unless the environment sets
``LIT_LLM_MALLOC_TUNING=0``.

Example::
    keep_freed_memory()  # once, early in a CPU training script; False where the C library is not glibc
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["MALLOC_TUNING_ENV", "keep_freed_memory"]

MALLOC_TUNING_ENV = "LIT_LLM_MALLOC_TUNING"
# <malloc.h> option numbers of mallopt, fixed in glibc's ABI.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Serve large blocks from the heap and keep up to ``trim_threshold`` bytes of freed heap in the process.

    Applies to allocations made after the call, for the whole process. Returns whether it was applied: False
    outside Linux with glibc (macOS, musl), or when ``LIT_LLM_MALLOC_TUNING=0``.

    Raises:
        ValueError: ``trim_threshold`` is not in [0, 2**31).

    Example::
        keep_freed_memory(trim_threshold=512 << 20)
    """
    if not 0 <= trim_threshold < 2**31:
        raise ValueError(f"keep_freed_memory(trim_threshold={trim_threshold!r}): must be in [0, 2**31) bytes.")
    if os.environ.get(MALLOC_TUNING_ENV, "") == "0":
        return False
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the C library this process already uses
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
