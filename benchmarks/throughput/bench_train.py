"""D2O training step: negalign vs TRL 1.16 DPOTrainer, seconds per group and peak memory, one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/throughput/bench_train.py --out results-cpu.json
        [--model default | --random-init CONFIG_DIR] [--device cpu|cuda] [--anchors 4 8]
        [--systems negalign negalign-ac trl-pre trl-ref trl-gc] [--steps 2] [--mem-anchors 2 16] [--sampling]

A D2O group is one prompt, K anchors and one negative. The systems train on the same groups, the
same model weights, the same precision (fp32 master weights, bf16 autocast by default):

- negalign:  the pipeline's own step, imported (negalign.training.step.train_step: batch_logps ->
             compute_objective("d2o") -> backward -> clip 1.0 -> AdamW); one packed row per group
             (prompt once, per-segment attention), reference log-probs precomputed before training as
             `negalign reference` does.
- negalign-ac: the same with train.activation_checkpointing (each decoder layer recomputed in backward).
- trl-pre:   TRL DPOTrainer over the K (anchor, negative) pairs of each group (2K sequences, each
             repeating the prompt), precompute_ref_log_probs=True, gradient_checkpointing=False.
- trl-ref:   the same, reference forward at every step (TRL's default), gradient_checkpointing=False.
- trl-gc:    TRL's defaults: reference forward at every step and gradient_checkpointing=True.

One step = `--groups-per-step` groups for every system (TRL: per_device_train_batch_size = K x that,
sequential sampler so a step holds exactly those groups' pairs). Each (system, K) runs in its own
subprocess, in interleaved order, so that process's peak RSS (ru_maxrss) or
torch.cuda.max_memory_allocated belongs to that system alone; the first `--warmup` steps are not
timed, then `--steps` steps are, and the median is reported. The text is random whole words from the
tokenizer's vocabulary (speed does not depend on the words), prompts of 40-80 words and responses of
64-128, tokenised by each system the same way. With --random-init the model has the config's shapes
and random weights (speed does not depend on the values). The matmul peak is measured in the same
run (a square torch.matmul loop), and model FLOPs are 6 x parameters x the tokens a system feeds
through the model per second (its own tokens: TRL feeds the prompt 2K times, negalign once).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

SYSTEMS = ("negalign", "negalign-ac", "trl-pre", "trl-ref", "trl-gc")
HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- data: the same text for everyone

def make_text_groups(tok, n_groups: int, anchors: int, seed: int) -> list[dict]:
    """Groups of plain text: prompt, K anchors, one negative, each a run of random vocabulary words."""
    import random

    rng = random.Random(seed)
    words = sorted({t[1:] for t in tok.get_vocab() if t.startswith("\u0120") and t[1:].isalpha()
                    and t[1:].islower() and len(t) >= 4})

    def text(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    return [{"prompt": text(40, 80), "anchors": [" " + text(64, 128) for _ in range(anchors)],
             "negative": " " + text(64, 128)} for _ in range(n_groups)]


def token_groups(tok, text_groups):
    from negalign.modeling.logprobs import Group

    def enc(s):
        return tok(s, add_special_tokens=False)["input_ids"]
    return [Group(enc(g["prompt"]), [enc(r) + [tok.eos_token_id] for r in g["anchors"] + [g["negative"]]])
            for g in text_groups]


# ---------------------------------------------------------------- children

def _sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mib(device: str) -> dict:
    import torch
    if device.startswith("cuda"):
        return {"peak_mib": round(torch.cuda.max_memory_allocated() / 2**20)}
    return {"peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _load(folder: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
    model.config.use_cache = False
    return model, AutoTokenizer.from_pretrained(folder)


def child_negalign(args) -> dict:
    import torch
    from accelerate import Accelerator

    from negalign.modeling.inference import autocast
    from negalign.modeling.logprobs import group_logprobs
    from negalign.training.reference import ReferenceScores, split_columns
    from negalign.training.step import StepSettings, TrainData, make_optimizer, train_step

    model, tok = _load(args.folder, args.device)
    n_steps = args.warmup + args.steps
    groups = token_groups(tok, make_text_groups(tok, n_steps * args.groups_per_step, args.k, seed=1))
    k = args.k
    dev = torch.device(args.device)

    # Reference log-probs, computed once before training (as `negalign reference` does).
    _sync(args.device)
    t0 = time.perf_counter()
    model.eval()
    with torch.inference_mode(), autocast(dev, args.precision):
        lp, ln = group_logprobs(model, groups, chunk_tokens=args.chunk_tokens)
    ref = ReferenceScores(*split_columns(lp, ln, [k + 1] * len(groups), k))
    _sync(args.device)
    ref_s = time.perf_counter() - t0
    if args.system == "negalign-ac":
        from negalign.modeling.activation_checkpointing import enable_activation_checkpointing

        enable_activation_checkpointing(model)
    model.train()
    data = TrainData(groups=groups, n_anchors=k, reference=ref)
    params = [p for p in model.parameters() if p.requires_grad]
    # The pipeline's own step (negalign.training.step) on a single-process Accelerator: one forward per
    # step (micro_groups = groups per step), clipping at 1.0, fused AdamW where it applies.
    accelerator = Accelerator(cpu=not args.device.startswith("cuda"))
    opt = make_optimizer(params, lr=1e-6, weight_decay=0.01, accelerator=accelerator)
    settings = StepSettings(method="d2o", hp={"beta": 0.1, "alpha": 0.1, "delta": 0.0, "tau": 1.0},
                            micro_groups=args.groups_per_step, chunk_tokens=args.chunk_tokens, grouped=True,
                            precision=args.precision, max_grad_norm=1.0)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(n_steps):
        idx = list(range(step * args.groups_per_step, (step + 1) * args.groups_per_step))
        _sync(args.device)
        t0 = time.perf_counter()
        train_step(model, opt, params, data, idx, settings, accelerator)
        _sync(args.device)
        times.append(time.perf_counter() - t0)
    fed = sum(len(g.prompt_ids) + sum(len(r) for r in g.response_ids) for g in groups) / len(groups)
    return {"step_times": times[args.warmup:], "ref_precompute_s_per_group": ref_s / len(groups),
            "fed_tokens_per_group": fed, **_group_sizes(groups), **_peak_mib(args.device),
            "params": sum(p.numel() for p in model.parameters())}


def _group_sizes(groups) -> dict:
    n = len(groups)
    return {"prompt_tokens": sum(len(g.prompt_ids) for g in groups) / n,
            "response_tokens": sum(len(r) for g in groups for r in g.response_ids) / n}


def child_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    model, tok = _load(args.folder, args.device)
    n_steps = args.warmup + args.steps
    text_groups = make_text_groups(tok, n_steps * args.groups_per_step, args.k, seed=1)
    rows = [{"prompt": g["prompt"], "chosen": a, "rejected": g["negative"]}
            for g in text_groups for a in g["anchors"]]
    groups = token_groups(tok, text_groups)
    # What TRL feeds per group: 2K sequences, each with the prompt.
    fed = sum(2 * args.k * len(g.prompt_ids) + sum(len(r) for r in g.response_ids[:-1])
              + args.k * len(g.response_ids[-1]) for g in groups) / len(groups)

    class Sequential(DPOTrainer):
        # A step must hold exactly one batch of whole groups, as negalign's does.
        def _get_train_sampler(self, *a, **kw):
            return SequentialSampler(self.train_dataset)

    times, marks = [], {}

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            _sync(args.device)
            if len(times) == args.warmup and args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            marks["t"] = time.perf_counter()

        def on_step_end(self, *a, **kw):
            _sync(args.device)
            times.append(time.perf_counter() - marks["t"])

    out_dir = tempfile.mkdtemp(prefix="bench-trl-")
    config = DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=args.k * args.groups_per_step, max_steps=n_steps,
        learning_rate=1e-6, beta=0.1, bf16=args.precision == "bf16", use_cpu=args.device == "cpu",
        gradient_checkpointing=args.system == "trl-gc", precompute_ref_log_probs=args.system == "trl-pre",
        save_strategy="no", report_to="none", logging_steps=10**6, disable_tqdm=True,
        dataloader_num_workers=0, seed=0, max_length=None)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer = Sequential(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[Timer()])
    setup_s = time.perf_counter() - t0
    trainer.train()
    return {"step_times": times[args.warmup:], "setup_s": setup_s, "fed_tokens_per_group": fed,
            **_group_sizes(groups), **_peak_mib(args.device), "params": sum(p.numel() for p in model.parameters()),
            "ref_model_in_memory": trainer.ref_model is not None}


def child_peak(args) -> dict:
    """Best-of sustained matmul rate (GFLOP/s) in bf16 and fp32, square matrices."""
    import torch

    n = args.matmul_n or (8192 if args.device.startswith("cuda") else 2048)
    out = {"matmul_n": n}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device=args.device, dtype=dtype)
        b = torch.randn(n, n, device=args.device, dtype=dtype)
        reps = 20 if args.device.startswith("cuda") else 3
        best = float("inf")
        for _ in range(4):
            _sync(args.device)
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, b)
            _sync(args.device)
            best = min(best, (time.perf_counter() - t0) / reps)
        out[f"{name}_gflops"] = round(2 * n**3 / best / 1e9, 1)
    return out


# ---------------------------------------------------------------- parent

def run_child(args, mode: str, **extra) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--folder", args.folder, "--device", args.device,
           "--precision", args.precision, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--groups-per-step", str(args.groups_per_step), "--chunk-tokens", str(args.chunk_tokens),
           "--matmul-n", str(args.matmul_n)]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        print(f"child {mode} {extra} failed:\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
        return {"error": done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def random_init_folder(config_dir: str) -> str:
    """Save random weights with the config's shapes (and its tokenizer) to a temporary folder."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="bench-model-"))
    config = AutoConfig.from_pretrained(config_dir)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for f in Path(config_dir).iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, folder / f.name)
    return str(folder)


