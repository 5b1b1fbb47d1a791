"""Where a negalign D2O training step spends its time: phases with device syncs, then torch.profiler.

    HF_HUB_OFFLINE=1 python benchmarks/throughput/profile_step.py --random-init CONFIG_DIR --device cuda
        [--groups 8] [--anchors 4] [--sdpa-backend default|math|efficient|cudnn|flash]

Prints the wall time of forward (grouped log-probs), backward and optimizer step separately, then
the top operators by self CPU time and by self device time. When the device time summed over a step
is far below its wall time, the step is bound by the host (Python and kernel launches), not by the
accelerator. Random weights with the config's shapes (speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import make_text_groups, random_init_folder, token_groups  # noqa: E402


def main() -> None:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from negalign.modeling.logprobs import group_logprobs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-init", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--anchors", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--sdpa-backend", default="default",
                    choices=["default", "math", "efficient", "cudnn", "flash"])
    args = ap.parse_args()
    folder = random_init_folder(args.random_init)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(args.device)
    tok = AutoTokenizer.from_pretrained(folder)
    model.config.use_cache = False
    model.train()
    groups = token_groups(tok, make_text_groups(tok, args.groups, args.anchors, seed=1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    dev = torch.device(args.device)
    backend = {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}.get(args.sdpa_backend)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step(phases=None):
        ctx = sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()
        with ctx:
            t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                lp, _ = group_logprobs(model, groups)
            sync()
            t1 = time.perf_counter()
            lp.sum().backward()
            sync()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            t3 = time.perf_counter()
        if phases is not None:
            phases.append((t1 - t0, t2 - t1, t3 - t2))

    for _ in range(2):
        step()
    phases = []
    for _ in range(args.steps):
        step(phases)
    tokens = sum(len(g.prompt_ids) + sum(len(r) for r in g.response_ids) for g in groups)
    for f, b, o in phases:
        print(f"backend={args.sdpa_backend} tokens={tokens} forward {f:.3f}s backward {b:.3f}s "
              f"clip+adamw {o:.3f}s total {f + b + o:.3f}s")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if dev.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        step()
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=12))
    if dev.type == "cuda":
        print(averages.table(sort_by="self_cuda_time_total", row_limit=12))
        device_us = sum(e.self_device_time_total for e in averages)
        print(f"device time summed over the profiled step: {device_us / 1e3:.1f} ms")


if __name__ == "__main__":
    main()
