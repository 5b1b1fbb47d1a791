"""rDPO: critique -> scores -> soft-labelled pairs -> DPO training, from one YAML config.

Pairs: chosen = the teacher's revision y_r, rejected = its original answer y_o. A scorer
(negalign.evaluation.scorers.make_scorer spec, oriented so that higher = better) gives s_r and s_o, and
the pair's label is p = sigmoid((s_r - s_o) / tau) (losses.soft_label, tau = train.tau).
Training uses the objective "dpo_pairs" (chosen in the anchor slot with K = 1, rejected in the
negative slot), i.e. losses.dpo_loss(..., label=p). Variants on the same pairs:

    rdpo  label p (soft)               dpo   label 1
    cdpo  label 1 - epsilon (constant) sft   SFT on the revisions ("sft_anchors")

Run directory: config.yaml (the full config), critique.jsonl (+ .meta.json), pairs.scores.jsonl
(raw scores, appended as scored), pairs.jsonl (kept pairs), pairs.dropped.jsonl (dropped, with
reasons), pairs.stats.json, hold/ (with data.hold: the initial model's answers to benign prompts,
trained to keep their likelihood beside the pairs, as D2O's hold groups), reference.safetensors,
train/, model/.

rdpo.extra_pairs lists pairs.jsonl files that other rDPO runs wrote (another preset, its own scorer): their
pairs are trained on after this run's, each with the label its own run gave it, so one student learns
several principles at once (for role-play, whose pairs alone raised judged harm, beside safety's).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from negalign import config as config_module
from negalign.modeling.precision import PRECISIONS
from negalign.base.errors import UserError, located
from negalign.base.fingerprint import fingerprint
from negalign.base.io import JsonlAppender, read_jsonl_tolerant, write_json, write_jsonl
from negalign.base.rundir import RunDir
from negalign.config import Config, config_from_dict
from negalign.data.dataset_presets import RowProblem, check_prompt, check_response
from negalign.data.loaders import jsonl_objects
from negalign.data.records import Example, normalize_prompt
from negalign.generation.factory import checked_spec
from negalign.recipes.critique import (OK, REVISION_TURNS, CritiqueConfig, build_prompts, critique_counts, make_teacher,
                                      preset_for, read_critiques, require_success, run_critique, teacher_spec)

VARIANTS = ("rdpo", "dpo", "cdpo", "sft")

# Which way each scorer type points. The pair scores are oriented so that higher = better.
HIGHER_IS_BETTER = {"harm_classifier": False, "judge": False, "refusal": True, "reward_model": True}
# A preset's default scorer; presets without one need `rdpo.scorer` (a reward model or a judge).
# safety: the offline judge, which agrees with pyrit's human labels (benchmarks/scorers); the MiniLM
# harm classifier is blind to vague compliance and stays available as rdpo.scorer: harm_classifier.
# roleplay: the same judge asked plain_answer (does the reply answer plainly, as an assistant): its labels
# agree with 21 of 25 pairs read by eye, in_persona's with 5 (it ranks refusals first; benchmarks/rdpo).
# sycophancy: the judge asked corrects_claim (does the reply say the claim is false and what is true), best with
# rdpo.scorer_reads: request (the claim alone): its labels take the eye's side on 15 of 16 pairs read blind;
# agrees_claim, the evaluation's question, scores a refusal as well as a correction.
PRESET_SCORERS = {"safety": "judge", "roleplay": {"type": "judge", "rubric": "plain_answer", "probe": "none"},
                  "sycophancy": {"type": "judge", "rubric": "corrects_claim", "probe": "none"}}


@dataclass
class RdpoConfig:
    """The `rdpo` section of an rDPO config (the label temperature is train.tau)."""
    variant: str = "rdpo"                 # rdpo | dpo | cdpo | sft
    scorer: Any = None                    # make_scorer spec; empty = the preset's default
    higher_is_better: bool | None = None  # empty = by scorer type (harm_classifier, judge: lower is better)
    scorer_reads: str = "message"         # the prompt the scorer sees: the training message, or "request": the
                                          # preset's request before its wrapper (a rubric that wants a claim alone)
    filter_not_better: bool = False       # drop pairs whose revision does not score above the original
    min_margin: float = 0.0               # with the filter: require s_r - s_o > min_margin
    drop_refusing_revisions: bool = False # drop pairs whose revision refuses (RefusalDetector), before scoring: for
                                          # principles that ask for an answer (roleplay, sycophancy), a refusal
                                          # is not the better answer, whatever the scorer says
    cdpo_epsilon: float = 0.1             # cDPO's constant label is 1 - epsilon
    extra_pairs: list[str] = field(default_factory=list)  # pairs.jsonl files of other rdpo runs, trained on beside
                                          # this run's with their own labels: one student, several principles
    pairs_per_write: int = 16             # pairs scored per scorer call, then saved (a rerun resumes there)


@dataclass
class RdpoSettings:
    cfg: Config
    critique: CritiqueConfig
    rdpo: RdpoConfig
    where: str | None = None

    def to_dict(self) -> dict:
        return {**self.cfg.to_dict(), "critique": asdict(self.critique), "rdpo": asdict(self.rdpo)}


# ---------------------------------------------------------------- config

def rdpo_settings_from_dict(values: dict, where: str | None = None) -> RdpoSettings:
    values = dict(values or {})
    crit = values.pop("critique", None) or {}
    rd = values.pop("rdpo", None) or {}
    for name, section in (("critique", crit), ("rdpo", rd)):
        if not isinstance(section, dict):
            raise UserError("expected a mapping", path=where, field=name)
    cfg = config_from_dict(values, where)
    settings = RdpoSettings(cfg, config_module.build_section(CritiqueConfig, crit, "critique", where),
                            config_module.build_section(RdpoConfig, rd, "rdpo", where), where)
    check_settings(settings)
    settings.cfg.train.method = variant_method(settings.rdpo.variant)   # so the run's config.yaml says it
    return settings


def check_settings(s: RdpoSettings) -> None:
    r, w = s.rdpo, s.where
    if r.variant not in VARIANTS:
        raise UserError(f"unknown variant {r.variant!r}; choose from {', '.join(VARIANTS)}", path=w,
                        field="rdpo.variant")
    if not 0.0 <= r.cdpo_epsilon < 0.5:
        raise UserError(f"must be in [0, 0.5), got {r.cdpo_epsilon}", path=w, field="rdpo.cdpo_epsilon")
    if not (s.cfg.train.tau > 0 and math.isfinite(s.cfg.train.tau)):
        raise UserError(f"must be a positive number, got {s.cfg.train.tau}", path=w, field="train.tau")
    c = s.critique
    if c.precision not in PRECISIONS:
        raise UserError(f"must be one of {', '.join(PRECISIONS)}, got {c.precision!r}", path=w,
                        field="critique.precision")
    if c.revision_turn not in REVISION_TURNS:
        raise UserError(f"must be one of {', '.join(REVISION_TURNS)}, got {c.revision_turn!r}", path=w,
                        field="critique.revision_turn")
    if c.teacher not in (None, "", {}):
        checked_spec(c.teacher, where=w, field="critique.teacher")
    if c.limit is not None and c.limit < 1:
        raise UserError("must be at least 1", path=w, field="critique.limit")
    for key in ("max_new_tokens", "critique_max_new_tokens", "prompts_per_write"):
        if getattr(c, key) < 1:
            raise UserError("must be at least 1", path=w, field=f"critique.{key}")
    for path in r.extra_pairs:
        if not Path(path).is_file():
            raise UserError(f"no such file: {path} (a pairs.jsonl that another rdpo run wrote)", path=w,
                            field="rdpo.extra_pairs")
    if r.pairs_per_write < 1:
        raise UserError("must be at least 1", path=w, field="rdpo.pairs_per_write")
    if r.scorer_reads not in SCORER_READS:
        raise UserError(f"must be one of {', '.join(SCORER_READS)}, got {r.scorer_reads!r}", path=w,
                        field="rdpo.scorer_reads")
    if r.scorer not in (None, "", {}):
        from negalign.evaluation.scorers import checked_scorer_spec

        with located(w, "rdpo"):   # a typo in the scorer fails here, not after the critique
            checked_scorer_spec(r.scorer)


def load_rdpo_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RdpoSettings:
    """Read an rDPO YAML config (Config sections plus `critique` and `rdpo`), then dotted overrides."""
    values = config_module.read_yaml_mapping(path) if path is not None else {}
    where = None if path is None else str(path)
    config_module.apply_overrides(values, overrides or {})
    return rdpo_settings_from_dict(values, where)


# ---------------------------------------------------------------- scores, labels, filter

def scorer_spec(s: RdpoSettings) -> tuple[Any, bool]:
    """The scorer spec and its orientation (True: higher raw score = better answer)."""
    spec = s.rdpo.scorer
    if spec in (None, "", {}):
        spec = PRESET_SCORERS.get(Path(s.critique.preset).stem)
        if spec is None:
            raise UserError(f"preset {s.critique.preset!r} has no default scorer; set rdpo.scorer to a reward "
                            f"model (reward_model:PATH) or a judge", path=s.where, field="rdpo.scorer")
    if s.rdpo.higher_is_better is not None:
        return spec, s.rdpo.higher_is_better
    kind = spec.get("type") if isinstance(spec, dict) else str(spec).partition(":")[0]
    return spec, HIGHER_IS_BETTER.get(kind, True)


def same_text(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


SCORER_READS = ("message", "request")


def scorer_view(rows: list[dict], reads: str) -> list[dict]:
    """The rows as the scorer sees them: with `reads` == "request" the prompt is the preset's unwrapped
    request (meta.request) as one user turn, e.g. the false claim alone instead of the user's pressure."""
    if reads == "message":
        return rows
    missing = next((r["id"] for r in rows if not (r.get("meta") or {}).get("request")), None)
    if missing is not None:
        raise UserError(f"critique row {missing!r} has no meta.request (rows made from a preset have one)",
                        field="rdpo.scorer_reads")
    return [{**r, "prompt": [{"role": "user", "content": r["meta"]["request"]}]} for r in rows]


