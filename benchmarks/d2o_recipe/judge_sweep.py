"""Score the harmful replies that sweep.py saved with the offline judge, and tabulate every model.

    .venv/bin/python benchmarks/d2o_recipe/judge_sweep.py runs/sweep/results.jsonl --out results_sweep.json \
        [--only base t4h] [--n-judged 150]

Judge scores are cached per model in --cache/<name>/judge_scores.jsonl (resumable). The judged metrics
are computed by evaluate's own judge section (same definitions, same bootstrap), so they are the
numbers `negalign evaluate` would give for these replies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TABLE = ("refusal_rate", "judge_harmful_rate", "overrefusal_rate", "benign_perplexity", "kl_per_token",
         "negative_logprob_shift_per_token", "positive_logprob_shift_per_token", "heldout_pair_accuracy")


def main() -> None:
    from negalign.data.eval_sets import strongreject_prompts
    from negalign.data.records import normalize_prompt
    from negalign.evaluation.evaluate import cached_scorer, make_judge
    from negalign.evaluation.generations import JUDGE_FILE, ScoreStore
    from negalign.evaluation.metrics import empty_replies, refusals
    from negalign.evaluation.scorers import RefusalDetector
    from negalign.evaluation.sections import judge_harm_section

    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--n-judged", type=int, default=None, help="judge only the first N harmful replies")
    ap.add_argument("--cache", default="runs/sweep_judge")
    a = ap.parse_args()
    rows = [json.loads(x) for x in Path(a.results).read_text().splitlines() if x.strip()]
    if a.only:
        rows = [r for r in rows if r["name"] in a.only]
    by_id = {p["id"]: p for p in strongreject_prompts()}
    judge = make_judge("default")
    out_path = Path(a.out)
    table = json.loads(out_path.read_text()) if out_path.exists() else {"models": {}}
    for r in rows:
        ids = list(r["replies"]["harmful"])[:a.n_judged]
        prompts = [by_id[i] for i in ids]
        replies = [r["replies"]["harmful"][i] for i in ids]
        convs = [normalize_prompt(p["prompt"]) for p in prompts]
        refused = refusals(RefusalDetector(), convs, replies)
        empty = empty_replies(replies)
        store = ScoreStore(Path(a.cache) / r["name"] / JUDGE_FILE)
        scored = cached_scorer(judge, store, print)
        section = judge_harm_section(judge, prompts, replies, refused, empty, dict(n_boot=1000, seed=0), scored)
        metrics = {k: v for k, v in r["eval"]["metrics"].items() if k in TABLE}
        metrics.update({k: v.as_dict() for k, v in section.metrics.items()})
        table["models"][r["name"]] = {"set": r["set"], "device": r["device"], "train": r["train"],
                                      "n_judged": len(ids), "settings": r["eval"]["settings"], "metrics": metrics}
        m = metrics
        print(f"{r['name']}: refusal {m['refusal_rate']['value']:.3f} judged harmful "
              f"{m['judge_harmful_rate']['value']:.3f} over-refusal {m['overrefusal_rate']['value']:.3f} "
              f"ppl {m['benign_perplexity']['value']:.3f}", flush=True)
        out_path.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
