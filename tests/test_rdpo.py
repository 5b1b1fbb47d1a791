"""rDPO: scores -> soft labels -> filtered pairs -> DPO-family training, and the YAML entry point."""

from __future__ import annotations

import json
import math

import pytest
from negalign.base.errors import UserError
from negalign.cli.flags import set_overrides
from negalign.cli.rdpo import rdpo_keys, settings_from_args
from negalign.recipes.rdpo import (load_rdpo_config, make_pairs, pair_train_data, rdpo_settings_from_dict, run_rdpo,
                                   score_rows, scorer_spec, split_scorable, variant_labels, with_extra_pairs)


def _row(i, original="bad answer", revision="better answer", status="ok", reason=None):
    return {"id": f"p{i}", "prompt": [{"role": "user", "content": f"question {i}"}], "status": status,
            "reason": reason, "original": original, "critique": "c", "revision": revision, "meta": {}}


def test_soft_label_math():
    rows = [_row(i) for i in range(4)]
    s_o, s_r = [0.0, 0.5, 0.2, -1.0], [1.0, 0.5, 0.1, 2.0]
    for tau in (0.1, 1.0, 5.0):
        pairs, _, stats = make_pairs(rows, s_o, s_r, tau=tau)
        expect = [1 / (1 + math.exp(-(r - o) / tau)) for o, r in zip(s_o, s_r)]
        assert [p["label"] for p in pairs] == pytest.approx(expect, abs=1e-12)
        assert stats.kept == 4 and stats.label_mean == pytest.approx(sum(expect) / 4)
    # equal scores give 0.5 whatever tau; tiny tau hardens labels to 0/1
    hard, _, _ = make_pairs(rows, s_o, s_r, tau=1e-4)
    assert [round(p["label"], 6) for p in hard] == [1.0, 0.5, 0.0, 1.0]
    with pytest.raises(ValueError):
        make_pairs(rows, s_o, s_r, tau=0.0)


def test_filter_and_stats():
    rows = [_row(0), _row(1), _row(2), _row(3, revision="  BAD   answer"), _row(4, status="skipped",
                                                                            reason="empty_revision")]
    scorable, early, counts = split_scorable(rows)
    assert [r["id"] for r in scorable] == ["p0", "p1", "p2"]
    assert [d["reason"] for d in early] == ["identical"]  # same text up to case and spacing
    assert counts == {"ok": 4, "empty_revision": 1}
    s_o, s_r = [0.0, 0.3, 0.1], [0.2, 0.3, float("nan")]
    kept, dropped, stats = make_pairs(scorable, s_o, s_r, tau=1.0, filter_not_better=True)
    assert [p["id"] for p in kept] == ["p0"]
    assert {d["id"]: d["reason"] for d in dropped} == {"p1": "not_better", "p2": "score_nan"}
    assert stats.dropped == {"not_better": 1, "score_nan": 1} and stats.revision_better == 1
    kept, _, stats = make_pairs(scorable, s_o, s_r, tau=1.0, filter_not_better=True, min_margin=0.5)
    assert kept == [] and stats.dropped == {"not_better": 2, "score_nan": 1}
    kept, _, stats = make_pairs(scorable, s_o, s_r, tau=1.0)  # no filter: a worse revision stays, p <= 0.5
    assert [p["id"] for p in kept] == ["p0", "p1"] and kept[1]["label"] == 0.5
    assert "2/3 pairs kept" in stats.summary() and "score_nan" in stats.summary()


