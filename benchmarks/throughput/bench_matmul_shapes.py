"""bf16 matmul rate at the default model's own shapes vs the square 2048^3 peak, same process.

    .venv/bin/python benchmarks/throughput/bench_matmul_shapes.py [--tokens 1000] [--reps 20]

The MFU in bench_train.py divides model FLOPs by the square-matmul peak. A 135M model's matmuls
are thin (hidden 576): this measures how fast torch's bf16 matmul runs at exactly those shapes
(tokens x in @ in x out, the forward's products), which bounds what any trainer can reach here.
"""

from __future__ import annotations

import argparse
import time


def rate(m: int, k: int, n: int, reps: int) -> float:
    import torch

    a = torch.randn(m, k, dtype=torch.bfloat16)
    b = torch.randn(k, n, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    t = args.tokens
    # SmolLM2-135M: hidden 576, 9 query / 3 kv heads of 64, MLP 1536, vocab 49152.
    shapes = {"q/o proj": (t, 576, 576), "k/v proj": (t, 576, 192), "gate/up": (t, 576, 1536),
              "down": (t, 1536, 576), "lm head": (t, 576, 49152), "square 2048": (2048, 2048, 2048)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {t} tokens")
    for name, (m, k, n) in shapes.items():
        print(f"{name:>12}: {rate(m, k, n, args.reps):7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
