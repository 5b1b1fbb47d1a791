"""Per-segment attention vs the block mask: one grouped forward + backward, interleaved, one process.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/throughput/bench_attention.py \
        --anchors 4 --reps 4 [--groups 1]

`group_logprobs(method="grouped")` (sdpa models: attention per segment, a micro-batch's groups end
to end in one row) against `method="grouped_mask"` (one row per group, whole-row sdpa with the
block mask), on the bundled SmolLM2-135M under bf16 autocast, the same synthetic groups as
bench_train.py. The order alternates every repetition; it prints forward and backward seconds per
repetition, the minimum total per method, and how far the two disagree (bf16 rounding: both are
checked against the naive forward in fp32 by tests/test_logprobs.py).
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--groups", type=int, default=1, help="groups per forward (a micro-batch)")
    args = ap.parse_args()
    model, tok = load_model("default")
    model.train()
    groups = token_groups(tok, make_text_groups(tok, args.reps * args.groups, args.anchors, seed=1))
    print(f"K={args.anchors}, {args.groups} group(s) per forward, torch threads {torch.get_num_threads()}, "
          f"tokens per group {[len(g.prompt_ids) + sum(map(len, g.response_ids)) for g in groups]}")
    times: dict[str, list[tuple[float, float]]] = {}
    for rep in range(args.reps):
        batch = groups[rep * args.groups:(rep + 1) * args.groups]
        order = ("grouped_mask", "grouped") if rep % 2 == 0 else ("grouped", "grouped_mask")
        out = {}
        for method in order:
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logps, _ = group_logprobs(model, batch, method=method)
            t1 = time.perf_counter()
            logps.sum().backward()
            t2 = time.perf_counter()
            out[method] = logps.detach()
            times.setdefault(method, []).append((t1 - t0, t2 - t1))
        diff = (out["grouped"] - out["grouped_mask"]).abs().max().item()
        print(f"rep {rep}: " + "  ".join(f"{m} fwd {times[m][-1][0]:.2f} bwd {times[m][-1][1]:.2f}" for m in order)
              + f"  max |diff| {diff:.3f} nats (of {out['grouped'].abs().max().item():.0f})")
    for method, rows in times.items():
        print(f"{method:>12}: min forward + backward {min(f + b for f, b in rows):.2f} s")


if __name__ == "__main__":
    main()
