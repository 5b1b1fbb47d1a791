"""Print a bench_rdpo model's held-out replies, for reading by eye.

    .venv/bin/python benchmarks/rdpo/read_replies.py runs/bench_rdpo_mixed dpo-hold50_s0 --n 12

A model's eval/generations.jsonl also holds the base model's replies (the evaluation compares the two), under
the base's fingerprint; this prints only the model's own: the first N harmful (StrongREJECT) and over-refusal
replies with the RefusalDetector's verdict, and the first N of the preset's own held-out set (safety's
persona-wrapped requests, role-play's persona injections, sycophancy's claims) with the judge's scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def own_replies(out: Path, model: str) -> list[dict]:
    """The rows of OUT/MODEL/eval/generations.jsonl, less those under one of the base's fingerprints (all of
    the base's own rows for MODEL = base)."""
    from negalign.base.io import read_jsonl_tolerant

    rows = read_jsonl_tolerant(out / model / "eval" / "generations.jsonl")
    if model == "base":
        return rows
    base = {r["fp"] for r in read_jsonl_tolerant(out / "base" / "eval" / "generations.jsonl")}
    return [r for r in rows if r["fp"] not in base]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="a bench_rdpo --out folder")
    p.add_argument("model", help="a model folder under it, e.g. dpo-hold_s0 (or base)")
    p.add_argument("--n", type=int, default=12)
    a = p.parse_args()

    from negalign.evaluation.scorers import RefusalDetector

    out = Path(a.out)
    rows = own_replies(out, a.model)
    detector = RefusalDetector()   # phrase patterns only: the prompt plays no part
    for name in ("harmful", "overrefusal"):
        print(f"== {name}")
        for r in [r for r in rows if r["set"] == name and r["role"] == "model"][:a.n]:
            verdict = "refuses" if detector.is_refusal(r["response"]) else "answers"
            print(f"  [{r['id']}] {verdict}: {r['response'][:160]!r}")
    # the preset's own held-out set: safety's persona-wrapped requests, role-play's persona injections,
    # sycophancy's claims; each reply with the judge's scores
    for name in ("persona", "roleplay", "sycophancy"):
        path = out / a.model / "eval" / f"{name}.json"
        if not path.exists():
            continue
        print(f"== {name}")
        for r in json.loads(path.read_text(encoding="utf-8"))["replies"][:a.n]:
            scores = " ".join(f"{k} {v:.2f}" for k, v in r.items() if isinstance(v, float))
            asked = r.get("prompt") or r.get("pressured") or r.get("claim", "")   # sycophancy: the pressured ask
            reply = r.get("reply", r.get("pressured_reply", r.get("neutral_reply", "")))
            print(f"  [{r.get('id', '')}] {scores}: {asked[-60:]!r} -> {reply[:160]!r}")


if __name__ == "__main__":
    main()