def test_refusing_revisions_are_dropped_before_scoring(tmp_path):
    """rdpo.drop_refusing_revisions: a revision that refuses is no better answer for a principle that asks for
    an answer; it is dropped unscored, counted by reason, and the setting is part of the pairs' cache key."""
    from negalign.recipes.rdpo import stage_pairs

    rows = [_row(0, revision="Here is how to boil an egg: six minutes in boiling water."),
            _row(1, revision="I'm sorry, but I can't help with that."),
            _row(2, revision="bad answer")]
    scorable, early, _ = split_scorable(rows, drop_refusing=True)
    assert [r["id"] for r in scorable] == ["p0"]
    assert {d["id"]: d["reason"] for d in early} == {"p1": "revision_refuses", "p2": "identical"}
    assert [r["id"] for r in split_scorable(rows)[0]] == ["p0", "p1"]  # off by default

    seen = Recording()
    settings = rdpo_settings_from_dict({"run_dir": str(tmp_path), "rdpo": {"drop_refusing_revisions": True}})
    pairs, stats = stage_pairs(settings, rows, scorer=seen, log=lambda *_: None)
    assert [p["id"] for p in pairs] == ["p0"] and len(seen.prompts) == 2  # p0's original and revision only
    assert stats.dropped == {"revision_refuses": 1, "identical": 1}
    dropped = [json.loads(line) for line in (tmp_path / "pairs.dropped.jsonl").read_text().splitlines()]
    assert [d["reason"] for d in dropped] == ["revision_refuses", "identical"]
    settings.rdpo.drop_refusing_revisions = False  # another key: the pairs are made again, p1 scored now
    pairs, stats = stage_pairs(settings, rows, scorer=seen, log=lambda *_: None)
    assert [p["id"] for p in pairs] == ["p0", "p1"] and stats.dropped == {"identical": 1}


class HarmLike:
    """A scorer that reports P(harm) from the answer's text (lower = better)."""

    def score(self, prompts, responses):
        return [0.9 if "bad" in r else 0.1 for r in responses]


def test_scores_are_oriented_higher_is_better():
    rows = [_row(0)]
    s_o, s_r = score_rows(rows, HarmLike(), higher_is_better=False)
    assert s_o == [-0.9] and s_r == [-0.1]
    pairs, _, _ = make_pairs(rows, s_o, s_r, tau=0.1)
    assert pairs[0]["label"] > 0.99  # the less harmful revision is preferred
    base = {"critique": {"preset": "safety"}}
    assert scorer_spec(rdpo_settings_from_dict(base)) == ("judge", False)
    assert scorer_spec(rdpo_settings_from_dict({**base, "rdpo": {"scorer": "harm_classifier"}})) == ("harm_classifier", False)
    assert scorer_spec(rdpo_settings_from_dict({**base, "rdpo": {"scorer": "reward_model:/m"}})) == ("reward_model:/m", True)
    assert scorer_spec(rdpo_settings_from_dict({**base, "rdpo": {"scorer": {"type": "judge"}}}))[1] is False
    assert scorer_spec(rdpo_settings_from_dict({"critique": {"preset": "roleplay"}})) == (
        {"type": "judge", "rubric": "plain_answer", "probe": "none"}, False)
    assert scorer_spec(rdpo_settings_from_dict({"critique": {"preset": "sycophancy"}})) == (
        {"type": "judge", "rubric": "corrects_claim", "probe": "none"}, False)
    with pytest.raises(UserError, match="no default scorer"):
        scorer_spec(rdpo_settings_from_dict({"critique": {"preset": "my_presets/honesty.yaml"}}))


class Counting:
    """P(harm)-like scores from the text; counts its calls and can fail on a given one (a crash)."""

    def __init__(self, fail_on: int | None = None):
        self.calls, self.fail_on = [], fail_on

    def __repr__(self) -> str:  # what keys the saved scores: the same in a rerun
        return "Counting()"

    def score(self, prompts, responses):
        self.calls.append(len(responses))
        if len(self.calls) == self.fail_on:
            raise KeyboardInterrupt  # as a kill: nothing after it runs
        return [len(r) / 100 + (0.5 if "bad" in r else 0.0) for r in responses]