def score_rows(rows: list[dict], scorer, higher_is_better: bool) -> tuple[list[float], list[float]]:
    """(s_o, s_r) for each row, oriented so that higher = better; one scorer call for all answers."""
    if not rows:
        return [], []
    prompts = [r["prompt"] for r in rows] * 2
    answers = [r["original"] for r in rows] + [r["revision"] for r in rows]
    raw = [float(x) for x in scorer.score(prompts, answers)]
    if len(raw) != len(answers):
        raise UserError(f"scorer returned {len(raw)} scores for {len(answers)} answers", field="rdpo.scorer")
    sign = 1.0 if higher_is_better else -1.0
    oriented = [sign * x for x in raw]
    return oriented[:len(rows)], oriented[len(rows):]


def score_rows_resumably(run: RunDir, rows: list[dict], scorer_factory, scorer_desc: Any, higher_is_better: bool,
                         per_write: int, log=print) -> tuple[list[float], list[float]]:
    """`score_rows`, chunk by chunk, each chunk's raw scores appended to pairs.scores.jsonl.

    A rerun (after a kill, or with another tau or filter) scores only the rows not saved under the
    same scorer. Chunks have fixed boundaries and an interrupted one is scored again whole, so each
    row is scored in the same batch as in an uninterrupted run (same numbers). `scorer_factory()` is
    called only if something is left to score.
    """
    keys = [fingerprint({"scorer": scorer_desc, "prompt": r["prompt"], "original": r["original"],
                         "revision": r["revision"]}) for r in rows]
    saved = {row["key"]: row for row in read_jsonl_tolerant(run.pair_scores)}
    todo = [k for k in range(0, len(rows), per_write) if any(key not in saved for key in keys[k:k + per_write])]
    if todo:
        scorer = scorer_factory()
        with JsonlAppender(run.pair_scores) as out:
            for k in todo:
                s_o, s_r = score_rows(rows[k:k + per_write], scorer, True)
                for row, key, o, r in zip(rows[k:k + per_write], keys[k:k + per_write], s_o, s_r):
                    if key not in saved:
                        saved[key] = {"id": row["id"], "key": key, "original": o, "revision": r}
                        out.write(saved[key])
                log(f"pairs: scored {sum(key in saved for key in keys)}/{len(rows)} pairs")
    sign = 1.0 if higher_is_better else -1.0
    return [sign * saved[key]["original"] for key in keys], [sign * saved[key]["revision"] for key in keys]


