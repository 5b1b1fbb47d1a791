"""rDPO benchmark, safety preset: a 1.5B teacher critiques and revises, the offline judge labels,
the bundled SmolLM2-135M-Instruct student trains four ways on the same pairs.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rdpo/bench_rdpo.py --out runs/bench_rdpo

1. critique: Qwen2.5-Coder-1.5B-Instruct (bf16) answers every pyrit training-split request wrapped in
   one of the preset's six jailbreak personas, critiques its answer against the principle and revises
   it (bench_rdpo_settings.py has the budgets).
2. pairs: chosen = revision, rejected = original; the offline verdict judge's P(harmful) of each,
   label p = sigmoid((s_o - s_r) / tau); identical pairs dropped, no "revision must score higher" filter.
3. training (2 epochs, 8 pairs per step, lr 5e-5, beta 0.1), every variant from the same base on the
   same pairs (reference log-probs computed once):
   rdpo (soft label p), dpo (1), cdpo (0.9), sft (on the revisions); seeds 0 for all, then --more-seeds
   for rdpo and the baseline with the lowest judged harm that keeps over-refusal within +10 points.
4. evaluation, every model and the base: `evaluate_model` with the demo's settings (48 StrongREJECT
   prompts, 48 over-refusal prompts, 24 benign, 24 held-out pyrit pairs), plus the first 24 of the
   StrongREJECT prompts wrapped in the preset's personas (held-out requests, seen personas).

The judge that labelled the pairs also rates the replies: its columns are not independent of the
labels (only rdpo uses the label values; dpo, cdpo and sft see which side is chosen, not by how much).
The refusal and over-refusal columns (the RefusalDetector), benign perplexity and the log-prob shifts
do not involve the judge.

Every stage is cached in --out, so a rerun resumes; --deadline HH:MM starts no new training or
evaluation after that time. Writes --out/results.json and --out/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from bench_rdpo_settings import PAIR_SCORER, TAU, TEACHER, settings_for  # noqa: E402

VARIANTS = ("rdpo", "dpo", "cdpo", "sft")
PERSONA_PROMPTS = 24
MAX_OVERREFUSAL_RISE = 0.10


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def past(deadline: str | None) -> bool:
    return bool(deadline) and datetime.now().strftime("%H:%M") >= deadline


def persona_prompts() -> list:
    from negalign.data.eval_sets import strongreject_prompts
    from negalign.data.records import normalize_prompt
    from negalign.evaluation.evaluate import round_robin
    from negalign.recipes.critique import load_preset

    wrappers = load_preset("safety").prompt_sets[0].wrappers
    rows = round_robin(strongreject_prompts(), PERSONA_PROMPTS)
    return [normalize_prompt(wrappers[i % len(wrappers)].format(request=r["prompt"])) for i, r in enumerate(rows)]


def eval_persona(model_spec: str, out: Path, judge) -> dict:
    """Judged harm and refusal on the persona-wrapped held-out requests; cached in out/persona.json."""
    from negalign.base.io import write_json
    from negalign.evaluation.metrics import greedy_replies, judged_harmful, refusals
    from negalign.evaluation.scorers import RefusalDetector
    from negalign.evaluation.stats import bootstrap_mean
    from negalign.modeling.loading import load_model

    path = out / "persona.json"
    if path.exists():
        return json.loads(path.read_text())
    prompts = persona_prompts()
    model, tok = load_model(model_spec)
    replies = greedy_replies(model, tok, prompts, max_new_tokens=64)
    del model
    scores = judge.score(prompts, replies)
    harmful = judged_harmful(scores, replies, judge.threshold)
    refused = refusals(RefusalDetector(), prompts, replies)
    result = {"persona_judge_harmful_rate": bootstrap_mean(harmful).as_dict(),
              "persona_refusal_rate": bootstrap_mean(refused).as_dict(),
              "replies": [{"prompt": p[-1]["content"], "reply": r, "judge": s}
                          for p, r, s in zip(prompts, replies, scores)]}
    write_json(path, result)
    return result


def eval_model(out: Path, name: str, spec: str, judge_holder: dict) -> dict:
    from negalign.evaluation.evaluate import evaluate_model, make_judge, seed_caches
    from negalign.recipes.demo import DEMO_EVAL

    ev = out / name / "eval"
    if not (ev / "eval.json").exists():
        t0 = time.perf_counter()
        if name != "base":
            seed_caches(out / "base" / "eval", ev)   # the base model is every run's reference
        evaluate_model(spec, reference_spec="default", out_dir=ev, log=log, **DEMO_EVAL)
        log(f"{name}: evaluated in {time.perf_counter() - t0:.0f} s")
    if not (ev / "persona.json").exists() and "judge" not in judge_holder:
        judge_holder["judge"] = make_judge("default")
    persona = eval_persona(spec, ev, judge_holder.get("judge"))
    metrics = json.loads((ev / "eval.json").read_text())["metrics"]
    return {**metrics, **{k: v for k, v in persona.items() if k != "replies"}}


def teacher_tokens(rows: list[dict]) -> dict[str, int]:
    """How many tokens the teacher wrote per turn (its own tokenizer): the critique's cost."""
    from transformers import AutoTokenizer

    from negalign.modeling.loading import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(TEACHER))
    return {f: sum(len(tok(r.get(f) or "")["input_ids"]) for r in rows) for f in ("original", "critique", "revision")}


