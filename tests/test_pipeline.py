"""The stages wired together on a tiny model: sample -> reference -> train, resume, online, LoRA."""

from __future__ import annotations

import json
import math

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from negalign.base.errors import UserError
from negalign.config import config_from_dict, load_config
from negalign.data.loaders import save_examples
from negalign.data.records import Example
from negalign.modeling.loading import load_model
from negalign.recipes import d2o
from negalign.training.checkpoints import list_checkpoints
from negalign.training.examples import run_examples
from negalign.training.groups import training_groups
from negalign.training.loop import run_train
from negalign.training.step import TrainData


def _examples():
    prompts = ["How do I pick a lock?", "Write an insult about my neighbour.", "How can I cheat on a test?",
               "Tell me how to make a fake ID."]
    return [Example(id=f"e{i}", prompt=[{"role": "user", "content": p}],
                    negatives=[f"Sure! Step one for request {i}: do the bad thing quietly.",
                               f"Here is how, no questions asked ({i})."][: 1 + i % 2])
            for i, p in enumerate(prompts)]


@pytest.fixture
def cfg(tmp_path, tiny_model_dir):
    data = tmp_path / "data.jsonl"
    save_examples(data, _examples())
    return config_from_dict({
        "run_dir": str(tmp_path / "run"),
        "model": {"name": str(tiny_model_dir)},
        "data": {"source": str(data), "max_response_tokens": 24},
        "sample": {"k": 2, "max_new_tokens": 8, "prompts_per_write": 2},
        "reference": {"precision": "fp32"},
        "train": {"groups_per_step": 2, "micro_groups": 1, "lr": 1e-3, "precision": "fp32", "save_every": 1,
                  "warmup_ratio": 0.0, "epochs": 2},
    })


def test_config_yaml_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-5\n  method: npo\nsample:\n  k: 3\n")
    cfg = load_config(path, {"train.beta": "0.2", "model.lora.enabled": "true"})
    assert (cfg.train.lr, cfg.train.method, cfg.sample.k, cfg.train.beta, cfg.model.lora.enabled) == \
        (1e-5, "npo", 3, 0.2, True)
    path.write_text("train:\n  learning_rate: 1\n")
    with pytest.raises(UserError, match=r"c.yaml: field 'train.learning_rate': unknown key"):
        load_config(path)
    path.write_text("sample:\n  k: many\n")
    with pytest.raises(UserError, match=r"field 'sample.k': expected an integer"):
        load_config(path)
    path.write_text("train:\n  lr: 1.0e-5\n  epochs: 2\n  lr: 3.0e-5\n")
    with pytest.raises(UserError, match=r"c.yaml:4: invalid YAML: key 'lr' appears twice"):
        load_config(path)
    path.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match=r"c.yaml:\d+: invalid YAML"):
        load_config(path)


def test_the_shipped_d2o_configs_load_and_the_smollm2_recipe_matches_its_measured_run():
    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("d2o_*.yaml")):
        load_config(path)
    cfg = load_config(root / "d2o_smollm2.yaml")
    # benchmarks/d2o_recipe/README.md, run t3h64: what its figures were measured with (in bf16, which "auto"
    # picks on that machine: its bf16 matmuls ran twice as fast as fp32)
    assert (cfg.sample.model, cfg.sample.precision, cfg.sample.k, cfg.sample.max_new_tokens) == \
        ("qwen2.5-coder-1.5b", "auto", 4, 48)
    assert (cfg.data.limit, cfg.data.max_negatives_per_prompt, cfg.data.hold, cfg.data.hold_limit) == \
        (48, 2, "benign-twins", 64)
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.alpha, cfg.train.beta) == (3e-5, 4, 0.1, 0.1)


def test_sample_reference_train_end_to_end(cfg):
    anchors = d2o.stage_sample(cfg, log=lambda *_: None)
    assert sorted(anchors) == ["e0", "e1", "e2", "e3"] and all(len(a) == 2 for a in anchors.values())
    ref = d2o.stage_reference(cfg, log=lambda *_: None)
    assert ref.anchor_logps.shape == (6, 2) and ref.negative_logps.shape == (6,)
    assert bool((ref.negative_logps < 0).all()) and bool((ref.negative_lengths > 0).all())
    out = d2o.stage_train(cfg, log=lambda *_: None)
    rows = [json.loads(line) for line in (out.parent / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))  # 6 groups / 2 per step * 2 epochs
    assert all(k in rows[0] for k in ("loss", "rewards/margins", "rewards/accuracies", "logratio/negative"))
    model, _ = load_model(str(out))
    assert sum(p.numel() for p in model.parameters()) > 0
    # D2O at this learning rate pushes the human negatives down relative to the reference.
    assert rows[-1]["logratio/negative"] < 0
    # A second run of the same stage does nothing new (the model is already there).
    assert d2o.stage_train(cfg, log=lambda *_: None) == out


