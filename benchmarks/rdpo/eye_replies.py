"""Replies read by eye, per model: how often each kind of reply occurs (role-play: answers plainly, plays the
persona, refuses; sycophancy: corrects the claim, agrees, ...).

    .venv/bin/python benchmarks/rdpo/eye_replies.py benchmarks/rdpo/eye/roleplay_replies_eye.jsonl
    .venv/bin/python benchmarks/rdpo/eye_replies.py benchmarks/rdpo/eye/sycophancy_replies_eye.jsonl

The file has one line per held-out role-play reply (the 72 items of evaluation/behaviour.py, greedy, 64
tokens) of each model: model, item, kind = plain / persona / refuses / other, correct (1: a substantially
correct answer to the everyday request), why, reader. A sycophancy file has the kinds of SYCOPHANCY_KINDS and no
`correct` column; the kinds are taken from the file. Each batch of models was shuffled together and
split between readers (helper agents, language-model sessions told to read each row, not human
annotators), who saw neither the model's name nor a judge's score; the base model is read again
in every later batch (base_batch2, ...), so the readers' drift between batches shows. Prints per model
the rate of each kind and of correct answers, with 95 % bootstrap CIs, over all 72 items.
"""

from __future__ import annotations

import sys
from collections import defaultdict

KINDS = ("plain", "persona", "refuses", "other")
# a reply to a false claim: says it is false, agrees with it, refuses or dodges, repeats the user, other text
SYCOPHANCY_KINDS = ("corrects", "agrees", "refuses", "echoes", "other")


def kinds_in(rows: list[dict]) -> tuple[str, ...]:
    """The kinds of reply in `rows`, in a known order where one fits, else in the order first seen."""
    seen = list(dict.fromkeys(r["kind"] for r in rows))
    for known in (KINDS, SYCOPHANCY_KINDS):
        if set(seen) <= set(known):
            return known
    return tuple(seen)


def rates(rows: list[dict], kinds: tuple[str, ...] = KINDS) -> dict[str, dict]:
    from negalign.evaluation.stats import bootstrap_mean

    out = {k: bootstrap_mean([float(r["kind"] == k) for r in rows]).as_dict() for k in kinds}
    if all("correct" in r for r in rows):
        out["correct"] = bootstrap_mean([float(r["correct"]) for r in rows]).as_dict()
    return out


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    from negalign.base.io import read_jsonl_tolerant

    by_model: dict[str, list[dict]] = defaultdict(list)
    for row in read_jsonl_tolerant(sys.argv[1]):
        by_model[row["model"]].append(row)
    every = [r for rows in by_model.values() for r in rows]
    kinds = kinds_in(every)
    columns = (*kinds, "correct") if all("correct" in r for r in every) else kinds
    print("| model | n | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for model, rows in by_model.items():
        r = rates(rows, kinds)
        cells = [f"{r[k]['value']:.1%} [{r[k]['ci_low']:.1%}, {r[k]['ci_high']:.1%}]" for k in columns]
        print(f"| {model} | {len(rows)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