@dataclass
class PairStats:
    """Where every critique row went: teacher skips, pair drops by reason, and the kept pairs."""
    prompts: int = 0
    teacher: dict[str, int] = field(default_factory=dict)   # critique statuses (ok, empty_*, teacher_error)
    dropped: dict[str, int] = field(default_factory=dict)   # identical, revision_refuses, score_nan, not_better
    kept: int = 0
    label_mean: float | None = None
    margin_mean: float | None = None                        # mean s_r - s_o over kept pairs
    revision_better: int = 0                                # kept pairs with s_r > s_o

    def summary(self) -> str:
        skipped = {k: v for k, v in self.teacher.items() if k != OK}
        parts = [f"{self.kept}/{self.prompts} pairs kept"]
        if skipped:
            parts.append("teacher: " + ", ".join(f"{v} {k}" for k, v in skipped.items()))
        if self.dropped:
            parts.append("dropped: " + ", ".join(f"{v} {k}" for k, v in self.dropped.items()))
        if self.kept:
            parts.append(f"revision scored higher in {self.revision_better}/{self.kept}, mean label "
                         f"{self.label_mean:.3f}, mean margin {self.margin_mean:+.4f}")
        return "; ".join(parts)


def make_pairs(rows: list[dict], scores_original: list[float], scores_revision: list[float], *, tau: float,
               filter_not_better: bool = False, min_margin: float = 0.0) -> tuple[list[dict], list[dict], PairStats]:
    """Pairs (chosen = revision, rejected = original) with soft labels, the dropped rows, and stats.

    `rows` are the scorable critique rows (status ok, revision differs from the original), in the
    order of the scores. Drops: a NaN score ("score_nan"), and with the filter a revision that does
    not beat the original by more than `min_margin` ("not_better").
    """
    import torch

    from negalign.objectives.losses import soft_label

    stats = PairStats(prompts=len(rows))
    kept, dropped = [], []
    labels = soft_label(torch.tensor(scores_revision, dtype=torch.float64),
                        torch.tensor(scores_original, dtype=torch.float64), tau=tau).tolist() if rows else []
    for row, s_o, s_r, p in zip(rows, scores_original, scores_revision, labels):
        reason = None
        if not (math.isfinite(s_o) and math.isfinite(s_r)):
            reason = "score_nan"
        elif filter_not_better and not s_r - s_o > min_margin:
            reason = "not_better"
        pair = {"id": row["id"], "prompt": row["prompt"], "chosen": row["revision"], "rejected": row["original"],
                "score_chosen": s_r, "score_rejected": s_o, "label": p, "meta": row.get("meta", {})}
        if reason:
            stats.dropped[reason] = stats.dropped.get(reason, 0) + 1
            dropped.append({**pair, "reason": reason})
        else:
            kept.append(pair)
    stats.kept = len(kept)
    if kept:
        stats.label_mean = sum(p["label"] for p in kept) / len(kept)
        stats.margin_mean = sum(p["score_chosen"] - p["score_rejected"] for p in kept) / len(kept)
        stats.revision_better = sum(p["score_chosen"] > p["score_rejected"] for p in kept)
    return kept, dropped, stats


