"""AdamW step time for the default model's parameters: for-loop vs foreach vs fused, one process.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/throughput/bench_optimizer.py [--reps 3]

Tensors have the bundled SmolLM2-135M's parameter shapes (fp32, random values, random gradients);
each variant takes one warm-up step (it allocates its state) and then one timed step, variants
interleaved, `--reps` times; the minimum is printed. Why it matters: at one D2O group per step the
optimizer is a fixed cost beside a ~2-3 s forward + backward on this CPU.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch

    from negalign.modeling.loading import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    model, _ = load_model("default")
    shapes = [tuple(p.shape) for p in model.parameters()]
    del model
    print(f"{len(shapes)} tensors, {sum(torch.Size(s).numel() for s in shapes) / 1e6:.1f} M parameters, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    variants = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    best = {name: float("inf") for name in variants}
    for _ in range(args.reps):
        for name, kw in variants.items():
            params = [torch.randn(s, requires_grad=True) for s in shapes]
            for p in params:
                p.grad = torch.randn_like(p) * 1e-3
            opt = torch.optim.AdamW(params, lr=1e-5, **kw)
            opt.step()
            t0 = time.perf_counter()
            opt.step()
            best[name] = min(best[name], time.perf_counter() - t0)
            del opt, params
    for name, seconds in best.items():
        print(f"{name:>9}: {seconds:.3f} s per step")


if __name__ == "__main__":
    main()
