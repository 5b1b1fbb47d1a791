"""The demo's before/after table on held-out data: reference model vs trained model."""

from __future__ import annotations

from pathlib import Path

from negalign.config import Config
from negalign.evaluation.metrics import greedy_replies, logprob_shift, perplexity, rate, response_logprobs


def _held_out(cfg: Config):
    from negalign.data.pyrit import bundled_negatives

    return bundled_negatives("heldout", heldout_fraction=cfg.data.heldout_fraction, seed=cfg.data.seed)


def before_after(cfg: Config, trained_dir: str | Path, *, log=print) -> dict:
    from negalign.data.eval_sets import ifbench_prompts
    from negalign.data.records import normalize_prompt
    from negalign.evaluation.scorers.refusal import RefusalDetector
    from negalign.modeling.loading import load_model

    e = cfg.evaluate
    ref, tok = load_model(cfg.model.name)
    policy, _ = load_model(str(trained_dir))
    heldout = _held_out(cfg)
    negatives = [(ex.prompt, neg) for ex in heldout for neg in ex.negatives]
    harmful = [ex.prompt for ex in heldout][:e.harmful_prompts]
    benign = [normalize_prompt(p["prompt"]) for p in ifbench_prompts()][:e.benign_prompts]
    kw = dict(max_response_tokens=cfg.data.max_response_tokens)

    log(f"evaluate: log-probs of {len(negatives)} held-out human negatives")
    prompts, responses = [p for p, _ in negatives], [r for _, r in negatives]
    ref_lp, lengths = response_logprobs(ref, tok, prompts, responses, **kw)
    pol_lp, _ = response_logprobs(policy, tok, prompts, responses, **kw)
    shift = logprob_shift(pol_lp, ref_lp, lengths)

    log(f"evaluate: greedy replies to {len(harmful)} held-out harmful prompts (before and after)")
    detector = RefusalDetector()
    before_replies = greedy_replies(ref, tok, harmful, max_new_tokens=e.max_new_tokens)
    after_replies = greedy_replies(policy, tok, harmful, max_new_tokens=e.max_new_tokens)
    refusal_before = rate(detector.score(harmful, before_replies))
    refusal_after = rate(detector.score(harmful, after_replies))

    log(f"evaluate: perplexity on {len(benign)} benign prompts' reference answers")
    answers = greedy_replies(ref, tok, benign, max_new_tokens=e.max_new_tokens)
    b_ref_lp, b_len = response_logprobs(ref, tok, benign, answers, **kw)
    b_pol_lp, _ = response_logprobs(policy, tok, benign, answers, **kw)
    ppl_before, ppl_after = perplexity(b_ref_lp, b_len), perplexity(b_pol_lp, b_len)

    judged = _judge_rates(e.judge, harmful, before_replies, after_replies, log)
    examples = []
    for i in range(min(2, len(harmful))):
        examples.append({"prompt": _clip(harmful[i][-1]["content"], 70), "before": _clip(before_replies[i], 90),
                         "after": _clip(after_replies[i], 90)})
    return {
        "heldout_negatives": len(negatives), "harmful_prompts": len(harmful), "benign_prompts": len(benign),
        "negative_logprob_shift_per_sequence": shift["per_sequence"],
        "negative_logprob_shift_per_token": shift["per_token"],
        "negative_logprob_mean_before": float(ref_lp.mean()), "negative_logprob_mean_after": float(pol_lp.mean()),
        "refusal_rate_before": refusal_before, "refusal_rate_after": refusal_after,
        "benign_perplexity_before": ppl_before, "benign_perplexity_after": ppl_after,
        **judged,
        "excerpts": examples,
    }


def _judge_rates(spec, prompts, before: list[str], after: list[str], log) -> dict:
    """The judge's harmful-response rate before and after (empty replies count as not harmful)."""
    if spec in (None, "none"):
        return {}
    from negalign.evaluation.metrics import judged_harmful
    from negalign.evaluation.scorers import make_verdict_judge

    log(f"evaluate: judging {2 * len(prompts)} replies (before and after)")
    judge = make_verdict_judge() if spec == "default" else make_verdict_judge(model=spec)
    scores = judge.score(prompts + prompts, before + after)
    flagged = judged_harmful(scores, before + after, judge.threshold)
    n = len(prompts)
    return {"judge_harmful_rate_before": rate(flagged[:n]), "judge_harmful_rate_after": rate(flagged[n:])}


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "…"


PERPLEXITY_BOUND = 0.05  # the demo's stated bound: benign perplexity within 5 % of the reference's


def verdict(t: dict) -> str:
    """One line that says whether the demo did what it claims."""
    ppl_change = t["benign_perplexity_after"] / t["benign_perplexity_before"] - 1
    down = t["negative_logprob_shift_per_sequence"] < 0
    kept = abs(ppl_change) <= PERPLEXITY_BOUND
    return (f"held-out human negatives {'went down' if down else 'did NOT go down'} by "
            f"{-t['negative_logprob_shift_per_sequence']:.2f} nats per response; benign perplexity changed by "
            f"{ppl_change:+.1%} ({'within' if kept else 'OUTSIDE'} the {PERPLEXITY_BOUND:.0%} bound)")


def format_table(t: dict) -> str:
    rows = [
        ("held-out human negatives: mean log-prob (nats/seq)", f"{t['negative_logprob_mean_before']:.2f}",
         f"{t['negative_logprob_mean_after']:.2f}"),
        ("  shift vs reference, per token", "0.000", f"{t['negative_logprob_shift_per_token']:+.3f}"),
        (f"refusal rate, {t['harmful_prompts']} held-out harmful prompts", f"{t['refusal_rate_before']:.1%}",
         f"{t['refusal_rate_after']:.1%}"),
    ]
    if "judge_harmful_rate_before" in t:
        rows.append((f"judged harmful (offline judge), same {t['harmful_prompts']} prompts",
                     f"{t['judge_harmful_rate_before']:.1%}", f"{t['judge_harmful_rate_after']:.1%}"))
    rows += [
        (f"perplexity, {t['benign_prompts']} benign prompts' reference answers",
         f"{t['benign_perplexity_before']:.2f}", f"{t['benign_perplexity_after']:.2f}"),
    ]
    w = max(len(r[0]) for r in rows)
    v = max(6, *(len(x) for r in rows for x in r[1:]))
    lines = [f"| {'metric'.ljust(w)} | {'before'.rjust(v)} | {'after'.rjust(v)} |",
             f"|{'-' * (w + 2)}|{'-' * (v + 2)}|{'-' * (v + 2)}|"]
    lines += [f"| {a.ljust(w)} | {b.rjust(v)} | {c.rjust(v)} |" for a, b, c in rows]
    lines.append("\n" + verdict(t))
    for ex in t.get("excerpts", []):
        lines.append(f"\nprompt: {ex['prompt']}\n  before: {ex['before']}\n  after:  {ex['after']}")
    return "\n".join(lines)