def split_scorable(rows: list[dict], *, drop_refusing: bool = False) -> tuple[list[dict], list[dict], dict[str, int]]:
    """(rows to score, rows dropped before scoring with their reason, critique counts). Drops: an unchanged
    revision ("identical"), and with `drop_refusing` a revision the RefusalDetector calls a refusal
    ("revision_refuses")."""
    counts = critique_counts(rows)
    ok = [r for r in rows if r["status"] == OK]
    refuses = refusing_revisions(ok) if drop_refusing else [False] * len(ok)
    scorable, dropped = [], []
    for r, refused in zip(ok, refuses):
        reason = "identical" if same_text(r["original"], r["revision"]) else "revision_refuses" if refused else None
        if reason:
            dropped.append({"id": r["id"], "prompt": r["prompt"], "chosen": r["revision"], "rejected": r["original"],
                            "reason": reason, "meta": r.get("meta", {})})
        else:
            scorable.append(r)
    return scorable, dropped, counts


def refusing_revisions(rows: list[dict]) -> list[bool]:
    """Per critique row: whether the RefusalDetector calls its revision a refusal (an empty one counts)."""
    from negalign.evaluation.scorers import RefusalDetector

    detector = RefusalDetector()
    return [detector.is_refusal(r["revision"], r["prompt"]) for r in rows]


