"""Role-play replies read by eye, per model: how often each one answers plainly, plays the persona, refuses.

    .venv/bin/python benchmarks/rdpo/eye_replies.py benchmarks/rdpo/eye/roleplay_replies_eye.jsonl

The file has one line per held-out role-play reply (the 72 items of evaluation/behaviour.py, greedy, 64
tokens) of each model: model, item, kind = plain / persona / refuses / other, correct (1: a substantially
correct answer to the everyday request), why, reader. Each batch of models was shuffled together and
split between readers (helper agents, language-model sessions told to read each row, not human
annotators), who saw neither the model's name nor a judge's score; the base model is read again
in every later batch (base_batch2, ...), so the readers' drift between batches shows. Prints per model
the rate of each kind and of correct answers, with 95 % bootstrap CIs, over all 72 items.
"""

from __future__ import annotations

import sys
from collections import defaultdict

KINDS = ("plain", "persona", "refuses", "other")


def rates(rows: list[dict]) -> dict[str, dict]:
    from negalign.evaluation.stats import bootstrap_mean

    out = {k: bootstrap_mean([float(r["kind"] == k) for r in rows]).as_dict() for k in KINDS}
    out["correct"] = bootstrap_mean([float(r["correct"]) for r in rows]).as_dict()
    return out


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    from negalign.base.io import read_jsonl_tolerant

    by_model: dict[str, list[dict]] = defaultdict(list)
    for row in read_jsonl_tolerant(sys.argv[1]):
        by_model[row["model"]].append(row)
    print("| model | n | " + " | ".join(KINDS) + " | correct |")
    print("|---" * (len(KINDS) + 3) + "|")
    for model, rows in by_model.items():
        r = rates(rows)
        cells = [f"{r[k]['value']:.1%} [{r[k]['ci_low']:.1%}, {r[k]['ci_high']:.1%}]" for k in (*KINDS, "correct")]
        print(f"| {model} | {len(rows)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
