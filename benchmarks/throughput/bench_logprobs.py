"""Grouped vs naive sequence log-probs: forward + backward speed and peak memory on the real model.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/throughput/bench_logprobs.py [--anchors 4 8]
        [--groups 2] [--reps 2] [--precision fp32 bf16] [--device cpu] [--random-init CONFIG]

Timing: for each (anchors, precision) one subprocess alternates the two methods (warm-up, then
best of --reps each), so the machine's noise hits both alike. Memory: on CUDA the peak allocated
per method in that same process; on CPU one more subprocess per method runs a single step, so its
peak RSS (ru_maxrss, which only grows) belongs to that method alone. The groups are synthetic but shaped like D2O data:
a prompt of 40-80 tokens, K anchors of 64-128 tokens and one negative, ending in the eos id.
Throughput counts scored response tokens per second (the useful work, equal for both methods) and
also the tokens each method actually feeds through the model. The machine is shared and noisy:
read the grouped/naive ratios, which come from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def make_groups(n_groups: int, anchors: int, vocab: int, eos: int, seed: int):
    import torch

    from negalign.modeling.logprobs import Group

    gen = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        n = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        return torch.randint(100, vocab, (n,), generator=gen).tolist()

    return [Group(ids(40, 80), [ids(63, 127) + [eos] for _ in range(anchors + 1)])
            for _ in range(n_groups)]


def _load(args):
    import torch

    from negalign.modeling.loading import load_model

    torch.manual_seed(0)
    if args.random_init:
        # Same shapes as the real model, random weights: for machines without the bundled weights.
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(args.random_init)
        model = AutoModelForCausalLM.from_config(config).to(args.device)
        eos = config.eos_token_id
    else:
        model, tok = load_model(args.model, device=args.device)
        eos = tok.eos_token_id
    model.train()
    return model, make_groups(args.groups, args.anchors[0], model.config.vocab_size, eos, seed=1)


def _step(model, groups, method, precision, device):
    import torch

    from negalign.modeling.logprobs import group_logprobs

    model.zero_grad(set_to_none=True)
    weights = torch.randn(len(groups), max(len(g.response_ids) for g in groups), device=device)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logps, _ = group_logprobs(model, groups, method=method)
    (logps * weights).sum().backward()


def _fed_tokens(groups, method) -> int:
    if method == "grouped":
        return sum(len(g.prompt_ids) + sum(len(r) for r in g.response_ids) for g in groups)
    return sum(len(g.prompt_ids) + len(r) for g in groups for r in g.response_ids)


def child_time(args) -> list[dict]:
    """Both methods in one process, alternating, best of `reps` each: noise hits both alike."""
    import torch

    model, groups = _load(args)
    cuda = args.device.startswith("cuda")
    best = {m: float("inf") for m in args.methods}
    peak = {}
    for rep in range(args.reps + 1):  # rep 0 warms up and is not timed
        for method in args.methods:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            _step(model, groups, method, args.precision[0], args.device)
            if cuda:
                torch.cuda.synchronize()
                peak[method] = round(torch.cuda.max_memory_allocated() / 2**20)
            if rep:
                best[method] = min(best[method], time.perf_counter() - t0)
    scored = sum(len(r) for g in groups for r in g.response_ids)
    rows = []
    for method in args.methods:
        s = best[method]
        row = {"method": method, "anchors": args.anchors[0], "precision": args.precision[0],
               "groups": args.groups, "scored_tokens": scored, "fed_tokens": _fed_tokens(groups, method),
               "step_s": round(s, 3), "scored_tok_s": round(scored / s, 1),
               "fed_tok_s": round(_fed_tokens(groups, method) / s, 1)}
        if cuda:
            row["peak_cuda_mib"] = peak[method]
        rows.append(row)
    return rows


def child_memory(args) -> dict:
    """One step of one method: this process's peak RSS belongs to it alone (ru_maxrss only grows)."""
    model, groups = _load(args)
    _step(model, groups, args.method, args.precision[0], args.device)
    return {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--random-init", metavar="CONFIG", help="random weights from a config.json or folder")
    ap.add_argument("--anchors", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--methods", nargs="+", default=["naive", "grouped"], choices=["naive", "grouped"])
    ap.add_argument("--groups", type=int, default=2, help="groups per batch")
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions (best is kept)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    ap.add_argument("--child", choices=["time", "memory"], help=argparse.SUPPRESS)
    ap.add_argument("--method", default="grouped", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "time":
        print(json.dumps(child_time(args)))
        return
    if args.child == "memory":
        print(json.dumps(child_memory(args)))
        return

    def child(mode, anchors, precision, extra=()):
        cmd = [sys.executable, __file__, "--child", mode, "--model", args.model, "--anchors", str(anchors),
               "--precision", precision, "--groups", str(args.groups), "--reps", str(args.reps),
               "--device", args.device, "--methods", *args.methods, *extra]
        if args.random_init:
            cmd += ["--random-init", args.random_init]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        return json.loads(done.stdout.strip().splitlines()[-1])

    rows = []
    for anchors in args.anchors:
        for precision in args.precision:
            timed = child("time", anchors, precision)
            for row in timed:
                if not args.no_rss:
                    row.update(child("memory", anchors, precision, ["--method", row["method"]]))
                rows.append(row)
                print(json.dumps(row), flush=True)

    mem_key = "peak_cuda_mib" if args.device.startswith("cuda") else "peak_rss_mib"
    print(f"\n| K | precision | method | scored tok/s | fed tok/s | step s | {mem_key} | speed-up | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        naive = next((r for r in rows if r["method"] == "naive" and r["anchors"] == row["anchors"]
                      and r["precision"] == row["precision"]), None)
        speed = f"{row['scored_tok_s'] / naive['scored_tok_s']:.2f}x" if naive else "-"
        mem = row.get(mem_key, "-")
        ratio = f"{mem / naive[mem_key]:.2f}" if naive and mem_key in row else "-"
        print(f"| {row['anchors']} | {row['precision']} | {row['method']} | {row['scored_tok_s']} | "
              f"{row['fed_tok_s']} | {row['step_s']} | {mem} | {speed} | {ratio} |")


if __name__ == "__main__":
    main()
