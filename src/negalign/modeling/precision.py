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


def _matmul_seconds(dtype: torch.dtype, device: torch.device) -> float:
    import torch

    m, k, n = _PROBE_SHAPE
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    a @ b  # warm-up: kernels picked, caches filled
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best


@functools.cache
def bf16_speedup(device_type: str = "cpu") -> float:
    """fp32 matmul time / bf16 matmul time on this device type (> 1: bf16 is faster), measured once."""
    import torch

    if device_type == "cuda":
        return 2.0 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 0.0
    if device_type != "cpu":
        return 1.0  # mps, xpu: bf16 where the backend supports it; no probe
    device = torch.device("cpu")
    with torch.inference_mode():
        return _matmul_seconds(torch.float32, device) / _matmul_seconds(torch.bfloat16, device)


def _device_type(device: torch.device | str | None) -> str:
    if device is None:
        return "cpu"
    return device if device in ("cpu", "cuda", "mps", "xpu") else getattr(device, "type", None) or str(device).split(":")[0]


def resolve(precision: str, device: torch.device | str | None = None) -> str:
    """'bf16' or 'fp32': "auto" is bf16 where bf16 matmuls are at least as fast as fp32 on `device`.

    An explicit "bf16" stays bf16; on a device where it is slow, one warning says so."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = _device_type(device)
    if precision == "fp32":
        return "fp32"
    speedup = bf16_speedup(kind)
    if precision == "auto":
        return "bf16" if speedup >= 1.0 else "fp32"
    if speedup < 0.5:
        _warn_slow_bf16(kind, speedup)
    return "bf16"


@functools.cache
def _warn_slow_bf16(kind: str, speedup: float) -> None:
    print(f"warning: bf16 matmuls run at {speedup:.2f}x the fp32 speed on this {kind} (no native bf16): "
          f"precision 'auto' or 'fp32' would be faster", file=sys.stderr)


def torch_dtype(precision: str, device: torch.device | str | None = None) -> torch.dtype:
    """The weights' dtype for a resolved `precision`."""
    import torch

    return torch.bfloat16 if resolve(precision, device) == "bf16" else torch.float32


def describe(precision: str, device: torch.device | str | None = None) -> str:
    """'bf16', 'fp32', or for "auto" what it chose and why, for logs: 'auto -> fp32 (bf16 0.02x here)'."""
    if precision != "auto":
        return precision
    kind = _device_type(device)
    return f"auto -> {resolve(precision, kind)} (bf16 {bf16_speedup(kind):.2f}x fp32 on this {kind})"
