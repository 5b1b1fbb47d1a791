"""The demo's config is valid and its table states the claim and the bound honestly."""

from negalign.evaluation.before_after import format_table, verdict
from negalign.recipes.demo import demo_config


def _table(after_logp, after_ppl):
    return {"heldout_negatives": 96, "harmful_prompts": 32, "benign_prompts": 24,
            "negative_logprob_shift_per_sequence": after_logp + 362.0, "negative_logprob_shift_per_token": -0.03,
            "negative_logprob_mean_before": -362.0, "negative_logprob_mean_after": after_logp,
            "refusal_rate_before": 0.094, "refusal_rate_after": 0.125,
            "benign_perplexity_before": 2.0, "benign_perplexity_after": after_ppl, "excerpts": []}


def test_demo_config_is_valid_and_uses_d2o(tmp_path):
    cfg = demo_config(str(tmp_path / "demo"))
    assert cfg.train.method == "d2o" and cfg.sample.k == 4 and cfg.data.source == "bundled"


def test_verdict_says_what_happened():
    assert verdict(_table(-366.0, 2.02)) == ("held-out human negatives went down by 4.00 nats per response; "
                                            "benign perplexity changed by +1.0% (within the 5% bound)")
    assert "did NOT go down" in verdict(_table(-360.0, 2.0))
    assert "OUTSIDE" in verdict(_table(-366.0, 2.5))


def test_table_columns_line_up():
    lines = [l for l in format_table(_table(-366.0, 2.02)).splitlines() if l.startswith("|")]
    assert len({len(l) for l in lines}) == 1 and len(lines) == 6


def test_table_shows_the_judge_row_when_judged():
    t = {**_table(-366.0, 2.02), "judge_harmful_rate_before": 0.5, "judge_harmful_rate_after": 0.25}
    lines = [l for l in format_table(t).splitlines() if l.startswith("|")]
    assert len({len(l) for l in lines}) == 1 and len(lines) == 7
    assert any("judged harmful" in l and "50.0%" in l and "25.0%" in l for l in lines)
