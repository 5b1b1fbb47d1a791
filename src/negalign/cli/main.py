"""`negalign` command line. Every config key is also a flag: `--train.lr 1e-5`, `--sample.k 8`.

User mistakes print one line (`negalign: error: FILE:LINE: field 'X': ...`) and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from negalign.base.errors import UserError
from negalign.cli.evaluate import add_evaluate_parser, add_report_parser, main_evaluate, main_report
from negalign.cli.flags import add_config_flags, config_keys, flag_overrides, unknown_arguments_error
from negalign.cli.rdpo import add_critique_parser, add_rdpo_parser, main_critique, main_rdpo
from negalign.config import Config, load_config

CONFIG_KEYS = config_keys(Config)
# Commands with their own parser module (negalign.cli.evaluate, negalign.cli.rdpo).
TOOL_COMMANDS = {"evaluate": main_evaluate, "report": main_report, "critique": main_critique, "rdpo": main_rdpo}
SHORTCUTS = {  # short flags for the keys people change most
    "run_dir": "run_dir", "model": "model.name", "data": "data.source", "method": "train.method",
    "k": "sample.k", "steps": "train.max_steps", "lr": "train.lr", "lora": "model.lora.enabled",
}


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Environment variables, not `import transformers` (2+ s): data and config errors answer at once.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (a flag without its value, an ambiguous abbreviation) as one line, exit 2."""

    def error(self, message: str):
        print(f"negalign: error: {' '.join(message.split())}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def _config(args):
    return load_config(getattr(args, "config", None), flag_overrides(args, CONFIG_KEYS))


def build_parser() -> argparse.ArgumentParser:
    # Subparsers inherit the parser class, so every command's argparse errors are one line too.
    from negalign.base.version import __version__

    parser = OneLineParser(prog="negalign", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"negalign {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, text in (("sample", "sample K anchors per prompt from the reference model"),
                       ("reference", "score anchors and negatives under the reference model(s), cached"),
                       ("train", "train with the configured method (runs `reference` when missing)"),
                       ("run", "every stage in order: sample, reference, train")):
        p = sub.add_parser(name, help=text, description=text)
        if name == "run":
            p.add_argument("config_file", nargs="?", help="YAML config (same as -c)")
        add_config_flags(p, CONFIG_KEYS, {flag.replace("_", "-"): key for flag, key in SHORTCUTS.items()})
        if name in ("train", "run"):
            p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")

    p = sub.add_parser("demo", help="the whole pipeline on the bundled model and data (about 15 minutes on 2 CPU cores)")
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--fresh", action="store_true", help="delete the demo run directory first")

    add_evaluate_parser(sub)
    add_report_parser(sub)
    add_critique_parser(sub)
    add_rdpo_parser(sub)

    p = sub.add_parser("data", help="data tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    v = dsub.add_parser("validate", help="check a data file and print a summary (exit code 2 on bad input)")
    v.add_argument("source")
    v.add_argument("--format")
    v.add_argument("--preset")

    p = sub.add_parser("runs", help="one line per run directory under a folder: method, stage reached, results")
    p.add_argument("root", nargs="?", default="runs")
    p.add_argument("--json", action="store_true", help="print JSON instead")

    p = sub.add_parser("serve", help="serve a model over the OpenAI chat-completions protocol on this machine")
    p.add_argument("--model", default="default")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-env", help="require this environment variable's value as bearer token")
    p.add_argument("--served-model-name", help="the model's name in /v1/models and in requests (default: --model)")
    return parser


def _run(args) -> int:
    if args.command in ("sample", "reference", "train", "run"):
        if args.command == "run" and args.config_file:
            args.config = args.config_file
        cfg = _config(args)  # before importing torch: config mistakes are reported at once
        from negalign.recipes import d2o

        if args.command == "sample":
            d2o.stage_sample(cfg)
        elif args.command == "reference":
            d2o.stage_reference(cfg)
        elif args.command == "train":
            d2o.stage_train(cfg, resume=args.resume)
        else:
            d2o.stage_all(cfg, resume=args.resume)
        return 0
    if args.command == "demo":
        from negalign.recipes.demo import run_demo

        run_demo(args.run_dir, fresh=args.fresh)
        return 0
    if args.command in TOOL_COMMANDS:
        return TOOL_COMMANDS[args.command](args)
    if args.command == "data":
        from negalign.data.loaders import validate_file

        summary = validate_file(args.source, format=args.format, preset=args.preset)
        print(f"{args.source}: ok: " + ", ".join(f"{v} {k}" for k, v in summary.items()))
        return 0
    if args.command == "serve":
        return _serve(args)
    if args.command == "runs":
        import json

        from negalign.recipes.runs import find_runs, format_summary, run_summary

        summaries = [run_summary(r) for r in find_runs(args.root)]
        print(json.dumps(summaries, indent=1) if args.json else
              "\n".join(format_summary(s) for s in summaries) or f"no run directories under {args.root}")
        return 0
    raise AssertionError(args.command)


def _serve(args) -> int:
    import time

    from negalign.generation.server import serve
    from negalign.generation.transformers_backend import TransformersGenerator
    from negalign.modeling.loading import load_model

    model, tok = load_model(args.model)
    token = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not token:
        raise UserError(f"environment variable {args.api_key_env} is empty", field="--api-key-env")
    name = args.served_model_name or args.model
    server = serve(TransformersGenerator(model, tok), host=args.host, port=args.port, api_key=token, model_name=name)
    print(f"serving {args.model} as model '{name}' at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args, extras = build_parser().parse_known_args(argv)
    try:
        if extras:  # an unknown `--section.key` is a user mistake like any other: one line naming it
            raise unknown_arguments_error(extras, args, getattr(args, "command", "") or "")
        _quiet_libraries()
        return _run(args)
    except UserError as e:
        print(f"negalign: error: {e.format()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("negalign: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
