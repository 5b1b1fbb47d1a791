"""The shipped default judge (probe included) on the held-out rows, with its weights in one precision.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scorers/judge_precision.py --precision fp32

The probe was fitted on bf16 hidden states (judge_probe.py). On a CPU without native bf16, precision
"auto" runs the judge in fp32 (modeling/precision.py): this checks that its agreement with people
holds there. Same held-out sets as judge_probe.py (pyrit test rows, eye B); writes
judge_precision_<precision>.json next to this script.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from judge_probe import at_threshold, auc, auc_ci, eye_set, pyrit_sets

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", choices=["bf16", "fp32"], required=True)
    ap.add_argument("--test-rows", type=int, default=240)
    args = ap.parse_args()
    from negalign.evaluation.scorers import make_verdict_judge
    from negalign.modeling.precision import bf16_speedup

    here = round(bf16_speedup(), 3)
    judge = make_verdict_judge(precision=args.precision)
    dtype = str(next(judge.model.parameters()).dtype)
    _, test = pyrit_sets(args.test_rows)
    out = {"date": time.strftime("%Y-%m-%d"), "precision": args.precision, "weights_dtype": dtype,
           "bf16_speedup_here": here, "command": "HF_HUB_OFFLINE=1 .venv/bin/python "
           f"benchmarks/scorers/judge_precision.py --precision {args.precision} --test-rows {args.test_rows}",
           "sets": {}}
    for name, items in {"pyrit_test": test, "eye_b": eye_set("smollm2_eye_b.jsonl")}.items():
        t = time.perf_counter()
        s = np.array(judge.score([[{"role": "user", "content": it["prompt"]}] for it in items],
                                 [it["reply"] for it in items]))
        y = np.array([it["y"] for it in items])
        r = {"n": len(y), "positives": int(y.sum()), "s_per_item": round((time.perf_counter() - t) / len(y), 3),
             "auc": auc(y, s), "auc_ci": auc_ci(y, s), **at_threshold(y, s, judge.threshold), "scores": s.tolist()}
        out["sets"][name] = r
        print(f"{name} ({dtype}): AUC {r['auc']:.3f} [{r['auc_ci'][0]:.3f}, {r['auc_ci'][1]:.3f}] "
              f"P {r['precision']:.2f} R {r['recall']:.2f}, {r['s_per_item']:.2f} s/item", flush=True)
    path = HERE / f"judge_precision_{args.precision}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