# ---------------------------------------------------------------- training data

def pair_examples(pairs: list[dict]) -> tuple[list[Example], dict[str, list[str]]]:
    """Pairs as examples (rejected = the negative) and anchors (chosen = the single anchor)."""
    examples = [Example(id=p["id"], prompt=p["prompt"], negatives=[p["rejected"]], positives=[p["chosen"]])
                for p in pairs]
    return examples, {p["id"]: [p["chosen"]] for p in pairs}


def checked_pair(row: dict, path: str, line: int) -> dict:
    """One row of a pairs.jsonl read from outside this run: prompt, chosen and rejected checked as a dataset's
    rows are (data.dataset_presets), a string id and a label in [0, 1]."""
    try:
        prompt = check_prompt(row.get("prompt"))
        chosen, rejected = check_response(row.get("chosen"), "chosen"), check_response(row.get("rejected"), "rejected")
    except RowProblem as e:
        raise UserError(e.message, path=path, line=line, field=e.field) from None
    if not isinstance(row.get("id"), str) or not row["id"].strip():
        raise UserError("missing, or not a non-empty string", path=path, line=line, field="id")
    label = row.get("label")
    if isinstance(label, bool) or not isinstance(label, (int, float)) or not 0.0 <= label <= 1.0:
        raise UserError(f"expected a number in [0, 1], got {label!r}", path=path, line=line, field="label")
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    return {"id": row["id"], "prompt": prompt, "chosen": chosen, "rejected": rejected, "label": float(label),
            "meta": {**meta, "from": path}}


def with_extra_pairs(pairs: list[dict], paths: list[str], log=print) -> list[dict]:
    """This run's pairs followed by those of `paths` (rdpo.extra_pairs), each with the label its own run gave
    it. The same pair twice (id, prompt, chosen and rejected: the same file listed twice, or this run's own
    pairs.jsonl) is an error; a taken id on other replies (another critique draw of the same prompt: ids come
    from the prompt) becomes id~2, id~3, ..., since training keys its examples by id."""
    out, seen = list(pairs), {p["id"]: ("this run", p) for p in pairs}
    renamed = 0
    for path in paths:
        for n, obj in jsonl_objects(path):
            row = checked_pair(obj, path, n)
            if row["id"] in seen:
                where, other = seen[row["id"]]
                if all(row[k] == other[k] for k in ("chosen", "rejected")) and row["prompt"] == normalize_prompt(
                        other["prompt"]):   # row's prompt is already messages (check_prompt)
                    raise UserError(f"pair {row['id']!r} is already in {where}", path=path, line=n, field="id")
                row["id"] = next(f"{row['id']}~{k}" for k in range(2, len(seen) + 3) if f"{row['id']}~{k}" not in seen)
                renamed += 1
            seen[row["id"]] = (path, row)
            out.append(row)
    if paths:
        log(f"rdpo: {len(pairs)} pairs of this run and {len(out) - len(pairs)} from rdpo.extra_pairs"
            + (f" ({renamed} with an id already taken by other replies to the same prompt, renamed id~N)"
               if renamed else ""))
    return out


def variant_method(variant: str) -> str:
    return "sft_anchors" if variant == "sft" else "dpo_pairs"


def variant_labels(pairs: list[dict], variant: str, epsilon: float = 0.1) -> "torch.Tensor | None":
    """Per-pair labels: rDPO's soft labels, cDPO's constant 1 - epsilon; None (= 1) for DPO and SFT."""
    import torch  # here, not at the top: `negalign --help` should not load torch

    if variant == "rdpo":
        return torch.tensor([float(p["label"]) for p in pairs], dtype=torch.float32)
    if variant == "cdpo":
        return torch.full((len(pairs),), 1.0 - epsilon, dtype=torch.float32)
    if variant in ("dpo", "sft"):
        return None
    raise UserError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}", field="rdpo.variant")