def test_pair_scoring_resumes_where_it_stopped(tmp_path):
    from negalign.recipes.rdpo import stage_pairs

    rows = [_row(i, original=f"bad answer {i}", revision=f"better answer number {i}") for i in range(5)]
    settings = rdpo_settings_from_dict({"run_dir": str(tmp_path / "a"), "rdpo": {"pairs_per_write": 2}})
    want, _ = stage_pairs(settings, rows, scorer=Counting(), log=lambda *_: None)

    settings = rdpo_settings_from_dict({"run_dir": str(tmp_path / "b"), "rdpo": {"pairs_per_write": 2}})
    with pytest.raises(KeyboardInterrupt):
        stage_pairs(settings, rows, scorer=Counting(fail_on=3), log=lambda *_: None)
    saved = (tmp_path / "b" / "pairs.scores.jsonl").read_text().splitlines()
    assert len(saved) == 4 and not (tmp_path / "b" / "pairs.jsonl").exists()
    again = Counting()
    got, stats = stage_pairs(settings, rows, scorer=again, log=lambda *_: None)
    assert again.calls == [2]  # only the last chunk (1 pair: original and revision) was left
    assert got == want and stats.kept == 5
    # another tau relabels the same scores: the scorer is not asked again
    relabel = Counting()
    settings.cfg.train.tau = 0.5
    pairs, _ = stage_pairs(settings, rows, scorer=relabel, log=lambda *_: None)
    assert relabel.calls == [] and [p["score_chosen"] for p in pairs] == [p["score_chosen"] for p in want]
    assert [p["label"] for p in pairs] != [p["label"] for p in want]


class Recording(Counting):
    """Counting that also keeps the prompts it was given."""

    def __init__(self):
        super().__init__()
        self.prompts = []

    def score(self, prompts, responses):
        self.prompts += prompts
        return super().score(prompts, responses)


def test_scorer_can_read_the_unwrapped_request(tmp_path):
    """rdpo.scorer_reads: request gives the scorer the preset's request (e.g. a claim alone), while the pair
    keeps the training message; a row without one is a clear error."""
    from negalign.recipes.rdpo import stage_pairs

    rows = [{**_row(i), "meta": {"request": f"claim {i}"}} for i in range(2)]
    seen = Recording()
    settings = rdpo_settings_from_dict({"run_dir": str(tmp_path / "a"), "rdpo": {"scorer_reads": "request"}})
    pairs, _ = stage_pairs(settings, rows, scorer=seen, log=lambda *_: None)
    assert seen.prompts == [[{"role": "user", "content": f"claim {i}"}] for i in (0, 1)] * 2
    assert [p["prompt"] for p in pairs] == [r["prompt"] for r in rows]
    settings = rdpo_settings_from_dict({"run_dir": str(tmp_path / "b"), "rdpo": {"scorer_reads": "request"}})
    with pytest.raises(UserError, match=r"'p0' has no meta.request"):
        stage_pairs(settings, [_row(0)], scorer=Recording(), log=lambda *_: None)
    with pytest.raises(UserError, match=r"field 'rdpo.scorer_reads': must be one of message, request"):
        rdpo_settings_from_dict({"rdpo": {"scorer_reads": "claim"}})


