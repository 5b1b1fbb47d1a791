"""`negalign evaluate` and `negalign report`: their flags, and a run directory read as its model.

Both take the core commands' flag style: `-c FILE`, every setting as `--eval.key VALUE` (or
`--report.key`), and a few short flags for the frequent ones (negalign.cli.eval_config).
"""

from __future__ import annotations

from pathlib import Path

from negalign.base.rundir import RunDir
from negalign.cli.eval_config import (EVAL_HELP, EVAL_KEYS, REPORT_KEYS, eval_settings, evaluate_kwargs,
                                      report_settings)
from negalign.cli.flags import add_config_flags, add_deprecated_flags, deprecation_warnings


# The frequent settings keep a short flag; the other old flags still work but warn (one release).
EVAL_SHORTCUTS = {
    "reference": ("eval.reference", "reference model (default: the bundled model) (= --eval.reference)"),
    "out": ("eval.out", "output folder (default: RUN_DIR/eval for a run directory, else ./eval) (= --eval.out)"),
    "quick": ("eval.quick", "small sets for a smoke run: 48 / 48 / 24 prompts (= --eval.quick true)", "true"),
    "judge": ("eval.judge", "'default' (the offline Qwen2.5-Coder-1.5B judge), 'none', a judge model folder "
                            "or .gguf, or an OpenAI-compatible base URL (with --eval.judge_model) (= --eval.judge)"),
}
EVAL_DEPRECATED = {
    "n-harmful": "eval.n_harmful", "n-benign": "eval.n_benign", "n-overrefusal": "eval.n_overrefusal",
    "n-heldout": "eval.n_heldout", "max-new-tokens": "eval.max_new_tokens", "batch-size": "eval.batch_size",
    "generation-precision": "eval.generation_precision", "judge-model": "eval.judge_model",
    "judge-batch-size": "eval.judge_batch_size", "judge-rubric": "eval.judge_rubric",
    "harm-classifier": "eval.harm_classifier", "seed": "eval.seed",
    "no-win-rate": ("eval.win_rate", "false"), "no-kl": ("eval.kl", "false"),
}


def add_evaluate_parser(sub) -> None:
    """`negalign evaluate MODEL [-c eval.yaml] [--eval.key VALUE ...]` on an argparse subparsers object."""
    p = sub.add_parser("evaluate", help="safety and helpfulness metrics of a model against a reference",
                       description="Generate on held-out harmful, benign and edgy-benign prompts and write "
                                   "eval.json (metrics with bootstrap 95% CIs) and generations.jsonl. Settings: "
                                   "a YAML file's eval: section (-c), then --eval.KEY VALUE flags; the last "
                                   "flag given wins.")
    p.add_argument("model", help="'default', a model folder (e.g. RUN_DIR/model), a .gguf, or a run directory")
    add_config_flags(p, EVAL_KEYS, EVAL_SHORTCUTS, key_help=EVAL_HELP,
                     config_help="YAML config with an eval: section (any key below can also be given as a flag)")
    add_deprecated_flags(p, EVAL_DEPRECATED, "deprecated spellings (they work, warn, and go in a later release)")


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="report.md and a self-contained report.html from run directories",
                       description="Tables with CIs, training curves, harm-vs-helpfulness frontier and "
                                   "per-category harm across runs. Settings: a YAML file's report: section "
                                   "(-c), then --report.KEY VALUE flags.")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR",
                   help="run directories, eval folders or eval.json files (= --report.runs)")
    add_config_flags(p, REPORT_KEYS, {"out": ("report.out", "output folder (default: ./report) (= --report.out)")},
                     config_help="YAML config with a report: section (any key below can also be given as a flag)")


def main_evaluate(args) -> int:
    from negalign.evaluation.evaluate import evaluate_model, summary_lines

    deprecation_warnings(args)
    settings = eval_settings(args)  # setting mistakes are reported before any model is read
    spec, default_out = RunDir.evaluation_target(args.model)
    run = RunDir(args.model)
    # The run's own config (for its model card and trackers), read first: a snapshot naming a tracker
    # whose package is missing fails now, not after the evaluation.
    run_cfg = own_run_config(run, spec, settings.out)
    run_data = run.read_config().get("data") if spec == str(run.model) else None
    out = settings.out or default_out
    result = evaluate_model(spec, out_dir=out,
                            **evaluate_kwargs(settings, run_data if isinstance(run_data, dict) else None))
    print("\n".join(summary_lines(result)))
    evaluate_behaviours(spec, settings.behaviours, out)
    if run_cfg is not None:
        after_run_evaluation(run, run_cfg, result)
    return 0


def evaluate_behaviours(spec: str, behaviours: list[str], out) -> None:
    """Each named behaviour's held-out evaluation into out/<behaviour>.json (a saved one is reused);
    the judge's weights are loaded once for all."""
    from negalign.evaluation.behaviour import behaviour_judge, evaluate_behaviour, saved_behaviour, summary_line

    judge = None
    for b in behaviours:
        result = saved_behaviour(spec, b, out)
        if result is None:
            judge = behaviour_judge(b, like=judge)  # a rubric of its own on the weights already loaded
            result = evaluate_behaviour(spec, b, out, judge=judge, log=lambda *_: None)
        print(summary_line(result))


def own_run_config(run: RunDir, spec: str, out: str | None):
    """The config of the run directory whose model is evaluated into its own eval/; else None."""
    if spec == str(run.model) and (out is None or Path(out) == run.eval_dir) and run.config.exists():
        from negalign.config import config_from_dict, read_yaml_mapping

        values = read_yaml_mapping(run.config)
        rdpo = values.pop("rdpo", None)   # an rDPO run's snapshot: its Config sections plus critique and rdpo
        values.pop("critique", None)
        cfg = config_from_dict(values, str(run.config))
        if isinstance(rdpo, dict):
            from negalign.recipes.rdpo import variant_method

            cfg.train.method = variant_method(rdpo.get("variant") or "rdpo")   # what it trained with
        return cfg
    return None


def after_run_evaluation(run: RunDir, cfg, result: dict) -> None:
    """A run directory's own evaluation updates its model card and goes to its trackers (train.report_to)."""
    import dataclasses
    import json

    from negalign.training.model_card import refresh_model_card
    from negalign.training.tracking import log_evaluation

    print(f"updated the model card {refresh_model_card(cfg, run.root)}")
    cfg = dataclasses.replace(cfg, run_dir=str(run.root))  # where the run is now, not where it was trained
    steps = json.loads(run.done.read_text(encoding="utf-8")).get("steps") if run.done.exists() else None
    if log_evaluation(cfg, result, steps):
        print(f"logged the results to {', '.join(cfg.train.report_to)} under {run.tracking}")


def main_report(args) -> int:
    from negalign.evaluation.report import build_report

    settings = report_settings(args)
    paths = build_report(settings.runs, settings.out)
    print(f"wrote {paths['md']} and {paths['html']}")
    return 0
