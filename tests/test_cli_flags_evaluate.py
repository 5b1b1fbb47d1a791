"""`negalign evaluate` and `negalign report` in the core commands' flag style: `-c FILE`, then
`--eval.key VALUE` / `--report.key VALUE` flags, short flags for the frequent settings, and the old
spellings as deprecated aliases. evaluate_model and build_report are replaced: nothing loads a model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from negalign.cli.main import main

DEFAULT_KWARGS = dict(reference_spec="default", n_harmful=150, n_overrefusal=270, n_benign=100, n_heldout=None,
                      max_new_tokens=64, batch_size=32, generation_precision="fp32", judge="default",
                      judge_benign=True, harm_classifier=None, kl=True, seed=0, n_boot=1000,
                      max_response_tokens=192, heldout_fraction=0.2, split_seed=0)


@pytest.fixture
def calls(monkeypatch):
    """The (model, kwargs) of every evaluate_model / build_report call main makes."""
    import negalign.evaluation.evaluate as ev
    import negalign.evaluation.report as rp

    got = []
    monkeypatch.setattr(ev, "evaluate_model", lambda spec, **kw: got.append((spec, kw)) or {})
    monkeypatch.setattr(ev, "summary_lines", lambda result: [])
    monkeypatch.setattr(rp, "build_report", lambda runs, out: got.append((runs, {"out": out})) or
                        {"md": f"{out}/report.md", "html": f"{out}/report.html"})
    return got


def evaluate(calls, *argv) -> dict:
    assert main(["evaluate", "m", *argv]) == 0
    (spec, kwargs), = calls[-1:]
    assert spec == "m"
    return kwargs


def test_defaults_are_the_old_clis(calls):
    assert evaluate(calls) == {**DEFAULT_KWARGS, "out_dir": Path("eval")}


def test_yaml_then_flags(calls, tmp_path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("eval:\n  n_harmful: 20\n  quick: true\n  judge: none\n  kl: false\n  seed: 3\n"
                   "  harm_classifier: none\n  out: from_yaml\n")
    kwargs = evaluate(calls, "-c", str(cfg), "--eval.seed", "5", "--eval.win_rate", "false",
                      "--eval.n_heldout", "null", "--out", str(tmp_path / "o"))
    assert kwargs == {**DEFAULT_KWARGS, "n_harmful": 20, "n_overrefusal": 48, "n_benign": 24, "judge": "none",
                      "kl": False, "seed": 5, "judge_benign": False, "harm_classifier": "none",
                      "out_dir": str(tmp_path / "o")}


def test_precedence_last_flag_wins_over_yaml(calls, tmp_path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("eval:\n  batch_size: 4\n  judge: ./j\n")
    kwargs = evaluate(calls, "-c", str(cfg), "--eval.batch_size", "8", "--eval.batch_size", "16",
                      "--eval.judge", "none", "--judge", "./k")
    assert (kwargs["batch_size"], kwargs["judge"]) == (16, "./k")
    assert evaluate(calls, "-c", str(cfg))["batch_size"] == 4


def test_judge_options_make_the_same_specs(calls):
    assert evaluate(calls, "--judge", "http://h/v1", "--eval.judge_model", "j")["judge"] == \
        {"base_url": "http://h/v1", "model": "j"}
    assert evaluate(calls, "--eval.judge_rubric", "guard", "--eval.judge_batch_size", "2")["judge"] == \
        {"model": "qwen2.5-coder-1.5b", "rubric": "guard", "batch_size": 2}


def test_deprecated_flags_warn_once_and_map_to_the_same_kwargs(calls, capsys):
    new = evaluate(calls, "--eval.n_harmful", "5", "--eval.kl", "false", "--eval.win_rate", "false",
                   "--eval.generation_precision", "bf16", "--quick")
    assert capsys.readouterr().err == ""
    old = evaluate(calls, "--n-harmful", "7", "--n-harmful", "5", "--no-kl", "--no-win-rate",
                   "--generation-precision", "bf16", "--quick")
    assert old == new and old["n_harmful"] == 5 and old["n_benign"] == 24
    assert capsys.readouterr().err.splitlines() == [
        "negalign: warning: --n-harmful is deprecated; write --eval.n_harmful",
        "negalign: warning: --no-kl is deprecated; write --eval.kl false",
        "negalign: warning: --no-win-rate is deprecated; write --eval.win_rate false",
        "negalign: warning: --generation-precision is deprecated; write --eval.generation_precision"]
    # old and new spellings share one setting: the last one given wins
    assert evaluate(calls, "--n-harmful", "9", "--eval.n_harmful", "3")["n_harmful"] == 3


@pytest.mark.parametrize("argv, parts", [
    (["--eval.nope", "1"], ["unknown flag --eval.nope", "evaluate --help"]),
    (["--eval.n_harmfull", "1"], ["unknown flag --eval.n_harmfull", "did you mean --eval.n_harmful?"]),
    (["--eval.n_harmful", "many"], ["field 'eval.n_harmful'", "expected an integer", "many"]),
    (["--eval.kl", "maybe"], ["field 'eval.kl'", "expected true or false"]),
    (["--eval.n_benign", "0"], ["field 'eval.n_benign'", "at least 1"]),
    (["--eval.generation_precision", "fp16"], ["field 'eval.generation_precision'", "fp16"]),
    (["--judge", "http://h/v1"], ["field 'eval.judge_model'", "judge server needs"]),
    (["--judge", "none", "--judge-rubric", "guard"], ["field 'eval.judge'", "need a judge"]),
    (["--eval.behaviours", "[roleplay, honesty]"], ["field 'eval.behaviours'", "honesty"]),
])
def test_setting_mistakes_are_one_line_exit_2(calls, capsys, argv, parts):
    assert main(["evaluate", "m", *argv]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line]
    assert len(errors) == 1 and errors[0].startswith("negalign: error: "), errors
    assert all(part in errors[0] for part in parts), errors[0]
    assert calls == []  # nothing evaluated


def test_behaviours_run_after_the_evaluation_with_one_judge(calls, monkeypatch, tmp_path, capsys):
    import negalign.evaluation.behaviour as bh

    made, ran = [], []
    monkeypatch.setattr(bh, "behaviour_judge", lambda b, like=None: made.append((b, like)) or f"judge-{b}")
    metric = {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75}
    monkeypatch.setattr(bh, "evaluate_behaviour", lambda spec, b, out, judge, log: ran.append((spec, b, out, judge))
                        or {"behaviour": b, "metrics": {f"{b}_rate": metric}})
    evaluate(calls, "--eval.behaviours", "[sycophancy, roleplay]", "--out", str(tmp_path))
    assert made == [("sycophancy", None), ("roleplay", "judge-sycophancy")]  # the second shares the weights
    assert ran == [("m", "sycophancy", str(tmp_path), "judge-sycophancy"), ("m", "roleplay", str(tmp_path), "judge-roleplay")]
    assert "roleplay: roleplay_rate 50.0% [25.0%, 75.0%]" in capsys.readouterr().out
    assert evaluate(calls) and made[2:] == []  # no behaviours by default


def test_unknown_yaml_key_names_the_key_and_file(calls, capsys, tmp_path):
    for text, field in (("eval:\n  n_harmfull: 3\n", "eval.n_harmfull"), ("evl:\n  n_harmful: 1\n", "evl")):
        cfg = tmp_path / "eval.yaml"
        cfg.write_text(text)
        assert main(["evaluate", "m", "-c", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"negalign: error: {cfg}: field '{field}': unknown key")
    assert calls == []


def test_one_file_holds_training_and_evaluation(calls, tmp_path, capsys):
    """A whole experiment's YAML: training reads its sections, `negalign evaluate -c` its eval: section."""
    from negalign.config import load_config

    cfg = tmp_path / "exp.yaml"
    cfg.write_text("train:\n  lr: 1.0e-5\ndata:\n  seed: 4\neval:\n  n_boot: 200\n  max_response_tokens: 96\n"
                   "report:\n  out: r\n")
    assert load_config(cfg).train.lr == 1e-5
    kwargs = evaluate(calls, "-c", str(cfg), "--eval.split_seed", "4", "--eval.heldout_fraction", "0.25")
    assert kwargs == {**DEFAULT_KWARGS, "n_boot": 200, "max_response_tokens": 96, "split_seed": 4,
                      "heldout_fraction": 0.25, "out_dir": Path("eval")}
    assert capsys.readouterr().err == ""