@pytest.mark.e2e
def test_the_model_card_says_how_the_model_was_made_and_how_it_did(cfg, capsys):
    from negalign.base.durable import manifest_problem
    from negalign.evaluation.evaluate import evaluate_model
    from negalign.training.model_card import refresh_model_card

    d2o.stage_sample(cfg, log=lambda *_: None)
    out = d2o.stage_train(cfg, log=lambda *_: None)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "- d2o" in card
    assert f"negalign run -c {Path(cfg.run_dir) / 'config.yaml'}" in card
    assert "| human negatives trained on | 6 |" in card and "| prompts | 4 |" in card and "| learning rate | 0.001 |" in card
    assert "K = 2 anchors per prompt sampled from the initial model" in card
    assert "6 optimizer steps" in card and "| loss |" in card and "Not evaluated yet" in card
    assert "| precision | fp32 |" in card
    assert manifest_problem(out) is None  # the card is in the manifest
    evaluate_model(str(out), reference_spec=cfg.model.name, out_dir=Path(cfg.run_dir) / "eval", n_harmful=2,
                   n_benign=2, n_overrefusal=2, n_heldout=2, max_new_tokens=4, n_boot=50, judge=None,
                   harm_classifier="none", kl=False, log=lambda *_: None)
    refresh_model_card(cfg, cfg.run_dir)
    card = (out / "README.md").read_text()
    assert "Not evaluated yet" not in card and "| refusal (harmful prompts) | " in card and "(n=2)" in card
    assert manifest_problem(out) is None
    model, _ = load_model(str(out))  # still a plain transformers folder
    # `negalign runs` finds the run below its parent and summarises it from its files
    from negalign.cli.main import main

    assert main(["runs", str(Path(cfg.run_dir).parent)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{cfg.run_dir}  d2o  4 prompts  trained  |  refusal ") and "ppl " in line
    assert main(["runs", str(Path(cfg.run_dir) / "nothing")]) == 2


def test_the_model_card_names_what_auto_precision_chose():
    from negalign.training.model_card import precision_line

    assert precision_line("auto", []) == "auto"  # not trained yet: nothing to say what it chose
    rows = [{"step": 1, "precision": "fp32"}, {"step": 2, "precision": "bf16"}]
    assert precision_line("auto", rows) == "auto (bf16 on the training machine)"
    assert precision_line("fp32", rows) == "fp32"


def _train_data(cfg):
    examples = run_examples(cfg)
    d2o.stage_sample(cfg, log=lambda *_: None)
    reference = d2o.stage_reference(cfg, log=lambda *_: None)
    model, tok = load_model(cfg.model.name)
    from negalign.training.anchors import read_anchors

    groups, _, k, _ = training_groups(cfg, tok, examples, read_anchors(cfg.run_dir), log=lambda *_: None)
    return model, tok, TrainData(groups, k, reference)


class _Crash(Exception):
    pass


@pytest.mark.e2e
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(cfg, tmp_path):
    model, tok, data = _train_data(cfg)
    straight = tmp_path / "straight"
    cfg_a = config_from_dict({**cfg.to_dict(), "run_dir": str(straight)})
    run_train(cfg_a, model, tok, data, log=lambda *_: None)
    expected = load_file(str(straight / "model" / "model.safetensors"))

    cfg_b = config_from_dict({**cfg.to_dict(), "run_dir": str(tmp_path / "crashy")})

    def crash_at_3(step, _model):
        if step == 3:
            raise _Crash

    model, tok, _ = _train_data(cfg)
    with pytest.raises(_Crash):
        run_train(cfg_b, model, tok, data, log=lambda *_: None, on_step=crash_at_3)
    assert [p.name for p in list_checkpoints(tmp_path / "crashy")][-1] == "step-0000002"
    with pytest.raises(UserError, match="--resume"):
        run_train(cfg_b, load_model(cfg.model.name)[0], tok, data, log=lambda *_: None)
    model, tok, _ = _train_data(cfg)
    run_train(cfg_b, model, tok, data, resume=True, log=lambda *_: None)
    got = load_file(str(tmp_path / "crashy" / "model" / "model.safetensors"))
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "crashy" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # nothing logged twice


@pytest.mark.e2e
def test_activation_checkpointing_trains_to_the_same_weights_and_may_be_switched_on_at_resume(cfg, tmp_path):
    model, tok, data = _train_data(cfg)
    cfg_a = config_from_dict({**cfg.to_dict(), "run_dir": str(tmp_path / "plain")})
    run_train(cfg_a, model, tok, data, log=lambda *_: None)
    expected = load_file(str(tmp_path / "plain" / "model" / "model.safetensors"))

    def crash_at_3(step, _model):
        if step == 3:
            raise _Crash

    cfg_b = config_from_dict({**cfg.to_dict(), "run_dir": str(tmp_path / "ckpt")})
    model, tok, _ = _train_data(cfg)
    with pytest.raises(_Crash):
        run_train(cfg_b, model, tok, data, log=lambda *_: None, on_step=crash_at_3)
    on = config_from_dict({**cfg_b.to_dict(), "train": {**cfg_b.to_dict()["train"], "activation_checkpointing": True}})
    model, tok, _ = _train_data(cfg)
    run_train(on, model, tok, data, resume=True, log=lambda *_: None)
    got = load_file(str(tmp_path / "ckpt" / "model" / "model.safetensors"))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_lora_training_saves_a_merged_model(cfg):
    cfg = config_from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "lora": {"enabled": True, "r": 4}}})
    out = d2o.stage_all(cfg, log=lambda *_: None)
    model, _ = load_model(str(out))
    assert not any("lora" in n for n, _ in model.named_parameters())
    base, _ = load_model(cfg.model.name)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed, "LoRA training changed nothing"


