"""Process-level tuning for throughput on CPU machines.

glibc's default malloc hands large tensor buffers back to the kernel after every batch and
maps them again on the next (mmap/munmap churn); on the project's 2-core machines that halves
PyTorch's throughput (see ``docs/performance.md``).  :func:`tune_allocator` raises glibc's
mmap and trim thresholds through ``mallopt``, which has the same effect as starting the
process with ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_``.
The CLI and the benchmarks call it at start-up; library code never does it implicitly.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = {
    "MALLOC_MMAP_THRESHOLD_": "1073741824",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
    "MALLOC_TOP_PAD_": "268435456",
}
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done = False


def tune_allocator() -> bool:
    """Raise glibc malloc's mmap/trim thresholds for this process.

    Returns ``True`` when the settings were applied (or were already present in the
    environment), ``False`` where glibc's ``mallopt`` is not available (macOS, Windows, musl).
    """
    global _done
    if _done:
        return True
    if all(os.environ.get(k) for k in ENV):
        _done = True
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = True
    # mallopt takes an int: 1 GiB is the largest mmap threshold glibc accepts; the trim
    # threshold is capped at INT_MAX (2 GiB), which is far above any batch buffer here.
    ok &= bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30))
    ok &= bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    ok &= bool(mallopt(_M_TOP_PAD, 256 << 20))
    _done = ok
    return ok


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16 on x86).

    ``None`` where it cannot be told (no ``/proc/cpuinfo``, or not an x86 CPU).  Without native
    support PyTorch emulates bf16 on the CPU: on an AVX2-only CPU, bf16 autocast made a SmallCNN
    training step about 20x *slower* than fp32 (docs/performance.md).

    Examples
    --------
    >>> cpu_has_native_bf16("flags\\t\\t: fpu sse avx2 avx512f avx512_bf16")
    True
    >>> cpu_has_native_bf16("flags\\t\\t: fpu sse avx2")
    False
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    if not flags:
        return None
    return bool({"avx512_bf16", "amx_bf16"} & flags)
