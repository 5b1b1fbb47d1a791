"""The chunked LM head alone: forward + backward of log softmax(head(hidden))[label], four ways.

    .venv/bin/python benchmarks/throughput/bench_head.py [--positions 550] [--reps 5]

Shapes of SmolLM2-135M (hidden 576, vocab 49152), random weights, bf16 autocast over fp32 master
weights as in training; `--positions` response positions (a K = 4 group has about 550). Variants:
- checkpoint: the head before issue 5 (autograd through the fp32 log-softmax, recomputed in backward)
- plain: the same without the recompute
- fused: negalign.modeling.lm_head.chunked_label_logprobs, all positions in one chunk (logits kept)
- fused-recompute: the same cut into two chunks (each recomputed in backward)
Variants run interleaved, `--reps` times each; min and median seconds are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.utils.checkpoint import checkpoint

from negalign.modeling.lm_head import chunked_label_logprobs, label_logprobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=550)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False)
    hidden = torch.randn(args.positions, args.hidden, requires_grad=True)
    labels = torch.randint(0, args.vocab, (args.positions,))
    half = (args.positions + 1) // 2
    variants = {
        "checkpoint": lambda: checkpoint(label_logprobs, hidden, labels, head, None, use_reentrant=False),
        "plain": lambda: label_logprobs(hidden, labels, head, None),
        "fused": lambda: chunked_label_logprobs(hidden, labels, head, chunk_tokens=args.positions),
        "fused-recompute": lambda: chunked_label_logprobs(hidden, labels, head, chunk_tokens=half),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    grads = {}
    for _ in range(args.reps):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = fn()
            out.sum().backward()
            times[name].append(time.perf_counter() - t0)
            grads[name] = (out.detach(), hidden.grad.clone(), head.weight.grad.clone())
            hidden.grad, head.weight.grad = None, None
    print(f"positions={args.positions} threads={torch.get_num_threads()} "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} load={os.getloadavg()[0]:.2f}")
    ref = grads["checkpoint"]
    for name, ts in times.items():
        diff = [float((a - b).abs().max()) for a, b in zip(grads[name], ref)]
        print(f"{name:16s} min {min(ts):.3f} s  median {statistics.median(ts):.3f} s  "
              f"max |diff| vs checkpoint: logp {diff[0]:.2e} grad_h {diff[1]:.2e} grad_W {diff[2]:.2e}")


if __name__ == "__main__":
    main()