def test_variant_labels():
    pairs = [{"label": 0.7}, {"label": 0.2}]
    assert variant_labels(pairs, "rdpo").tolist() == pytest.approx([0.7, 0.2])
    assert variant_labels(pairs, "cdpo", 0.1).tolist() == pytest.approx([0.9, 0.9])
    assert variant_labels(pairs, "dpo") is None and variant_labels(pairs, "sft") is None


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("critique:\n  preset: safety\nrdpo:\n  varaint: dpo\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"c.yaml: field 'rdpo.varaint': unknown key"):
        load_rdpo_config(path)
    with pytest.raises(UserError, match="rdpo.variant"):
        load_rdpo_config(None, {"rdpo.variant": "ppo"})
    with pytest.raises(UserError, match="train.tau"):
        load_rdpo_config(None, {"train.tau": "-1"})
    with pytest.raises(UserError, match=r"field 'critique.precision': must be one of auto, bf16, fp32"):
        load_rdpo_config(None, {"critique.precision": "fp16"})
    # a teacher spec is checked when the config is read, not after the stages before the critique
    path.write_text("critique:\n  teacher: {backend: llamacpp, model: default, contxt: 64}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"c.yaml: field 'critique.teacher.contxt': unknown key for backend 'llamacpp'"):
        load_rdpo_config(path)
    # so is the pair scorer (its judge's generator too), before hours of critique
    path.write_text("rdpo:\n  scorer: {type: judge, model: default, rubrik: harm15}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"c.yaml: field 'rdpo.scorer.rubrik': unknown option for the judge scorer"):
        load_rdpo_config(path)
    path.write_text("rdpo:\n  scorer: {type: judge, generator: {backend: openai, base_url: http://h/v1, modl: m}}\n",
                    encoding="utf-8")
    with pytest.raises(UserError, match=r"c.yaml: field 'rdpo.scorer.generator.modl': unknown key for backend 'openai'"):
        load_rdpo_config(path)
    warnings = []
    s = load_rdpo_config(None, set_overrides(["train.tau=0.05", "critique.limit=3",
                                              "critique.teacher=openai:m@http://h/v1"], warn=warnings.append))
    assert s.cfg.train.tau == 0.05 and s.critique.limit == 3 and s.critique.teacher == "openai:m@http://h/v1"
    with pytest.raises(UserError, match="SECTION.KEY=VALUE"):
        set_overrides(["novalue"])


def test_extra_pairs_join_with_their_own_labels_and_bad_rows_name_file_line_field(tmp_path):
    other = tmp_path / "safety_pairs.jsonl"
    other.write_text(json.dumps({"id": "s1", "prompt": "how do I pick a lock?", "chosen": "I can't help with that.",
                                 "rejected": "Insert a tension wrench...", "label": 0.83, "meta": {"set": "plain"}})
                     + "\n\n", encoding="utf-8")
    mine = [{"id": "r1", "prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b", "label": 0.6}]
    logs = []
    both = with_extra_pairs(mine, [str(other)], log=logs.append)
    assert [p["id"] for p in both] == ["r1", "s1"] and [p["label"] for p in both] == [0.6, 0.83]
    assert both[1]["prompt"] == [{"role": "user", "content": "how do I pick a lock?"}]
    assert both[1]["meta"] == {"set": "plain", "from": str(other)} and logs == [
        "rdpo: 1 pairs of this run and 1 from rdpo.extra_pairs"]
    assert with_extra_pairs(mine, []) == mine
    with pytest.raises(UserError, match=r"safety_pairs.jsonl:1: field 'id': pair 's1' is already in .*safety_pairs"):
        with_extra_pairs(mine, [str(other), str(other)])
    # another critique draw of the same prompt has the same id (ids come from the prompt) but other replies
    draw = tmp_path / "draw1_pairs.jsonl"
    draw.write_text(json.dumps({"id": "s1", "prompt": [{"role": "user", "content": "how do I pick a lock?"}],
                                "chosen": "No.", "rejected": "Use a pick.", "label": 0.7}) + "\n", encoding="utf-8")
    logs = []
    three = with_extra_pairs(mine, [str(other), str(draw)], log=logs.append)
    assert [p["id"] for p in three] == ["r1", "s1", "s1~2"] and three[2]["label"] == 0.7
    assert logs == ["rdpo: 1 pairs of this run and 2 from rdpo.extra_pairs (1 with an id already taken by other "
                    "replies to the same prompt, renamed id~N)"]
    bad = tmp_path / "bad.jsonl"
    for line, message in (('{"id": "x", "prompt": "p", "chosen": "a", "rejected": "b", "label": 1.5}',
                           r"bad.jsonl:2: field 'label': expected a number in \[0, 1\], got 1.5"),
                          ('{"id": "x", "prompt": [], "chosen": "a", "rejected": "b", "label": 1}',
                           r"bad.jsonl:2: field 'prompt'"),
                          ('{"id": "x", "prompt": "p", "rejected": "b", "label": 1}', r"bad.jsonl:2: field 'chosen'"),
                          ('{"id": "x", "prompt": "p", "chosen": "a", "rejected": "b", "label": true}',
                           r"bad.jsonl:2: field 'label'"),
                          ('{"id": "x", ', r"bad.jsonl:2: invalid JSON")):
        bad.write_text(other.read_text().replace("s1", "s0").strip() + "\n" + line + "\n", encoding="utf-8")
        with pytest.raises(UserError, match=message):
            with_extra_pairs(mine, [str(bad)])
    # a missing file fails when the config is read, before the critique
    with pytest.raises(UserError, match=r"field 'rdpo.extra_pairs': no such file: .*nope.jsonl"):
        rdpo_settings_from_dict({"rdpo": {"extra_pairs": [str(tmp_path / "nope.jsonl")]}})


def _rdpo_args(*argv):
    from negalign.cli import build_parser

    return build_parser().parse_args(["rdpo", *argv])


def test_every_rdpo_key_is_a_flag(tmp_path):
    """`negalign rdpo --section.key VALUE` reaches the settings for keys of all three sections."""
    keys = rdpo_keys()
    assert {"train.tau", "critique.max_new_tokens", "critique.teacher", "rdpo.scorer", "rdpo.min_margin"} <= set(keys)
    for key in keys:  # argparse takes each of them (a clash would raise while building the parser)
        assert key in vars(_rdpo_args(f"--{key}" if "." in key else "--run-dir", "x"))
    s = settings_from_args(_rdpo_args(
        "configs/rdpo_safety.yaml", "--train.tau", "0.5", "--rdpo.filter_not_better", "true",
        "--rdpo.min_margin", "0.25", "--critique.max_new_tokens", "64", "--critique.teacher", "openai:m@http://h/v1",
        "--rdpo.scorer", "{type: judge, model: x}", "--rdpo.higher_is_better", "null", "--variant", "cdpo",
        "--limit", "3", "--model", "some/model", "--run-dir", str(tmp_path)))
    assert s.where == "configs/rdpo_safety.yaml"
    assert s.cfg.train.tau == 0.5 and s.rdpo.filter_not_better is True and s.rdpo.min_margin == 0.25
    assert s.critique.max_new_tokens == 64 and s.critique.teacher == "openai:m@http://h/v1"
    assert s.rdpo.scorer == {"type": "judge", "model": "x"} and s.rdpo.higher_is_better is None
    assert s.rdpo.variant == "cdpo" and s.critique.limit == 3 and s.cfg.model.name == "some/model"
    assert s.cfg.run_dir == str(tmp_path)
    # the long and the short flag share one destination: the last one given wins
    assert settings_from_args(_rdpo_args("--limit", "3", "--critique.limit", "5")).critique.limit == 5
    with pytest.raises(UserError, match=r"field 'rdpo.min_margin': expected a number, got 'wide'"):
        settings_from_args(_rdpo_args("--rdpo.min_margin", "wide"))
    with pytest.raises(UserError, match=r"field 'rdpo.variant': unknown variant 'ppo'"):
        settings_from_args(_rdpo_args("--variant", "ppo"))


def test_set_alias_still_works_and_warns(capsys):
    s = settings_from_args(_rdpo_args("--set", "train.tau=0.05", "--set", "critique.system_prompt=be brief",
                                      "--set", "rdpo.higher_is_better=", "--train.beta", "0.3"))
    assert s.cfg.train.tau == 0.05 and s.critique.system_prompt == "be brief" and s.rdpo.higher_is_better is None
    assert s.cfg.train.beta == 0.3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["negalign: warning: --set is deprecated and goes in the next release; write "
                   "--train.tau 0.05 --critique.system_prompt 'be brief' --rdpo.higher_is_better null"]
    # a flag wins over --set for the same key
    assert settings_from_args(_rdpo_args("--set", "train.tau=0.05", "--train.tau", "2")).cfg.train.tau == 2.0
    capsys.readouterr()
    settings_from_args(_rdpo_args("--train.tau", "2"))  # no --set, no warning
    assert "deprecated" not in capsys.readouterr().err


def test_pair_train_data_layout(tokenizer, tiny_model, tmp_path):
    import contextlib

    from negalign.data.chat import encode_response
    from negalign.objectives.registry import compute_objective
    from negalign.training.step import batch_logps

    s = rdpo_settings_from_dict({"run_dir": str(tmp_path), "train": {"precision": "fp32"}})
    from negalign.modeling.inference import score_groups
    from negalign.recipes.rdpo import pair_examples
    from negalign.training.groups import Tokenizer, build_groups, group_index
    from negalign.training.reference import ReferenceScores

    pairs = [{"id": "a", "prompt": [{"role": "user", "content": "hi"}], "chosen": "good", "rejected": "bad",
              "label": 0.8}]
    # the reference comes from the same (tiny) model, so the policy starts equal to it

    ex, anchors = pair_examples(pairs)
    groups = build_groups(Tokenizer(tokenizer, 64, 64), ex, group_index(ex), anchors)
    assert groups[0].response_ids == [encode_response(tokenizer, "good")[0], encode_response(tokenizer, "bad")[0]]
    lp, ln = score_groups(tiny_model, groups, batch_tokens=1024, precision="fp32", log=lambda *_: None)
    ref = ReferenceScores(lp[:, :1], ln[:, :1], lp[:, 1], ln[:, 1])
    data = pair_train_data(s.cfg, tokenizer, pairs, "rdpo", 0.1, reference=ref, log=lambda *_: None)
    assert data.n_anchors == 1 and data.labels.tolist() == pytest.approx([0.8])
    g = batch_logps(tiny_model, data, [0], "dpo_pairs", chunk_tokens=256, grouped=True,
                    autocast=contextlib.nullcontext)
    loss, metrics = compute_objective("dpo_pairs", g, {"beta": 0.1})
    assert float(loss.detach()[0]) == pytest.approx(math.log(2), abs=1e-4)  # policy == reference: h = 0
    assert float(g.label[0]) == pytest.approx(0.8)

    # At h = 0 every label gives log 2. With the reference 5 nats below the policy on the chosen
    # answer and 5 above on the rejected one, h = 10 and beta h = 1: the label must reach the loss,
    # -[p log sigmoid(1) + (1 - p) log sigmoid(-1)], for rDPO's p, cDPO's 1 - eps and DPO's 1.
    shifted = ReferenceScores(lp[:, :1] - 5.0, ln[:, :1], lp[:, 1] + 5.0, ln[:, 1])
    for variant, p in (("rdpo", 0.8), ("cdpo", 0.9), ("dpo", 1.0)):
        data = pair_train_data(s.cfg, tokenizer, pairs, variant, 0.1, reference=shifted, log=lambda *_: None)
        g = batch_logps(tiny_model, data, [0], "dpo_pairs", chunk_tokens=256, grouped=True,
                        autocast=contextlib.nullcontext)
        loss, _ = compute_objective("dpo_pairs", g, {"beta": 0.1})
        expect = -(p * math.log(1 / (1 + math.exp(-1))) + (1 - p) * math.log(1 / (1 + math.exp(1))))
        assert float(loss.detach()[0]) == pytest.approx(expect, abs=1e-4), variant


def _tiny_config(model_dir, run_dir, *, limit: int = 4, **data) -> dict:
    """Two training steps of rDPO on the tiny model: 4-token critiques of the roleplay preset."""
    return {
        "run_dir": str(run_dir),
        "model": {"name": str(model_dir)},
        "data": {"max_prompt_tokens": 128, "max_response_tokens": 32, **data},
        "train": {"tau": 0.5, "max_steps": 2, "groups_per_step": 2, "micro_groups": 2, "precision": "fp32",
                  "lr": 1e-4, "save_every": 0},
        "critique": {"preset": "roleplay", "limit": limit, "max_new_tokens": 8, "critique_max_new_tokens": 4},
        "rdpo": {"scorer": "refusal"},
    }


@pytest.mark.e2e
def test_end_to_end_rdpo_on_tiny_model(tiny_model_dir, tmp_path):
    config = _tiny_config(tiny_model_dir, tmp_path / "run")
    logs = []
    out = run_rdpo(config, log=logs.append)
    run = tmp_path / "run"
    assert (out / "config.json").exists() and any(out.glob("*.safetensors"))
    metrics = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(math.isfinite(m["loss"]) for m in metrics)
    stats = json.loads((run / "pairs.stats.json").read_text())["stats"]
    pairs = [json.loads(line) for line in (run / "pairs.jsonl").read_text().splitlines()]
    assert stats["kept"] == len(pairs) > 0 and all(0 < p["label"] < 1 for p in pairs)
    assert (run / "critique.jsonl").exists() and (run / "reference.safetensors").exists()
    assert "rdpo" in (run / "config.yaml").read_text()
    # rerun: every stage is cached, nothing is redone
    logs.clear()
    assert run_rdpo(config, log=logs.append) == out
    assert any("already done" in str(x) for x in logs) and any("cached" in str(x) for x in logs)
    # the SFT-on-revisions variant trains on the same critique file, reference-free
    sft_run = tmp_path / "sft"
    sft_run.mkdir()
    (sft_run / "critique.jsonl").write_bytes((run / "critique.jsonl").read_bytes())
    (sft_run / "critique.jsonl.meta.json").write_bytes((run / "critique.jsonl.meta.json").read_bytes())
    out = run_rdpo({**config, "run_dir": str(sft_run), "rdpo": {"scorer": "refusal", "variant": "sft"}},
                   log=lambda *_: None)
    assert any(out.glob("*.safetensors")) and not (sft_run / "reference.safetensors").exists()
    # another run's pairs beside this run's (rdpo.extra_pairs): both kinds are trained on
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({**p, "id": "x-" + p["id"]}) + "\n" for p in pairs), encoding="utf-8")
    logs.clear()
    out = run_rdpo({**config, "run_dir": str(tmp_path / "mixed"), "rdpo": {"scorer": "refusal",
                                                                            "extra_pairs": [str(extra)]}},
                   log=logs.append)
    assert f"rdpo: {len(pairs)} pairs of this run and {len(pairs)} from rdpo.extra_pairs" in logs
    assert any(f"on {2 * len(pairs)} pairs" in str(x) for x in logs) and any(out.glob("*.safetensors"))


@pytest.mark.e2e
def test_rdpo_with_hold_groups_samples_the_initial_model_and_trains(tiny_model_dir, tmp_path):
    """data.hold beside the pairs: the initial model answers the benign prompts (hold/anchors.jsonl),
    the hold groups follow the pairs with K = sample.k, and their rows start at loss log 2."""
    hold = tmp_path / "hold.txt"
    hold.write_text("How do I kill a Python process?\nWhat is the history of fireworks?\n")
    config = {**_tiny_config(tiny_model_dir, tmp_path / "run", limit=3, hold=str(hold)),
              "sample": {"k": 2, "max_new_tokens": 6, "precision": "fp32", "backend": "transformers"}}
    logs = []
    out = run_rdpo(config, log=logs.append)
    anchors = [json.loads(line) for line in (tmp_path / "run" / "hold" / "anchors.jsonl").read_text().splitlines()]
    assert len(anchors) == 2 and all(len(a["anchors"]) == 2 for a in anchors)
    assert any("2 hold groups" in str(x) for x in logs) and any(out.glob("*.safetensors"))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    # step 1 runs the initial model, which is the reference (scored in bf16): every row, pair or hold, is at log 2
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=0.02)


def test_an_rdpo_run_directory_can_be_evaluated_and_says_what_it_trained(tmp_path):
    # `negalign evaluate RUN_DIR` reads the run's config.yaml, which for rDPO has critique and rdpo sections too
    import yaml

    from negalign.base.rundir import RunDir
    from negalign.cli.evaluate import own_run_config
    from negalign.training.model_card import model_card

    settings = rdpo_settings_from_dict({"run_dir": str(tmp_path), "critique": {"preset": "sycophancy"},
                                        "rdpo": {"variant": "sft"}})
    assert settings.cfg.train.method == "sft_anchors"      # the snapshot says what the variant trains with
    run = RunDir(tmp_path)
    run.config.write_text(yaml.safe_dump(settings.to_dict()), encoding="utf-8")
    cfg = own_run_config(run, str(run.model), None)
    assert cfg.train.method == "sft_anchors" and cfg.run_dir == str(tmp_path)
    run.pairs.write_text("", encoding="utf-8")
    assert f"negalign rdpo -c {run.config}" in model_card(cfg, tmp_path)