@pytest.mark.e2e
def test_online_resampling_replaces_anchors(cfg):
    cfg = config_from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "online": {"every": 2}}})
    d2o.stage_all(cfg, log=lambda *_: None)
    rows = [json.loads(line) for line in (Path(cfg.run_dir) / "anchors.online.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {2, 4}
    assert all(len(r["anchors"]) == 2 for r in rows)


def _mean_logps(model, tok, cfg) -> tuple[float | None, float]:
    """Mean summed log-prob of the run's anchors (None without anchors) and of its negatives under `model`."""
    from negalign.modeling.inference import score_groups
    from negalign.training.anchors import read_anchors
    from negalign.training.groups import Tokenizer, build_groups, group_index
    from negalign.training.reference import split_columns

    examples = run_examples(cfg)
    groups = build_groups(Tokenizer(tok, cfg.data.max_prompt_tokens, cfg.data.max_response_tokens), examples,
                          group_index(examples), read_anchors(cfg.run_dir))
    lp, ln = score_groups(model, groups, batch_tokens=4096, precision="fp32", log=lambda *_: None)
    anchors, anchor_lengths, negatives, _ = split_columns(lp, ln, [len(g.response_ids) for g in groups], cfg.sample.k)
    present = anchors[anchor_lengths > 0]
    return (float(present.mean()) if present.numel() else None), float(negatives.mean())


# Which way each baseline must move the log-probs of the training data, in nats per sequence
# against the initial model: (anchors, negatives); None = no claim.
_DIRECTIONS = {"npo": (None, "down"), "simnpo": (None, "down"), "ga": (None, "down"),
               "d2o_no_anchors": (None, "down"), "dpo_instance": ("up", "down"), "sft_anchors": ("up", None)}


@pytest.mark.e2e
@pytest.mark.parametrize("method", sorted(_DIRECTIONS))
def test_every_baseline_moves_the_weights_its_way(cfg, method):
    """Not just "a weights file exists": the trained model must make the negatives less likely
    (and, for the methods that pull toward the anchors, the anchors more likely), by a clear margin."""
    cfg = config_from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "method": method, "epochs": 1}})
    out = d2o.stage_all(cfg, log=lambda *_: None)
    initial, tok = load_model(cfg.model.name)
    trained, _ = load_model(str(out))
    before, after = _mean_logps(initial, tok, cfg), _mean_logps(trained, tok, cfg)
    for name, direction, b, a in zip(("anchors", "negatives"), _DIRECTIONS[method], before, after):
        if direction == "down":
            assert a < b - 1.0, f"{method}: {name} {b:.2f} -> {a:.2f} nats, expected a clear drop"
        elif direction == "up":
            assert a > b + 0.5, f"{method}: {name} {b:.2f} -> {a:.2f} nats, expected a clear rise"
    if method == "dpo_instance":  # the preference margin grows (measured: anchors +1.2, negatives -3.1)
        assert (after[0] - before[0]) - (after[1] - before[1]) > 2.0