def test_retired_evaluate_section_warns_and_loads(tmp_path, capsys):
    from negalign.config import load_config

    cfg = tmp_path / "old.yaml"
    cfg.write_text("train:\n  lr: 2.0e-5\nevaluate:\n  harmful_prompts: 24\n")
    assert load_config(cfg).train.lr == 2e-5
    assert "`evaluate:` section is ignored" in capsys.readouterr().err


def test_a_run_directory_is_evaluated_on_its_own_held_out_split(calls, tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "config.yaml").write_text("data:\n  heldout_fraction: 0.3\n  seed: 7\n")
    assert main(["evaluate", str(run)]) == 0
    (spec, kwargs), = calls[-1:]
    assert spec == str(run / "model") and (kwargs["heldout_fraction"], kwargs["split_seed"]) == (0.3, 7)
    assert main(["evaluate", str(run), "--eval.split_seed", "1"]) == 0
    assert (calls[-1][1]["heldout_fraction"], calls[-1][1]["split_seed"]) == (0.3, 1)


def test_help_lists_the_new_and_the_deprecated_flags(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    for flag in ("--eval.n_harmful", "--eval.kl", "--eval.judge", "-c CONFIG", "--quick", "--out", "--judge V"):
        assert flag in out
    assert "deprecated" in out and "--no-kl               = --eval.kl false" in out
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--report.out", "--report.runs", "--out V", "RUN_DIR"))


def test_report_runs_and_out_from_positionals_yaml_and_flags(calls, capsys, tmp_path):
    assert main(["report", "runs/a", "runs/b", "--out", "r"]) == 0
    assert calls[-1] == (["runs/a", "runs/b"], {"out": "r"})
    cfg = tmp_path / "report.yaml"
    cfg.write_text("report:\n  runs: [runs/x]\n  out: from_yaml\n")
    assert main(["report", "-c", str(cfg)]) == 0
    assert calls[-1] == (["runs/x"], {"out": "from_yaml"})
    assert main(["report", "runs/y", "-c", str(cfg), "--report.out", "o1", "--out", "o2"]) == 0
    assert calls[-1] == (["runs/y"], {"out": "o2"})
    capsys.readouterr()
    assert main(["report"]) == 2
    assert "field 'report.runs'" in capsys.readouterr().err


def test_version_flag_prints_the_package_version(capsys):
    from negalign.base.version import __version__
    from negalign.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"negalign {__version__}"
