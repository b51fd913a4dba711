"""Keep large freed blocks in the process on CPU, so a training step does not page-fault its big buffers anew.

glibc's ``malloc`` serves every block above 32 MiB with a fresh ``mmap`` and returns it to the kernel on ``free``.
A training step frees and re-allocates such blocks each time: all-MiniLM-L6-v2's word-embedding gradient is
30,522 x 384 fp32, 47 MB, allocated zeroed by the embedding's backward. Every step the kernel hands out those pages
again and zeroes them, one fault per 4 kB page: 13 ms a step on the build machines against 2.4 ms from memory
already held. Intel's launcher (``ipexrun``) and TorchServe swap in jemalloc or tcmalloc for this; neither ships
on PyPI, so this sets glibc's own knobs instead (``mallopt``, the same as the ``GLIBC_TUNABLES``
``glibc.malloc.mmap_max`` / ``trim_threshold``): large blocks come from the heap, where a later step reuses them.

The cost: the heap does not shrink below its highest live block, so memory freed beneath it (a resumed
checkpoint's tensors, a step's peak) is reused by later allocations but not handed back to the system, and up to
``trim_threshold`` bytes freed at its top are kept too. :func:`release_freed_memory` hands back every free page;
``lit-llm`` calls it at the end of each run. ``lit-llm`` commands on CPU do this unless the environment sets
``LIT_LLM_MALLOC_TUNING=0``.

Example::
    keep_freed_memory()  # once, early in a CPU training script; False where malloc is not glibc's
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["MALLOC_TUNING_ENV", "keep_freed_memory", "release_freed_memory"]

MALLOC_TUNING_ENV = "LIT_LLM_MALLOC_TUNING"
# <malloc.h> option numbers of mallopt, fixed in glibc's ABI.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def _glibc_malloc() -> ctypes.CDLL | None:
    """glibc, where it is the C library and its ``malloc`` is the one this process calls (no jemalloc / tcmalloc
    preloaded, whose ``mallopt`` would accept the settings and ignore them)."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    process, libc = ctypes.CDLL(None), ctypes.CDLL("libc.so.6")
    return libc if _malloc_address(process) == _malloc_address(libc) else None


def _malloc_address(library: ctypes.CDLL) -> int | None:
    """Where ``malloc`` resolves to, looked up from ``library`` (the process's own lookup when it is ``CDLL(None)``)."""
    return ctypes.cast(library.malloc, ctypes.c_void_p).value


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Serve large blocks from the heap and keep up to ``trim_threshold`` bytes freed at its top in the process.

    Applies to allocations made after the call, for the whole process. Returns whether it was applied: False
    where ``malloc`` is not glibc's (macOS, musl, a preloaded jemalloc or tcmalloc), or when the environment sets
    ``LIT_LLM_MALLOC_TUNING`` to ``0`` / ``false`` / ``off`` / ``no``.

    Raises:
        ValueError: ``trim_threshold`` is not in [0, 2**31).

    Example::
        keep_freed_memory(trim_threshold=512 << 20)
    """
    if not 0 <= trim_threshold < 2**31:
        raise ValueError(f"keep_freed_memory(trim_threshold={trim_threshold!r}): must be in [0, 2**31) bytes.")
    if os.environ.get(MALLOC_TUNING_ENV, "").strip().lower() in ("0", "false", "off", "no"):
        return False
    libc = _glibc_malloc()
    if libc is None:
        return False
    # The trim threshold first: if it is refused, nothing has changed; if the second call is refused, large blocks
    # are still mapped per block (glibc's mmap threshold then stays at its current value instead of adapting).
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and bool(libc.mallopt(_M_MMAP_MAX, 0))


def release_freed_memory() -> bool:
    """Hand every free page of the heap back to the system (glibc's ``malloc_trim(0)``); whether any was.

    Example::
        release_freed_memory()  # after training, before a long evaluation or the next trial in this process
    """
    libc = _glibc_malloc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