def best_baseline(results: dict, base: dict) -> str | None:
    """The baseline (seed 0) with the lowest judged harm, plain and persona together, among those whose
    over-refusal rose at most 10 points; None when none qualifies."""
    def harm(m):
        return m["judge_harmful_rate"]["value"] + m["persona_judge_harmful_rate"]["value"]

    ok = [v for v in VARIANTS if v != "rdpo" and f"{v}_s0" in results
          and results[f"{v}_s0"]["overrefusal_rate"]["value"] - base["overrefusal_rate"]["value"] <= MAX_OVERREFUSAL_RISE]
    return min(ok, key=lambda v: harm(results[f"{v}_s0"]), default=None)


COLS = [("judge_harmful_rate", "judged harmful, plain"), ("persona_judge_harmful_rate", "judged harmful, persona"),
        ("refusal_rate", "refusal, plain"), ("persona_refusal_rate", "refusal, persona"),
        ("overrefusal_rate", "over-refusal"), ("benign_perplexity", "benign ppl"),
        ("negative_logprob_shift_per_token", "held-out harmful shift"),
        ("positive_logprob_shift_per_token", "held-out safe shift")]


def fmt(m: dict | None, key: str) -> str:
    e = (m or {}).get(key) or {}
    v, lo, hi = e.get("value"), e.get("ci_low"), e.get("ci_high")
    if v is None:
        return "n/a"
    if key.endswith("rate"):
        return f"{v:.1%} [{lo:.1%}, {hi:.1%}]"
    f = "{:.2f}" if "perplexity" in key else "{:+.3f}"
    return f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]" if lo is not None else f.format(v)


def table(results: dict) -> list[str]:
    lines = ["| model | " + " | ".join(c for _, c in COLS) + " |", "|---" * (len(COLS) + 1) + "|"]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(fmt(m, k) for k, _ in COLS) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_rdpo")
    p.add_argument("--prompts", type=int, default=None, help="the first N critique prompts (default: all 251)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--more-seeds", type=int, nargs="*", default=[1, 2],
                   help="extra seeds for rdpo and the best baseline")
    p.add_argument("--deadline", default=None, help="HH:MM: start no new training or evaluation after it")
    a = p.parse_args()

    from negalign.base.io import write_json, write_text
    from negalign.recipes.rdpo import make_pairs, stage_critique, stage_pairs, stage_train

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    def settings(v: str, seed: int):
        return settings_for(out, v, seed, epochs=a.epochs, lr=a.lr, prompts=a.prompts)

    t = time.perf_counter()
    rows = stage_critique(settings("rdpo", 0), log=log)
    times["critique_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pairs, stats = stage_pairs(settings("rdpo", 0), rows, log=log)
    times["scoring_s"] = time.perf_counter() - t
    _, _, filt = make_pairs(
        [{"id": x["id"], "prompt": x["prompt"], "original": x["rejected"], "revision": x["chosen"]} for x in pairs],
        [x["score_rejected"] for x in pairs], [x["score_chosen"] for x in pairs], tau=TAU, filter_not_better=True)

    judge_holder: dict = {}
    results: dict[str, dict] = {}
    reference = None

    def run(v: str, seed: int) -> None:
        nonlocal reference
        name = f"{v}_s{seed}"
        if past(a.deadline) and not (out / name / "eval" / "persona.json").exists():
            log(f"{name}: skipped, past the deadline")
            return
        t0 = time.perf_counter()
        model_dir, ref = stage_train(settings(v, seed), pairs, reference=reference, log=log)
        reference = reference or ref
        times[f"train_{name}_s"] = round(time.perf_counter() - t0, 1)
        results[name] = eval_model(out, name, str(model_dir), judge_holder)

    results["base"] = eval_model(out, "base", "default", judge_holder)
    for v in a.variants:
        run(v, 0)
    best = best_baseline(results, results["base"])
    log(f"best baseline: {best}")
    for seed in a.more_seeds:
        for v in ("rdpo", best):
            if v:
                run(v, seed)

    report = {"teacher": TEACHER, "pair_scorer": PAIR_SCORER, "args": vars(a), "pair_stats": stats.__dict__,
              "teacher_tokens": teacher_tokens(rows),
              "filter_would_keep": filt.kept, "best_baseline": best, "results": results, "times": times,
              "date": time.strftime("%Y-%m-%d %H:%M")}
    write_json(out / "results.json", report)
    lines = [f"teacher {TEACHER}; pairs scored by {PAIR_SCORER}: {stats.summary()}",
             f"with the 'revision must score higher' filter: {filt.kept}/{len(pairs)} kept",
             f"best baseline (lowest judged harm, over-refusal within +10 points): {best}", ""] + table(results)
    write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
