"""What the pairs of a bench_rdpo run teach about refusing, per prompt set.

    .venv/bin/python benchmarks/rdpo/pair_refusals.py runs/bench_rdpo_mixed

For each set (personas, plain, ...) of OUT/rdpo_s0/pairs.jsonl: how many pairs, how many chosen (revision)
and rejected (original) answers the phrase-pattern RefusalDetector calls refusals, how many pairs go from a
non-refusal to a refusal (what the safety preset means to teach) and from a refusal to a non-refusal (the
opposite), and how many labels are below 0.5 (the scorer preferred the original). Then, over all pairs, the mean
label by which side refuses: a scorer that prefers whichever side refuses shows there.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="a bench_rdpo --out folder")
    a = p.parse_args()

    from negalign.base.io import read_jsonl_tolerant
    from negalign.evaluation.scorers import RefusalDetector

    out = Path(a.out)
    sets = {r["id"]: r["meta"]["set"] for r in read_jsonl_tolerant(out / "critique.jsonl")}
    by_set: dict[str, list[dict]] = defaultdict(list)
    for pair in read_jsonl_tolerant(out / "rdpo_s0" / "pairs.jsonl"):
        by_set[sets[pair["id"]]].append(pair)
    detector = RefusalDetector()
    groups: dict[str, list[float]] = defaultdict(list)
    print("set        pairs  chosen-refuses  rejected-refuses  to-refusal  from-refusal  labels<0.5")
    for name, pairs in by_set.items():
        prompts = [x["prompt"] for x in pairs]
        chosen = [s > 0.5 for s in detector.score(prompts, [x["chosen"] for x in pairs])]
        rejected = [s > 0.5 for s in detector.score(prompts, [x["rejected"] for x in pairs])]
        to_refusal = sum(c and not r for c, r in zip(chosen, rejected))
        from_refusal = sum(r and not c for c, r in zip(chosen, rejected))
        low = sum(x["label"] < 0.5 for x in pairs)
        print(f"{name:<10} {len(pairs):>5}  {sum(chosen):>14}  {sum(rejected):>16}  {to_refusal:>10}  "
              f"{from_refusal:>12}  {low:>10}")
        for c, r, x in zip(chosen, rejected, pairs):
            groups[f"revision {'refuses' if c else 'answers'}, original {'refuses' if r else 'answers'}"].append(x["label"])
    print("\nmean label (> 0.5 prefers the revision)")
    for group, labels in sorted(groups.items()):
        print(f"  {group}: {sum(labels) / len(labels):.2f} ({len(labels)} pairs)")


if __name__ == "__main__":
    main()
