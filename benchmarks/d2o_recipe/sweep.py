"""Train and evaluate several D2O variants in one process, on anchors sampled once.

Built for a lent GPU (where a variant takes about a minute), it runs anywhere. Each variant is the
base config plus dotted overrides; its run directory gets a copy of the anchors of --anchors (so the
teacher is not sampled again), trains with the real stages (`negalign run`), and is evaluated with
`evaluate_model` with the judge and the MiniLM proxy off. One JSON line per model is appended to
--results as soon as it is done: the overrides, a training summary, evaluate's metrics and the greedy
replies, which judge_sweep.py scores with the offline judge on another machine.

    python benchmarks/d2o_recipe/sweep.py --anchors runs/t4 --variants benchmarks/d2o_recipe/variants.json \
        --root runs/sweep --results runs/sweep/results.jsonl

A variant named "base" evaluates the initial model. Variants already in --results are skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

# What every variant shares: the anchors were sampled with these settings (their pin must match).
COMMON = {"sample.model": "qwen2.5-coder-1.5b", "sample.precision": "bf16", "sample.k": "4",
          "sample.max_new_tokens": "48", "data.max_negatives_per_prompt": "2"}


def done_names(results: Path) -> set[str]:
    if not results.exists():
        return set()
    return {json.loads(x)["name"] for x in results.read_text().splitlines() if x.strip()}


def model_replies(eval_dir: Path, model_spec: str, max_new_tokens: int, seed: int,
                  precision: str = "fp32") -> dict[str, dict[str, str]]:
    """The model's greedy replies per prompt set, read back from evaluate's generations.jsonl."""
    from negalign.evaluation.generations import GENERATIONS_FILE, generation_fingerprint

    fp = generation_fingerprint(model_spec, "model", max_new_tokens, 0.0, seed, precision)
    out: dict[str, dict[str, str]] = {}
    for line in (eval_dir / GENERATIONS_FILE).read_text().splitlines():
        row = json.loads(line) if line.strip() else None
        if row and row["role"] == "model" and row["fp"] == fp:
            out.setdefault(row["set"], {})[row["id"]] = row["response"]
    return out


def train_variant(args, name: str, overrides: dict) -> tuple[str, dict]:
    """Train one variant with the real stages; return its model folder and a training summary."""
    from negalign.config import load_config
    from negalign.recipes import d2o

    run = Path(args.root) / name
    run.mkdir(parents=True, exist_ok=True)
    for f in ("anchors.jsonl", "anchors.meta.json"):
        if not (run / f).exists():
            shutil.copy(Path(args.anchors) / f, run / f)
    shared_hold = Path(args.root) / "_hold"  # hold anchors are sampled once and shared
    if shared_hold.exists() and not (run / "hold").exists():
        shutil.copytree(shared_hold, run / "hold")
    cfg = load_config(args.config, {**COMMON, **{k: str(v) for k, v in overrides.items()}, "run_dir": str(run)})
    t0 = time.perf_counter()
    d2o.stage_sample(cfg, log=print)
    if (run / "hold" / "anchors.jsonl").exists() and not shared_hold.exists():
        shutil.copytree(run / "hold", shared_hold)
    t1 = time.perf_counter()
    model_dir = d2o.stage_train(cfg, log=print)
    rows = [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    summary = {"sample_s": round(t1 - t0, 1), "train_s": round(time.perf_counter() - t1, 1), "steps": len(rows),
               "first": rows[0] if rows else None, "last": rows[-1] if rows else None}
    return str(model_dir), summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/d2o_smollm2.yaml")
    ap.add_argument("--anchors", required=True, help="run directory whose anchors.jsonl every variant reuses")
    ap.add_argument("--variants", required=True, help='JSON list of {"name", "set": {dotted key: value}}')
    ap.add_argument("--root", default="runs/sweep")
    ap.add_argument("--results", required=True)
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--no-kl", action="store_true", help="skip the sampled KL estimate (saves time on a CPU)")
    ap.add_argument("--sizes", help="N_HARMFUL,N_OVERREFUSAL,N_BENIGN for smoke runs (default: evaluate's)")
    a = ap.parse_args()

    import torch

    from negalign.evaluation.evaluate import DEFAULT_SIZES, evaluate_model

    sizes = dict(DEFAULT_SIZES)
    if a.sizes:
        sizes = dict(zip(("n_harmful", "n_overrefusal", "n_benign"), map(int, a.sizes.split(","))))
    results = Path(a.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    for v in json.loads(Path(a.variants).read_text()):
        name, overrides = v["name"], v.get("set", {})
        if name in done_names(results):
            continue
        t0 = time.perf_counter()
        if name == "base":
            model_spec, summary = "default", {}
        else:
            model_spec, summary = train_variant(a, name, overrides)
        eval_dir = Path(a.root) / name / "eval"
        t1 = time.perf_counter()
        res = evaluate_model(model_spec, reference_spec="default", out_dir=eval_dir, judge=None,
                             harm_classifier="none", batch_size=a.eval_batch, kl=not a.no_kl, log=print,
                             **sizes)
        res.pop("definitions", None)
        s = res["settings"]
        row = {"name": name, "set": overrides, "device": device, "train": summary,
               "eval_s": round(time.perf_counter() - t1, 1), "total_s": round(time.perf_counter() - t0, 1),
               "eval": res, "replies": model_replies(eval_dir, model_spec, s["max_new_tokens"], s["seed"],
                                                    s.get("generation_precision", "fp32"))}
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        m = res["metrics"]
        print(f"SWEEP {name}: refusal {m['refusal_rate']['value']:.3f} over-refusal {m['overrefusal_rate']['value']:.3f} "
              f"ppl {m['benign_perplexity']['value']:.3f} ({row['total_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
