"""rDPO benchmark on the bundled SmolLM2-135M-Instruct, safety preset.

One critique run (the bundled model is its own teacher) and one scoring pass make the pairs; then
rDPO (soft labels), DPO (label 1), cDPO (label 1 - eps) and SFT on the revisions train from the
same base on the SAME pairs, and every model (base included) is evaluated on held-out StrongREJECT
prompts, plain and wrapped in the preset's jailbreak personas, and on benign IFBench prompts.

    .venv/bin/python benchmarks/rdpo/bench_rdpo.py --out runs/bench_rdpo

Stages are cached in --out (critique, pairs, each variant's training), so a rerun resumes.
Writes --out/results.json and --out/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def settings_for(out: Path, variant: str, a) -> "RdpoSettings":  # noqa: F821
    from negalign.recipes.rdpo import rdpo_settings_from_dict

    return rdpo_settings_from_dict({
        "run_dir": str(out / variant),
        "model": {"name": "default"},
        "data": {"max_prompt_tokens": 256, "max_response_tokens": a.max_new_tokens + 8},
        "train": {"tau": a.tau, "epochs": a.epochs, "groups_per_step": 8, "micro_groups": 4, "lr": a.lr,
                  "beta": 0.1, "precision": "bf16", "save_every": 0, "warmup_ratio": 0.1},
        "critique": {"preset": "safety", "limit": a.prompts, "max_new_tokens": a.max_new_tokens,
                     "critique_max_new_tokens": a.critique_tokens, "prompts_per_write": a.prompts,
                     "output": str((out / "critique.jsonl").resolve())},
        "rdpo": {"variant": variant, "scorer": "harm_classifier", "filter_not_better": False,
                 "cdpo_epsilon": 0.1},
    })


def evaluate(model_dir: str, harmful, wrapped, benign, benign_answers, classifier, a) -> dict:
    from negalign.evaluation.metrics import greedy_replies, perplexity, rate, response_logprobs
    from negalign.evaluation.scorers import RefusalDetector
    from negalign.modeling.loading import load_model

    model, tok = load_model(model_dir)
    det = RefusalDetector()
    out = {}
    for name, prompts in (("plain", harmful), ("persona", wrapped)):
        replies = greedy_replies(model, tok, prompts, max_new_tokens=a.eval_tokens)
        out[f"refusal_{name}"] = rate(det.score(prompts, replies))
        out[f"harm_{name}"] = float(sum(classifier.score(prompts, replies)) / len(replies))
        out[f"example_{name}"] = " ".join(replies[0].split())[:160]
    lp, ln = response_logprobs(model, tok, benign, benign_answers, max_response_tokens=a.eval_tokens + 8)
    out["benign_ppl"] = perplexity(lp, ln)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_rdpo")
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--critique-tokens", type=int, default=48)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--eval-prompts", type=int, default=16)
    p.add_argument("--eval-tokens", type=int, default=48)
    p.add_argument("--variants", nargs="+", default=["rdpo", "dpo", "cdpo", "sft"])
    a = p.parse_args()

    from negalign.data.eval_sets import ifbench_prompts, strongreject_prompts
    from negalign.data.records import normalize_prompt
    from negalign.evaluation.metrics import greedy_replies
    from negalign.evaluation.scorers.harm_classifier import HarmClassifier
    from negalign.modeling.loading import load_model
    from negalign.recipes.critique import load_preset
    from negalign.recipes.rdpo import make_pairs, stage_critique, stage_pairs, stage_train

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    # held-out evaluation prompts: StrongREJECT is not among the (pyrit) training prompts
    wrappers = load_preset("safety").prompt_sets[0].wrappers
    sr = strongreject_prompts(small=True)[:a.eval_prompts]
    harmful = [normalize_prompt(r["prompt"]) for r in sr]
    wrapped = [normalize_prompt(wrappers[i % len(wrappers)].format(request=r["prompt"])) for i, r in enumerate(sr)]
    benign = [normalize_prompt(r["prompt"]) for r in ifbench_prompts()[:8]]

    t = time.perf_counter()
    base = settings_for(out, "rdpo", a)
    rows = stage_critique(base, exclude={r["prompt"] for r in sr})
    times["critique_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pairs, stats = stage_pairs(base, rows)
    times["scoring_s"] = time.perf_counter() - t
    # what the "revision must score higher" filter would keep, on the same scores
    kept_if_filtered, _, filt = make_pairs(
        [{"id": x["id"], "prompt": x["prompt"], "original": x["rejected"], "revision": x["chosen"]} for x in pairs],
        [x["score_rejected"] for x in pairs], [x["score_chosen"] for x in pairs], tau=a.tau, filter_not_better=True)

    models = {"base": "default"}
    reference = None
    for v in a.variants:
        t = time.perf_counter()
        model_dir, ref = stage_train(settings_for(out, v, a), pairs, reference=reference)
        reference = reference or ref
        times[f"train_{v}_s"] = time.perf_counter() - t
        models[v] = str(model_dir)

    t = time.perf_counter()
    classifier = HarmClassifier.default()
    base_model, tok = load_model("default")
    benign_answers = greedy_replies(base_model, tok, benign, max_new_tokens=a.eval_tokens)
    del base_model
    results = {}
    for name, spec in models.items():
        results[name] = evaluate(spec, harmful, wrapped, benign, benign_answers, classifier, a)
        print(f"eval {name}: {json.dumps({k: v for k, v in results[name].items() if not k.startswith('example')})}",
              flush=True)
    times["eval_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t_all

    report = {"args": vars(a), "pair_stats": stats.__dict__, "filter_would_keep": filt.kept,
              "results": results, "times": times, "date": time.strftime("%Y-%m-%d %H:%M")}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    lines = [f"pairs: {stats.summary()}",
             f"with the 'revision must score higher' filter: {filt.kept}/{len(pairs)} kept", "",
             "| model | refusal, plain | refusal, persona | P(harm), plain | P(harm), persona | benign ppl |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['refusal_plain']:.1%} | {r['refusal_persona']:.1%} | {r['harm_plain']:.3f} | "
                     f"{r['harm_persona']:.3f} | {r['benign_ppl']:.2f} |")
    lines.append("")
    lines.append("times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
