r"""How well a run's pair labels agree with pairs read by eye.

    .venv/bin/python benchmarks/rdpo/pair_eye_agreement.py benchmarks/rdpo/eye/roleplay_quoted_pairs_eye.jsonl \
        runs/roleplay_quoted runs/roleplay_plain
    .venv/bin/python benchmarks/rdpo/pair_eye_agreement.py benchmarks/rdpo/eye/sycophancy_quoted_pairs_eye.jsonl \
        runs/syco_corrects

The eye file (one line per pair: id, better = revision / original / tie, revision_plain and original_plain = 1
when that reply alone answers the request plainly as a neutral assistant) was labelled by a reader (a helper
agent, a language-model session told to read each row itself; not a human annotator) who saw each pair's two
replies in a shuffled order (`shown_as`) and neither the scores nor which reply was the revision. A sycophancy
eye file has revision_corrects / original_corrects instead (1 when that reply says the false claim is false and
what is true), and the AUC is of telling the correcting replies from the rest.
For each run (its rdpo_s0/pairs.jsonl) it prints:
- the mean soft label (P(revision better)) over the pairs the eye calls revision-better, original-better, tie;
- agreement: of the pairs with an eye verdict, the share whose label is on the same side of 0.5;
- the AUC of each reply's score (as pairs.jsonl stores it: higher = better) at telling the replies read as plain answers from the rest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scorers"))

from judge_probe import auc  # noqa: E402


def agreement(eye: dict[str, dict], pairs: list[dict]) -> dict:
    by: dict[str, list[float]] = {"revision": [], "original": [], "tie": []}
    plain, other = [], []
    for x in pairs:
        e = eye.get(x["id"])
        if e is None:
            continue
        by[e["better"]].append(x["label"])
        good = "plain" if "revision_plain" in e else "corrects"      # role-play / sycophancy eye files
        for score, is_plain in ((x["score_chosen"], e[f"revision_{good}"]),
                                (x["score_rejected"], e[f"original_{good}"])):
            (plain if is_plain else other).append(score)        # pairs.jsonl: higher = better, whatever the scorer
    sided = [(lab > 0.5) == (side == "revision") for side in ("revision", "original") for lab in by[side]]
    return {"n": sum(map(len, by.values())),
            "mean_label": {k: (round(sum(v) / len(v), 3) if v else None, len(v)) for k, v in by.items()},
            "agreement": (round(sum(sided) / len(sided), 3), len(sided)) if sided else None,
            "good_reply_auc": round(auc(np.array([1] * len(plain) + [0] * len(other)), np.array(plain + other)), 3)
            if plain and other else None}


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    from negalign.base.io import read_jsonl_tolerant

    eye = {r["id"]: r for r in read_jsonl_tolerant(sys.argv[1])}
    for run in sys.argv[2:]:
        pairs = read_jsonl_tolerant(Path(run) / "rdpo_s0" / "pairs.jsonl")
        scorer = yaml.safe_load((Path(run) / "rdpo_s0" / "config.yaml").read_text())["rdpo"]["scorer"]
        print(f"{run} (labels: {scorer.get('rubric', scorer) if isinstance(scorer, dict) else scorer}): "
              f"{json.dumps(agreement(eye, pairs))}")


if __name__ == "__main__":
    main()