def test_human_positives_as_anchors_give_dpo_on_human_pairs(cfg):
    """data.anchors: positives + dpo_pairs + k 1 is DPO on the human (positive, negative) pairs."""
    data = Path(cfg.data.source)
    examples = _examples()
    examples[0].positives = ["I can't help with picking locks you don't own."]
    examples[2].positives = ["Cheating hurts you; here is how to study instead."]
    save_examples(data, examples)
    base = cfg.to_dict()
    cfg = config_from_dict({**base, "data": {**base["data"], "anchors": "positives"},
                            "sample": {**base["sample"], "k": 1},
                            "train": {**base["train"], "method": "dpo_pairs", "epochs": 1}})
    assert d2o.stage_sample(cfg, log=lambda *_: None) == {
        "e0": ["I can't help with picking locks you don't own."],
        "e2": ["Cheating hurts you; here is how to study instead."]}
    out = d2o.stage_train(cfg, log=lambda *_: None)
    rows = [json.loads(line) for line in (out.parent / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "rewards/margins" in rows[0]  # e0 (1 negative) + e2 (1 negative): 2 groups
    assert [ex.id for ex in run_examples(cfg)] == ["e0", "e2"]


def test_online_needs_sampled_anchors(tmp_path):
    with pytest.raises(UserError, match="train.online.every"):
        config_from_dict({"data": {"anchors": "positives"}, "train": {"online": {"every": 2}}})


def test_teacher_best_of_n_keeps_the_safest_draws_and_records_anchor_quality(cfg, tmp_path, tokenizer):
    """sample.model draws from another model; best_of keeps the k safest (refusals first by the
    refusal detector), keeps every draw in the row, and anchors.quality.json compares the kept
    anchors with the negatives."""
    import dataclasses
    import json

    from tiny_models import tiny_llama

    teacher = tmp_path / "teacher"
    tiny_llama(tokenizer, seed=7).save_pretrained(teacher, safe_serialization=True)
    tokenizer.save_pretrained(teacher)
    cfg.sample = dataclasses.replace(cfg.sample, model=str(teacher), best_of=4, k=2, temperature=1.0)
    lines: list[str] = []
    anchors = d2o.stage_sample(cfg, log=lines.append)
    run = tmp_path / "run"
    rows = [json.loads(x) for x in (run / "anchors.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} == set(anchors) and all(len(r["anchors"]) == 2 for r in rows)
    for r in rows:
        assert len(r["drawn"]) == 4 and all(a in r["drawn"] for a in r["anchors"])
    meta = json.loads((run / "anchors.meta.json").read_text())["settings"]
    assert meta["sampler"] == str(teacher) and meta["best_of"] == 4  # pinned: a resume cannot switch sampler
    quality = json.loads((run / "anchors.quality.json").read_text())
    assert quality["anchors"]["n"] == 2 * len(rows) and quality["sampler"] == str(teacher)
    assert quality["negatives"]["n"] == sum(len(e.negatives) for e in _examples())
    # random tiny models never refuse: the run must say its anchors are no safer than its negatives
    assert quality["anchors"]["refusal_rate"] == 0.0
    assert any("WARNING: the anchors are no safer" in x for x in lines)


@pytest.mark.e2e
def test_hold_groups_sample_the_initial_model_unguided_and_train_without_a_negative(cfg, tmp_path, tokenizer):
    """data.hold adds one group per benign prompt: anchors drawn from the initial model without the
    guidance prompt (even when a teacher draws the main anchors), an empty negative slot, and a loss
    with no negative term; the negatives' metrics leave the hold groups out."""
    import dataclasses

    from tiny_models import tiny_llama

    from negalign.training.anchors import read_anchors

    teacher = tmp_path / "teacher"
    tiny_llama(tokenizer, seed=7).save_pretrained(teacher, safe_serialization=True)
    tokenizer.save_pretrained(teacher)
    hold_file = tmp_path / "hold.txt"
    hold_file.write_text("How do I kill a Python process?\n\nWhat is the history of fireworks?\n")
    cfg.sample = dataclasses.replace(cfg.sample, model=str(teacher))
    cfg.data = dataclasses.replace(cfg.data, hold=str(hold_file))
    lines: list[str] = []
    d2o.stage_sample(cfg, log=lines.append)
    run = tmp_path / "run"
    hold = read_anchors(run / "hold")
    assert sorted(hold) == ["hold-1", "hold-3"] and all(len(a) == 2 for a in hold.values())
    meta = json.loads((run / "hold" / "anchors.meta.json").read_text())["settings"]
    assert meta["model"] == cfg.model.name and meta["system_prompt"] is None and "sampler" not in meta
    main_meta = json.loads((run / "anchors.meta.json").read_text())["settings"]
    assert main_meta["sampler"] == str(teacher)

    examples = run_examples(cfg)
    model, tok = load_model(cfg.model.name)
    groups, index, k, _ = training_groups(cfg, tok, examples, read_anchors(run), log=lines.append)
    assert len(groups) == len(index) + 2 and all(g.response_ids[-1] == [] for g in groups[-2:])
    assert any("2 hold groups" in x for x in lines)
    ref = d2o.stage_reference(cfg, log=lambda *_: None)
    assert ref.negative_lengths[-2:].tolist() == [0, 0] and ref.negative_logps[-2:].tolist() == [0.0, 0.0]

    from negalign.objectives.registry import compute_objective
    from negalign.training.step import TrainData, batch_logps

    data = TrainData(groups, k, ref)
    with torch.no_grad():
        lp = batch_logps(model, data, [0, len(groups) - 1], "d2o", chunk_tokens=256, grouped=True,
                         autocast=__import__("contextlib").nullcontext)
        loss, metrics = compute_objective("d2o", lp, {"beta": 0.1, "alpha": 0.1})
    # the initial model is the reference: the hold row's log-ratio is 0, so its loss is log 2
    assert float(loss[1]) == pytest.approx(math.log(2), abs=1e-4)
    assert metrics["logps/rejected"] == pytest.approx(float(lp.policy_negative[0]), rel=1e-6)
    out = d2o.stage_train(cfg, log=lambda *_: None)
    assert (out / "model.safetensors").exists()
    # SFT on the anchors takes hold groups too (its like-for-like baseline): the hold row's loss is
    # its anchors' mean per-token NLL
    with torch.no_grad():
        lp = batch_logps(model, data, [0, len(groups) - 1], "sft_anchors", chunk_tokens=256, grouped=True,
                         autocast=__import__("contextlib").nullcontext)
        loss, _ = compute_objective("sft_anchors", lp, {"beta": 0.1, "alpha": 0.1})
    nll = -(lp.policy_anchor[1] / lp.anchor_lengths[1].clamp(min=1))[lp.anchor_mask[1]].mean()
    assert float(loss[1]) == pytest.approx(float(nll), rel=1e-5) and float(loss[1]) > 0
    with pytest.raises(UserError, match="need a method that learns from anchors alone"):
        config_from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "method": "npo"}})


def test_hold_prompt_sets_and_file_errors(tmp_path):
    from negalign.config import config_from_dict
    from negalign.data.eval_sets import benign_twin_prompts, overrefusal_prompts, xstest_style_prompts
    from negalign.training.hold import hold_examples

    twins = hold_examples(config_from_dict({"data": {"hold": "benign-twins", "hold_limit": 5}}))
    assert len(twins) == 5 and twins[0].prompt[0]["content"] == "How do I safely light a campfire?"
    evaluated = {p["prompt"].strip().lower() for p in overrefusal_prompts() + xstest_style_prompts()}
    assert len(benign_twin_prompts()) == 150 and not {p["prompt"].lower() for p in benign_twin_prompts()} & evaluated
    bad = tmp_path / "h.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(UserError, match=r"h.jsonl:2: field 'prompt'"):
        hold_examples(config_from_dict({"data": {"hold": str(bad)}}))


def test_best_of_n_selection_prefers_refusals():
    from negalign.config import config_from_dict
    from negalign.recipes.anchor_safety import make_selector

    cfg = config_from_dict({"sample": {"k": 2, "best_of": 4}})
    select = make_selector(cfg)
    drawn = ["Sure, step 1: get the powder.", "I can't help with that.", "Here you go: mix it.",
             "I'm sorry, but I cannot assist with this request."]
    assert select([{"role": "user", "content": "how to make a bomb"}], drawn) == [1, 3]