def pair_train_data(cfg: Config, tokenizer, pairs: list[dict], variant: str, epsilon: float, *,
                    reference=None, log=print):
    """TrainData for `variant`: groups [chosen, rejected] per pair, K = 1, labels, reference scores.

    With data.hold, the hold groups (benign prompts, the initial model's own answers, no rejected
    response; their anchors must be sampled: stage_train does it) follow the pairs, K becomes
    sample.k, and their labels are 1 (unused). `reference` (ReferenceScores of the same groups) is
    reused when given; otherwise it is computed (and cached in the run directory) for the methods
    that need one.
    """
    import torch

    from negalign.objectives.registry import get_objective
    from negalign.training.groups import Tokenizer, build_groups, group_index
    from negalign.training.hold import append_hold_groups
    from negalign.training.reference import run_reference
    from negalign.training.step import TrainData

    examples, anchors = pair_examples(pairs)
    tok = Tokenizer(tokenizer, cfg.data.max_prompt_tokens, cfg.data.max_response_tokens)
    groups = build_groups(tok, examples, group_index(examples), anchors)
    k, labels = 1, variant_labels(pairs, variant, epsilon)
    held = append_hold_groups(cfg, tok, groups, log=log)
    if held:
        k = max(1, cfg.sample.k)
        if labels is not None:
            labels = torch.cat([labels, torch.ones(held, dtype=labels.dtype)])
    if tok.stats.prompts or tok.stats.responses:
        log(f"data: {tok.stats.summary()}")
    if reference is None and get_objective(variant_method(variant)).needs_reference:
        from negalign.training.models import load_plain

        reference = run_reference(cfg, groups, k, lambda spec: load_plain(cfg, spec)[0], log=log)
    return TrainData(groups=groups, n_anchors=k, reference=reference, labels=labels)


# ---------------------------------------------------------------- stages

def prepare(settings: RdpoSettings) -> RunDir:
    run = RunDir(settings.cfg.run_dir).prepare()
    run.save_config(settings.to_dict())
    return run


def stage_critique(settings: RdpoSettings, *, teacher=None, exclude: set[str] | None = None,
                   log=print) -> list[dict]:
    """critique.jsonl for the configured preset; `teacher` (a ChatGenerator) replaces the configured one.

    Raises a UserError when not one prompt succeeded (require_success)."""
    run = prepare(settings)
    c = settings.critique
    preset = preset_for(c, settings.where)
    prompts = build_prompts(preset, limit=c.limit, exclude=exclude or set())
    if not prompts:
        raise UserError("the preset yields no prompts", path=preset.where, field="prompt_sets")
    path = run / c.output
    done = read_critiques(path)
    if all(p.id in done and done[p.id]["status"] != "error" for p in prompts):
        rows = [done[p.id] for p in prompts]
        log(f"critique: all {len(prompts)} prompts already done")
    else:
        teacher, desc = _teacher(settings) if teacher is None else (teacher, repr(teacher))
        rows = run_critique(prompts, preset, teacher, c, path, teacher_desc=desc, log=log)
    require_success(rows, path)
    return rows


def _teacher(settings: RdpoSettings) -> tuple[Any, Any]:
    """The configured teacher and its description; a local one shares the student's loading settings."""
    c = settings.critique
    model = tok = None
    spec = teacher_spec(c, settings.cfg.model.name)
    if spec.get("backend") in ("transformers", "auto"):
        from negalign.training.models import load_plain

        model, tok = load_plain(settings.cfg, spec.get("model"), c.precision)
    return make_teacher(c, settings.cfg.model.name, model=model, tokenizer=tok, where=settings.where)


def _make_scorer(spec: Any, where: str | None):
    from negalign.evaluation.scorers import make_scorer

    with located(where, "rdpo"):  # the scorer's errors name its keys from "scorer"
        return make_scorer(spec)


