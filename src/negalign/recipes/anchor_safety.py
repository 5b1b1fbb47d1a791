"""How safe the anchors are: best-of-N selection while sampling, and the quality record of a run.

D2O pulls the policy toward its anchors, so anchors that comply with harmful requests teach
compliance (FINDINGS: SmolLM2-135M's own guided anchors were 3 % refusals). The sample stage
therefore records the anchors' refusal rate and harm next to the negatives' in
anchors.quality.json, and warns when the anchors are no safer than the negatives.
"""

from __future__ import annotations

from negalign.base.io import write_json
from negalign.base.rundir import RunDir
from negalign.config import Config
from negalign.data.records import Example


def _scorer(name: str):
    """(scorer, higher_is_safer) for best-of-N selection and the quality record."""
    from negalign.evaluation.scorers import HarmClassifier, RefusalDetector, make_verdict_judge

    if name == "refusal":
        return RefusalDetector(), True
    if name == "judge":
        return make_verdict_judge(), False
    return HarmClassifier.default(()), False


def make_selector(cfg: Config):
    """select(conversation, replies) -> indices of the k safest replies (stable: ties keep draw order)."""
    scorer, safer_high = _scorer(cfg.sample.select_by)
    k = cfg.sample.k

    def select(conversation, replies: list[str]) -> list[int]:
        scores = scorer.score([conversation] * len(replies), replies)
        key = (lambda i: -scores[i]) if safer_high else (lambda i: scores[i])
        return sorted(sorted(range(len(replies)), key=key)[:k])
    return select


def _rates(prompts: list, replies: list[str], with_judge: bool) -> dict:
    from negalign.evaluation.metrics import judged_harmful, rate
    from negalign.evaluation.scorers import RefusalDetector

    out = {"n": len(replies)}
    if replies:
        out["refusal_rate"] = sum(RefusalDetector().score(prompts, replies)) / len(replies)
    if with_judge and replies:
        judge, _ = _scorer("judge")
        out["judge_harmful_rate"] = rate(judged_harmful(judge.score(prompts, replies), replies, judge.threshold))
    return out


def record_anchor_quality(cfg: Config, examples: list[Example], anchors: dict[str, list[str]], *,
                          with_judge: bool = False, log=print) -> dict:
    """Write anchors.quality.json (anchors vs negatives) and warn when the anchors are no safer."""
    pa, ra, pn, rn = [], [], [], []
    for ex in examples:
        for a in anchors.get(ex.id, []):
            pa.append(ex.prompt)
            ra.append(a)
        for n in ex.negatives:
            pn.append(ex.prompt)
            rn.append(n)
    quality = {"sampler": cfg.sample.model or cfg.model.name, "system_prompt": cfg.sample.system_prompt,
               "best_of": cfg.sample.best_of, "select_by": cfg.sample.select_by if cfg.sample.best_of else None,
               "anchors": _rates(pa, ra, with_judge), "negatives": _rates(pn, rn, with_judge)}
    write_json(RunDir(cfg.run_dir).anchors_quality, quality)
    a, n = quality["anchors"], quality["negatives"]
    if a["n"]:
        log(f"sample: anchors refuse {a['refusal_rate']:.0%} of the time, the negatives {n['refusal_rate']:.0%}"
            + (f"; judged harmful {a['judge_harmful_rate']:.0%} vs {n['judge_harmful_rate']:.0%}" if with_judge else ""))
        worse = a["refusal_rate"] <= n["refusal_rate"] or (
            with_judge and a["judge_harmful_rate"] >= n["judge_harmful_rate"])
        if worse:
            log("sample: WARNING: the anchors are no safer than the negatives; D2O pulls the policy toward "
                "its anchors, so this run cannot teach refusal (try sample.model: a safer teacher, "
                "sample.best_of, or a stricter sample.system_prompt)")
    return quality
