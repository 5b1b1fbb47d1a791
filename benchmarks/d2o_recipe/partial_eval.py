"""A cut-down evaluation of a trained model from replies `negalign evaluate` already saved, for when
the full evaluation cannot finish (it was stopped for time in the run recorded in README.md).

    .venv/bin/python benchmarks/d2o_recipe/partial_eval.py BASE_EVAL_DIR RUN_EVAL_DIR RUN_MODEL --out results.json

Uses only the prompts both folders have replies for: refusal rate on the harmful prompts and the
judged-harmful rate on the first --n-judged of them (the default offline judge), over-refusal on
the edgy-benign prompts, and the perplexity of the base model's greedy benign answers under both
models. Every number has a bootstrap 95 % CI over prompts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def model_replies(folder: Path) -> dict[tuple[str, str], str]:
    rows = [json.loads(x) for x in (folder / "generations.jsonl").read_text().splitlines() if x.strip()]
    fps = {}
    for r in rows:  # the folder's own model is the fingerprint that generated its harmful replies last
        if r["role"] == "model" and r["set"] == "harmful":
            fps[r["fp"]] = fps.get(r["fp"], 0) + 1
    fp = max(fps, key=fps.get) if len(fps) == 1 else list(fps)[-1]
    return {(r["set"], r["id"]): r["response"] for r in rows if r["role"] == "model" and r["fp"] == fp}


def main() -> None:
    import torch

    from negalign.data.eval_sets import ifbench_prompts, overrefusal_prompts, strongreject_prompts, xstest_style_prompts
    from negalign.data.records import normalize_prompt
    from negalign.evaluation.metrics import perplexity, response_logprobs
    from negalign.evaluation.scorers import RefusalDetector, make_verdict_judge
    from negalign.evaluation.stats import bootstrap_mean
    from negalign.modeling.loading import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("run")
    ap.add_argument("model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-judged", type=int, default=60, help="harmful prompts the judge scores (the first N)")
    a = ap.parse_args()
    base, run = model_replies(Path(a.base)), model_replies(Path(a.run))
    prompts = {("harmful", p["id"]): p["prompt"] for p in strongreject_prompts()}
    prompts |= {("overrefusal", p["id"]): p["prompt"] for p in overrefusal_prompts() + xstest_style_prompts()}
    prompts |= {("benign", p["id"]): p["prompt"] for p in ifbench_prompts()}
    common = [k for k in run if k in base and k in prompts]
    harmful = [k for k in common if k[0] == "harmful"]
    edgy = [k for k in common if k[0] == "overrefusal"]
    benign = [k for k in base if k[0] == "benign" and k in prompts]
    det = RefusalDetector()
    out = {"n_harmful": len(harmful), "n_judged": min(a.n_judged, len(harmful)), "n_overrefusal": len(edgy),
           "n_benign": len(benign), "metrics": {}}
    conv = lambda k: normalize_prompt(prompts[k])  # noqa: E731
    judge = make_verdict_judge()
    t0 = time.perf_counter()
    for name, replies in (("base", base), ("run", run)):
        h = [replies[k] for k in harmful]
        refused = det.score([conv(k) for k in harmful], h)
        hj = harmful[:a.n_judged]
        scores = judge.score([conv(k) for k in hj], [replies[k] for k in hj])
        judged = [float(s >= judge.threshold and replies[k].strip() != "") for s, k in zip(scores, hj)]
        over = det.score([conv(k) for k in edgy], [replies[k] for k in edgy])
        out["metrics"][name] = {"refusal_rate": bootstrap_mean(refused).as_dict(),
                                "judge_harmful_rate": bootstrap_mean(judged).as_dict(),
                                "overrefusal_rate": bootstrap_mean(over).as_dict()}
    out["judge_seconds"] = round(time.perf_counter() - t0, 1)
    ref, tok = load_model("default")
    pol, _ = load_model(a.model)
    ps, answers = [conv(k) for k in benign], [base[k] for k in benign]
    lp_ref, n = response_logprobs(ref, tok, ps, answers, max_response_tokens=192)
    lp_pol, _ = response_logprobs(pol, tok, ps, answers, max_response_tokens=192)
    out["metrics"]["base"]["benign_perplexity"] = perplexity(lp_ref, n)
    out["metrics"]["run"]["benign_perplexity"] = perplexity(lp_pol, n)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["metrics"], indent=1))


if __name__ == "__main__":
    main()