def stage_pairs(settings: RdpoSettings, rows: list[dict], *, scorer=None, log=print) -> tuple[list[dict], PairStats]:
    """Score, label and filter; writes pairs.jsonl, pairs.dropped.jsonl and pairs.stats.json (cached)."""
    run = RunDir(settings.cfg.run_dir)
    spec, higher = scorer_spec(settings)
    r = settings.rdpo
    key = fingerprint({"rows": [[x["id"], x["status"], x["original"], x["revision"]] for x in rows],
                       "scorer": spec if scorer is None else repr(scorer), "higher_is_better": higher,
                       "tau": settings.cfg.train.tau, "filter": r.filter_not_better, "min_margin": r.min_margin,
                       **({"scorer_reads": r.scorer_reads} if r.scorer_reads != "message" else {}),
                       **({"drop_refusing_revisions": True} if r.drop_refusing_revisions else {})})
    if run.pairs_stats.exists() and run.pairs.exists():
        saved = json.loads(run.pairs_stats.read_text(encoding="utf-8"))
        if saved.get("fingerprint") == key:
            pairs = read_jsonl_tolerant(run.pairs)
            stats = PairStats(**saved["stats"])
            log(f"pairs: cached; {stats.summary()}")
            return pairs, stats
    scorable, early_drops, counts = split_scorable(rows, drop_refusing=r.drop_refusing_revisions)
    log(f"pairs: scoring {len(scorable)} pairs with {spec if isinstance(spec, str) else spec.get('type')} "
        f"({'higher' if higher else 'lower'} raw score = better), tau={settings.cfg.train.tau}")
    s_o, s_r = score_rows_resumably(run, scorer_view(scorable, r.scorer_reads),
                                    lambda: scorer or _make_scorer(spec, settings.where),
                                    spec if scorer is None else repr(scorer), higher, r.pairs_per_write, log=log)
    pairs, dropped, stats = make_pairs(scorable, s_o, s_r, tau=settings.cfg.train.tau,
                                       filter_not_better=r.filter_not_better, min_margin=r.min_margin)
    stats.prompts = len(rows)
    stats.teacher = counts
    if early_drops:
        stats.dropped = {**Counter(d["reason"] for d in early_drops), **stats.dropped}
    write_jsonl(run.pairs, pairs)
    write_jsonl(run.pairs_dropped, early_drops + dropped)
    write_json(run.pairs_stats, {"fingerprint": key, "stats": asdict(stats)})
    log(f"pairs: {stats.summary()}")
    return pairs, stats


def stage_train(settings: RdpoSettings, pairs: list[dict], *, reference=None, resume: bool = False,
                log=print):
    """Train the configured variant on `pairs`; returns (model folder, reference scores or None)."""
    from negalign.training.loop import run_train
    from negalign.training.models import load_policy

    cfg, r = settings.cfg, settings.rdpo
    cfg.train.method = variant_method(r.variant)
    run = RunDir(cfg.run_dir)
    if run.trained(log):
        log(f"train: already finished; the model is in {run.model}")
        return run.model, reference
    pairs = with_extra_pairs(pairs, r.extra_pairs, log=log)
    if not pairs:
        raise UserError("no pairs to train on: every critique row was skipped or dropped (see pairs.stats.json)",
                        path=str(run.pairs_stats))
    if cfg.data.hold:
        from negalign.recipes.d2o import stage_sample_hold

        stage_sample_hold(cfg, log=log)   # the initial model's answers to the benign hold prompts (resumable)
    model, tokenizer = load_policy(cfg)
    data = pair_train_data(cfg, tokenizer, pairs, r.variant, r.cdpo_epsilon, reference=reference, log=log)
    log(f"rdpo: variant {r.variant} (method {cfg.train.method}) on {len(pairs)} pairs")
    return run_train(cfg, model, tokenizer, data, resume=resume, log=log), data.reference


def run_rdpo(config: str | Path | dict | RdpoSettings, overrides: dict[str, Any] | None = None, *,
             resume: bool = False, log=print) -> Path:
    """critique -> scores -> pairs -> training in one call; returns the trained model's folder."""
    if isinstance(config, RdpoSettings):
        settings = config
    elif isinstance(config, dict):
        values = dict(config)
        config_module.apply_overrides(values, overrides or {})
        settings = rdpo_settings_from_dict(values)
    else:
        settings = load_rdpo_config(config, overrides)
    rows = stage_critique(settings, log=log)
    pairs, _ = stage_pairs(settings, rows, log=log)
    model_dir, _ = stage_train(settings, pairs, resume=resume, log=log)
    return model_dir
