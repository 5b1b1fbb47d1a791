"""`negalign rdpo` and `negalign critique`: every rDPO config key as a `--section.key VALUE` flag."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from negalign.cli.flags import add_config_flags, config_keys, flag_overrides, set_overrides
from negalign.config import Config
from negalign.recipes.critique import CritiqueConfig, preset_names
from negalign.recipes.rdpo import VARIANTS, RdpoConfig, RdpoSettings, load_rdpo_config


def rdpo_keys() -> dict[str, Any]:
    """Every key of an rDPO config with its type: the Config sections plus `critique` and `rdpo`."""
    return {**config_keys(Config), **config_keys(CritiqueConfig, "critique"), **config_keys(RdpoConfig, "rdpo")}


def settings_from_args(args: argparse.Namespace) -> RdpoSettings:
    """The settings of an `rdpo` or `critique` command line: the config file, then the deprecated
    `--set` pairs, then the `--section.key` flags (so a flag wins over `--set`)."""
    overrides = set_overrides(getattr(args, "set", None) or [])
    overrides.update(flag_overrides(args, rdpo_keys()))
    return load_rdpo_config(getattr(args, "config_file", None) or getattr(args, "config", None), overrides)


def _rdpo_flags(p: argparse.ArgumentParser, shortcuts: dict) -> None:
    """-c, the short flags, every rDPO config key as `--section.key`, and the deprecated `--set
    SECTION.KEY=VALUE` (kept one release for old scripts; it warns)."""
    add_config_flags(p, rdpo_keys(), shortcuts,
                     config_help="rDPO YAML config (any key below can also be given as a flag)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="deprecated: write --SECTION.KEY VALUE")


def _command(sub, name: str, text: str, description: str, config_file: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=text, description=description)
    p.add_argument("config_file", nargs="?", help=f"rDPO YAML config{config_file} (same as -c)")
    return p


def add_rdpo_parser(sub) -> None:
    p = _command(sub, "rdpo", "rDPO end to end: critique, score, pairs, train (one YAML config)",
                 "rDPO end to end from one YAML config: teacher critique and revision, scoring, soft-labelled "
                 "pairs, DPO training. Every stage is cached in the run directory, so rerunning the command "
                 "resumes. Any config key is also a flag: --train.tau 0.5, --rdpo.filter_not_better true.",
                 ", e.g. configs/rdpo_safety.yaml")
    p.add_argument("--resume", action="store_true", help="continue training from the last checkpoint")
    _rdpo_flags(p, {
        "run-dir": "run_dir", "model": "model.name",
        "variant": ("rdpo.variant", f"{' | '.join(VARIANTS)} (= --rdpo.variant)"),
        "limit": ("critique.limit", "first N prompts (= --critique.limit)")})


def add_critique_parser(sub) -> None:
    p = _command(sub, "critique", "rDPO data: teacher answer, critique and revision per prompt",
                 "rDPO data: for each prompt the teacher answers, critiques its answer against the preset's "
                 "principle and revises it; writes critique.jsonl in the run directory (resumable). Any "
                 "config key is also a flag: --critique.max_new_tokens 64.",
                 ", its critique section is used")
    _rdpo_flags(p, {
        "preset": ("critique.preset", f"one of {', '.join(preset_names())} or a preset .yaml file"),
        "teacher": ("critique.teacher", "teacher spec: a model | llamacpp:MODEL | openai:MODEL@BASE_URL | http://HOST/v1"),
        "model": ("model.name", "student/teacher model when no teacher is given (default: bundled)"),
        "limit": ("critique.limit", "first N prompts (= --critique.limit)"),
        "run-dir": ("run_dir", "where critique.jsonl goes")})


def main_rdpo(args: argparse.Namespace) -> int:
    from negalign.recipes.rdpo import run_rdpo

    out = run_rdpo(settings_from_args(args), resume=args.resume)
    print(f"rdpo: model saved to {out}")
    return 0


def main_critique(args: argparse.Namespace) -> int:
    """Exit 0 when at least one prompt succeeded (the others' counts are printed); none is a UserError."""
    from negalign.recipes.critique import OK, critique_counts, describe_counts
    from negalign.recipes.rdpo import stage_critique

    settings = settings_from_args(args)
    rows = stage_critique(settings)
    counts = critique_counts(rows)
    print(f"critique: {counts[OK]} of {len(rows)} prompts ok ({describe_counts(counts)}); rows in "
          f"{Path(settings.cfg.run_dir) / settings.critique.output}")
    return 0