def summarise(row: dict, groups_per_step: int, peak_gflops: float | None) -> dict:
    s = statistics.median(row["step_times"]) / groups_per_step
    fed = row["fed_tokens_per_group"]
    useful = row["prompt_tokens"] + row["response_tokens"]
    out = {"s_per_group": round(s, 3), "fed_tok_s": round(fed / s, 1), "group_tok_s": round(useful / s, 1)}
    if peak_gflops:
        out["mfu_bf16"] = round(6 * row["params"] * fed / s / (peak_gflops * 1e9), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="a model folder, or 'default' (the bundled model)")
    ap.add_argument("--random-init", metavar="CONFIG_DIR", help="random weights with this config (and tokenizer)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--anchors", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per system (median kept)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--groups-per-step", type=int, default=1)
    ap.add_argument("--chunk-tokens", type=int, default=2048)
    ap.add_argument("--mem-anchors", type=int, nargs="*", default=[], help="extra K values, negalign only")
    ap.add_argument("--matmul-n", type=int, default=0)
    ap.add_argument("--sampling", action="store_true", help="also run benchmarks/sampling/bench_sampling.py")
    ap.add_argument("--sampling-args", default="--prompts 4 --k 4 --max-new-tokens 48")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", choices=["negalign", "trl", "peak"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--system", default="trl-pre", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = {"negalign": child_negalign, "trl": child_trl, "peak": child_peak}[args.child]
        print(json.dumps(fn(args)), flush=True)
        return

    import torch

    from negalign.modeling.loading import resolve_model_path

    started = time.perf_counter()
    args.folder = random_init_folder(args.random_init) if args.random_init else resolve_model_path(args.model)
    peak = run_child(args, "peak")
    print(json.dumps({"matmul_peak": peak}), flush=True)
    peak_bf16 = peak.get("bf16_gflops")
    rows = []
    for k in args.anchors:
        for system in args.systems:  # interleaved: every system at this K before the next K
            mode = "negalign" if system.startswith("negalign") else "trl"
            raw = run_child(args, mode, k=k, system=system)
            row = {"system": system, "K": k, **raw}
            if "error" not in raw:
                row.update(summarise(raw, args.groups_per_step, peak_bf16))
            rows.append(row)
            print(json.dumps(row), flush=True)
    for k in args.mem_anchors:
        raw = run_child(args, "negalign", k=k, system="negalign")
        row = {"system": "negalign", "K": k, **raw}
        if "error" not in raw:
            row.update(summarise(raw, args.groups_per_step, peak_bf16))
        rows.append(row)
        print(json.dumps(row), flush=True)
    sampling = None
    if args.sampling:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, str(HERE.parent / "sampling" / "bench_sampling.py"), "--out", f"{tmp}/s.json",
                   *args.sampling_args.split()]
            if args.model != "default":
                cmd += ["--model", args.model]
            done = subprocess.run(cmd, capture_output=True, text=True)
            sampling = (json.loads(Path(f"{tmp}/s.json").read_text()) if done.returncode == 0
                        else {"error": done.stderr[-500:]})
        print(json.dumps({"sampling": sampling}), flush=True)

    result = {"date": date.today().isoformat(), "command": " ".join(sys.argv),
              "machine": _machine(args.device), "torch": torch.__version__, "model": args.random_init or args.model,
              "weights": "random init" if args.random_init else "trained", "precision": args.precision,
              "matmul_peak": peak, "rows": rows, "sampling": sampling,
              "wall_s": round(time.perf_counter() - started, 1)}
    print(markdown(result))
    if args.out:
        from negalign.base.io import write_json
        write_json(args.out, result)


def _machine(device: str) -> str:
    import torch
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [f"matmul peak: {result['matmul_peak']}", "",
             "| K | system | s/group | vs negalign | peak MiB | mem vs negalign | fed tok/s | group tok/s | "
             "MFU (bf16 peak) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['K']} | {r['system']} | error: {r['error']} | | | | | | |")
            continue
        base = next((b for b in rows if b["system"] == "negalign" and b["K"] == r["K"] and "error" not in b), None)
        speed = f"{r['s_per_group'] / base['s_per_group']:.2f}x" if base else "-"
        mem = f"{r['peak_mib'] / base['peak_mib']:.2f}x" if base else "-"
        lines.append(f"| {r['K']} | {r['system']} | {r['s_per_group']} | {speed} | {r['peak_mib']} | {mem} | "
                     f"{r['fed_tok_s']} | {r['group_tok_s']} | {r.get('mfu_bf16', '-')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
