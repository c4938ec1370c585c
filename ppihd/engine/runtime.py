"""Process-level CPU tuning for the deployed back-ends (no state of its own: each answer is cached per process).

- :func:`keep_freed_memory`: make glibc keep freed memory mapped (Paddle Inference on CPU; docs/benchmarks.md);
- :func:`cpu_supports_bf16`: whether this CPU runs oneDNN bfloat16 natively (the bf16 path's precondition).
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory in the process (Linux/glibc only; once per process; True if set).

    Paddle Inference frees a forward's activations when it ends; glibc serves every block above 32 MB with its
    own ``mmap`` and unmaps it on free, so every run of a 32-slice Swin-B series page-faulted ~4 GB back in
    (~1 M faults, ~1.5 s of kernel time per series: 0.26-0.29 s/slice instead of 0.22-0.23). With
    ``M_MMAP_MAX = 0`` (no per-block mmap) and ``M_TRIM_THRESHOLD = 2 GB`` (freed heap stays mapped) the pages
    are reused: no faults after the first run, the same peak RSS (docs/benchmarks.md, "CPU inference").
    Same effect as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` in the environment."""
    try:
        import ctypes
        import platform

        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return False
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
        return libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2 ** 31 - 1) == 1
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False


@functools.lru_cache(maxsize=None)
def cpu_supports_bf16() -> bool:
    """True when paddle reports native bfloat16 on this CPU (AVX512-BF16 or AMX: oneDNN runs bf16 fast)."""
    try:
        from paddle.base import core
    except ImportError:  # pragma: no cover - Paddle 2.x
        from paddle.fluid import core
    fast = getattr(core, "supports_bfloat16_fast_performance", None)
    return bool(fast()) if fast is not None else False
