"""fp32 weights + bf16 autocast (negalign's train.precision bf16) vs bf16 weights with an fp32 master copy.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/throughput/bench_precision.py --anchors 4 --reps 6

One process, two copies of the bundled SmolLM2-135M, alternating on the same synthetic groups as
bench_train.py: (a) fp32 weights, forward under bf16 autocast, clip + AdamW on the fp32 weights;
(b) bf16 weights without autocast, gradients copied into fp32 master weights, clip + AdamW there,
then the master weights copied back. Prints forward + backward and optimizer seconds for both, and
how far (b)'s log-probs are from (a)'s: the cost of (b) is that the reference log-probs (computed
under autocast) no longer match the policy's at step 0.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import make_text_groups, token_groups  # noqa: E402


def main() -> None:
    import torch

    from negalign.modeling.loading import load_model
    from negalign.modeling.logprobs import group_logprobs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anchors", type=int, default=4)
    ap.add_argument("--reps", type=int, default=6)
    args = ap.parse_args()
    m32, tok = load_model("default")
    m32.train()
    m16 = copy.deepcopy(m32).to(torch.bfloat16)
    groups = token_groups(tok, make_text_groups(tok, 4, args.anchors, seed=1))
    p32, p16 = list(m32.parameters()), list(m16.parameters())
    master = [p.detach().float().clone().requires_grad_() for p in p16]
    opt32 = torch.optim.AdamW(p32, lr=1e-6, fused=True)
    opt16 = torch.optim.AdamW(master, lr=1e-6, fused=True)

    def autocast_step(group):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logps, _ = group_logprobs(m32, [group])
        logps.sum().backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(p32, 1.0)
        opt32.step()
        opt32.zero_grad(set_to_none=True)
        return t1 - t0, time.perf_counter() - t1, logps.detach()

    def bf16_weights_step(group):
        t0 = time.perf_counter()
        logps, _ = group_logprobs(m16, [group])
        logps.sum().backward()
        t1 = time.perf_counter()
        for p, m in zip(p16, master):
            m.grad = p.grad.float()
            p.grad = None
        torch.nn.utils.clip_grad_norm_(master, 1.0)
        opt16.step()
        opt16.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_copy_(p16, master)
        return t1 - t0, time.perf_counter() - t1, logps.detach()

    best = {"autocast": [float("inf")] * 2, "bf16 weights": [float("inf")] * 2}
    for rep in range(args.reps):
        group = groups[rep % len(groups)]
        a, b = autocast_step(group), bf16_weights_step(group)
        for name, r in (("autocast", a), ("bf16 weights", b)):
            best[name] = [min(best[name][0], r[0]), min(best[name][1], r[1])]
        print(f"rep {rep}: autocast fwd+bwd {a[0]:.2f} opt {a[1]:.2f} | bf16 weights fwd+bwd {b[0]:.2f} "
              f"opt {b[1]:.2f} | max |log-prob diff| {(a[2] - b[2]).abs().max().item():.2f} nats")
    for name, (fb, opt) in best.items():
        print(f"{name:>12}: min forward + backward {fb:.2f} s, min optimizer {opt:.2f} s")


if __name__ == "__main__":
    main()
