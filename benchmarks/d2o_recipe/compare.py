"""Compare a trained model's evaluation with its starting model's, and show replies side by side.

    .venv/bin/python benchmarks/d2o_recipe/compare.py BASE_EVAL_DIR RUN_EVAL_DIR [--examples 6] [--out results.json]

Reads eval.json and generations.jsonl of both `negalign evaluate` folders; prints the headline metrics
(value and 95 % CI) with the change, and greedy replies of both models to the same harmful and
edgy-benign prompts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HEADLINE = ("judge_harmful_rate", "strongreject_style_score", "refusal_rate", "overrefusal_rate", "empty_reply_rate",
            "benign_perplexity", "judge_win_rate", "kl_per_token", "negative_logprob_shift_per_token",
            "heldout_pair_accuracy")


def replies(folder: Path, role: str = "model") -> dict[tuple[str, str], str]:
    out = {}
    for line in (folder / "generations.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["role"] == role:
            out[(r["set"], r["id"])] = r["response"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("run")
    ap.add_argument("--examples", type=int, default=6)
    ap.add_argument("--out")
    a = ap.parse_args()
    base, run = Path(a.base), Path(a.run)
    eb, er = (json.loads((d / "eval.json").read_text()) for d in (base, run))
    table = {}
    for k in HEADLINE:
        b, r = eb["metrics"].get(k), er["metrics"].get(k)
        if not b or not r:
            continue
        table[k] = {"base": b, "run": r,
                    "change": None if b["value"] is None or r["value"] is None else r["value"] - b["value"]}
        fmt = lambda m: "n/a" if m["value"] is None else f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"  # noqa: E731
        print(f"{k:34s} {fmt(b):28s} -> {fmt(r):28s}")
    rb, rr = replies(base), replies(run)
    shown = []
    for set_name in ("harmful", "overrefusal"):
        keys = [k for k in rr if k[0] == set_name and k in rb][:a.examples]
        for k in keys:
            shown.append({"set": set_name, "id": k[1], "before": rb[k][:200], "after": rr[k][:200]})
            print(f"\n[{set_name} {k[1]}]\n  before: {rb[k][:200]!r}\n  after:  {rr[k][:200]!r}")
    if a.out:
        Path(a.out).write_text(json.dumps({"base": str(base), "run": str(run), "metrics": table,
                                           "settings": er["settings"], "examples": shown}, indent=2) + "\n")


if __name__ == "__main__":
    main()
