"""Score the harmful replies that sweep.py saved with the offline judge, and tabulate every model.

    .venv/bin/python benchmarks/d2o_recipe/judge_sweep.py runs/sweep/results.jsonl --out results_sweep.json \
        [--only base t4h] [--n-judged 150] [--eval-dir base=runs/eval_base] [--n-overrefusal 128]

--eval-dir NAME=DIR adds a model from a `negalign evaluate` output folder (its greedy replies). The
refusal and over-refusal rates are recomputed from the replies for every model (the same prompts
for all: the first --n-overrefusal edgy prompts), so rows from both sources compare like with like.

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


def eval_dir_row(name: str, folder: Path) -> dict:
    """A results row from an evaluate output folder: its model's greedy replies per set."""
    rows = [json.loads(x) for x in (folder / "generations.jsonl").read_text().splitlines() if x.strip()]
    counts: dict[str, int] = {}
    for r in rows:
        if r["role"] == "model" and r["set"] == "harmful":
            counts[r["fp"]] = counts.get(r["fp"], 0) + 1
    fp = max(counts, key=counts.get)  # the folder's own model generated the harmful replies
    replies: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["role"] == "model" and r["fp"] == fp:
            replies.setdefault(r["set"], {})[r["id"]] = r["response"]
    return {"name": name, "set": {}, "device": "cpu", "train": {}, "eval": {"metrics": {}, "settings": {}},
            "replies": replies}


def main() -> None:
    from negalign.data.eval_sets import overrefusal_prompts, strongreject_prompts, xstest_style_prompts
    from negalign.evaluation.evaluate import round_robin
    from negalign.evaluation.stats import bootstrap_mean
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
    ap.add_argument("--eval-dir", action="append", default=[], help="NAME=DIR of a negalign evaluate output")
    ap.add_argument("--n-overrefusal", type=int, default=None, help="the first N edgy prompts (default all)")
    a = ap.parse_args()
    rows = [json.loads(x) for x in Path(a.results).read_text().splitlines() if x.strip()]
    rows += [eval_dir_row(name, Path(folder)) for name, folder in (spec.split("=", 1) for spec in a.eval_dir)]
    if a.only:
        rows = [r for r in rows if r["name"] in a.only]
    by_id = {p["id"]: p for p in strongreject_prompts()}
    edgy = round_robin(overrefusal_prompts() + xstest_style_prompts(), a.n_overrefusal)
    boot = dict(n_boot=1000, seed=0)
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
        over = [p for p in edgy if p["id"] in r["replies"]["overrefusal"]]
        over_refused = refusals(RefusalDetector(), [normalize_prompt(p["prompt"]) for p in over],
                                [r["replies"]["overrefusal"][p["id"]] for p in over])
        store = ScoreStore(Path(a.cache) / r["name"] / JUDGE_FILE)
        scored = cached_scorer(judge, store, print)
        section = judge_harm_section(judge, prompts, replies, refused, empty, boot, scored)
        metrics = {k: v for k, v in r["eval"]["metrics"].items() if k in TABLE}
        metrics.update({k: v.as_dict() for k, v in section.metrics.items()})
        metrics["refusal_rate"] = bootstrap_mean(refused, **boot).as_dict()
        metrics["overrefusal_rate"] = bootstrap_mean(over_refused, **boot).as_dict()
        table["models"][r["name"]] = {"set": r["set"], "device": r["device"], "train": r["train"],
                                      "n_judged": len(ids), "n_overrefusal": len(over),
                                      "settings": r["eval"]["settings"], "metrics": metrics}
        m = metrics
        ppl = m.get("benign_perplexity", {}).get("value")
        print(f"{r['name']}: refusal {m['refusal_rate']['value']:.3f} judged harmful "
              f"{m['judge_harmful_rate']['value']:.3f} over-refusal {m['overrefusal_rate']['value']:.3f} "
              f"ppl {ppl}", flush=True)
        out_path.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
