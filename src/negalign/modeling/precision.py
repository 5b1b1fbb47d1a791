"""bf16 or fp32 for a device: "auto" takes bf16 only where this device's bf16 matmuls are fast.

Why a measurement and not a rule: on a CPU with native bf16 (AVX512-BF16, AMX) a bf16 matmul runs about
twice as fast as fp32, but on one without it (AVX2 only) PyTorch emulates bf16 and the same matmul is
about 50x slower (0.6 vs 34 GFLOP/s per core on a 2-core AVX2 EPYC, 2026-12-01): a bf16 default that
is right on one machine stalls every model on the next. So "auto" times one small matmul in each dtype,
once per process and device type, and takes bf16 when it is at least as fast.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: the config module reads PRECISIONS before any model loads
PRECISIONS = ("auto", "bf16", "fp32")
_PROBE_SHAPE = (128, 512, 512)  # 67 MFLOP: milliseconds in fp32, ~0.1 s on an emulated bf16 path


def _matmul_seconds(dtype: torch.dtype) -> float:
    import torch

    m, k, n = _PROBE_SHAPE
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # warm-up: kernels picked, caches filled
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return best


@functools.cache
def bf16_speedup() -> float:
    """fp32 matmul time / bf16 matmul time on this CPU (> 1: bf16 is faster), measured once per process."""
    import torch

    with torch.inference_mode():
        return _matmul_seconds(torch.float32) / _matmul_seconds(torch.bfloat16)


def _bf16_is_fast(kind: str) -> bool:
    import torch

    if kind == "cpu":
        return bf16_speedup() >= 1.0
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return False  # mps, xpu: not measured here; fp32 is the safe choice


def _device_type(device: torch.device | str | None) -> str:
    import torch

    return "cpu" if device is None else torch.device(device).type


def resolve(precision: str, device: torch.device | str | None = None) -> str:
    """'bf16' or 'fp32': "auto" is bf16 where bf16 matmuls are at least as fast as fp32 on `device`.

    An explicit "bf16" stays bf16; on a CPU where it is slow, one warning says so."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return "fp32"
    kind = _device_type(device)
    if precision == "auto":
        return "bf16" if _bf16_is_fast(kind) else "fp32"
    if kind == "cpu" and bf16_speedup() < 0.5:
        _warn_slow_bf16(bf16_speedup())
    return "bf16"


@functools.cache
def _warn_slow_bf16(speedup: float) -> None:
    print(f"warning: bf16 matmuls run at {speedup:.2f}x the fp32 speed on this CPU (no native bf16): "
          f"precision 'auto' or 'fp32' would be faster", file=sys.stderr)


def torch_dtype(precision: str, device: torch.device | str | None = None) -> torch.dtype:
    """The weights' dtype for a resolved `precision`."""
    import torch

    return torch.bfloat16 if resolve(precision, device) == "bf16" else torch.float32


def describe(precision: str, device: torch.device | str | None = None) -> str:
    """'bf16', 'fp32', or for "auto" what it chose and why, for logs: 'auto -> fp32 (bf16 0.02x fp32 on this CPU)'."""
    if precision != "auto":
        return precision
    kind, chosen = _device_type(device), resolve(precision, device)
    if kind == "cpu":
        why = f"bf16 {bf16_speedup():.2f}x fp32 on this CPU"
    else:
        why = f"bf16 {'' if chosen == 'bf16' else 'not '}supported on this {kind}"
    return f"auto -> {chosen} ({why})"
