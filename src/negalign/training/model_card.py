"""The model card (README.md) of a trained model folder: what it is, how it was made, how it did.

Written with the model by the train stage and rewritten by `negalign evaluate RUN_DIR` once there
are results. Everything in it is read from the run directory (config snapshot, data snapshot,
anchors and their quality record, metrics.jsonl, eval/eval.json), so it never states a number the
run did not produce.
"""

from __future__ import annotations

import json
from pathlib import Path

from negalign.base.version import __version__
from negalign.base.rundir import RunDir
from negalign.config import Config

# Hub ids of the models negalign ships offline, for the card's base_model field.
HUB_IDS = {"default": "HuggingFaceTB/SmolLM2-135M-Instruct", "qwen2.5-coder-1.5b": "Qwen/Qwen2.5-Coder-1.5B-Instruct"}

# Headline evaluation metrics: (eval.json key, label, percentage?)
EVAL_ROWS = (("judge_harmful_rate", "judged harmful (harmful prompts)", True),
             ("refusal_rate", "refusal (harmful prompts)", True),
             ("overrefusal_rate", "over-refusal (benign-edgy prompts)", True),
             ("benign_perplexity", "benign perplexity", False),
             ("kl_per_token", "KL to the reference, per token", False),
             ("negative_logprob_shift_per_token", "held-out harmful responses, log-prob shift/token", False),
             ("positive_logprob_shift_per_token", "held-out safe responses, log-prob shift/token", False))

CURVE_KEYS = ("loss", "rewards/margins", "logratio/negative", "logratio/anchors")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _table(rows: list[tuple[str, str]], head: tuple[str, str] = ("setting", "value")) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def _fmt(m: dict, pct: bool) -> str:
    if m.get("value") is None:
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.4g}")
    ci = f" [{f(m['ci_low'])}, {f(m['ci_high'])}]" if m.get("ci_low") is not None else ""
    return f"{f(m['value'])}{ci} (n={m.get('n')})"


def anchor_lines(cfg: Config, run: RunDir) -> list[str]:
    s = cfg.sample
    if cfg.data.anchors == "positives":
        return [f"The human positives of each prompt (up to K = {s.k}) are the anchors."]
    who = f"the teacher `{s.model}`" if s.model else "the initial model (the paper's self-sampling)"
    lines = [f"K = {s.k} anchors per prompt sampled from {who}, "
             f"{'with the guidance prompt' if s.system_prompt else 'unguided'}, T = {s.temperature}, "
             f"top-p {s.top_p}, up to {s.max_new_tokens} tokens"
             + (f"; best {s.k} of {s.best_of} by {s.select_by}" if s.best_of > s.k else "") + "."]
    quality = _read_json(run.anchors_quality)
    if quality:
        a, n = quality.get("anchors", {}), quality.get("negatives", {})
        if "refusal_rate" in a and "refusal_rate" in n:
            lines.append(f"Refusal rate of the anchors {100 * a['refusal_rate']:.0f}% (n={a.get('n')}), of the "
                         f"human negatives {100 * n['refusal_rate']:.0f}% (n={n.get('n')}), from anchors.quality.json.")
    if cfg.data.hold:
        n_hold = len(_read_jsonl(RunDir(run.hold).anchors))
        lines.append(f"Hold groups: {n_hold} benign prompts ({cfg.data.hold}) with the initial model's own "
                     "unguided answers as anchors and no negative.")
    return lines


def curve_lines(rows: list[dict]) -> list[str]:
    """The training curve from train/metrics.jsonl's rows."""
    if not rows:
        return ["No training metrics recorded."]
    first, last = rows[0], rows[-1]
    keys = [k for k in CURVE_KEYS if k in first and k in last]
    out = [f"{len(rows)} optimizer steps, {sum(r.get('tokens', 0) for r in rows):,} response tokens, "
           f"{sum(r.get('skipped', 0) for r in rows)} skipped (non-finite); from train/metrics.jsonl.", ""]
    out += ["| metric | first step | last step |", "|---|---|---|"]
    out += [f"| {k} | {first[k]:+.4f} | {last[k]:+.4f} |" for k in keys]
    return out


def eval_lines(run: RunDir) -> list[str]:
    result = _read_json(run.eval_dir / "eval.json")
    if not result:
        return [f"Not evaluated yet: `negalign evaluate {run.root}` writes eval/eval.json and updates this card."]
    m, s = result.get("metrics", {}), result.get("settings", {})
    rows = [(label, _fmt(m[key], pct)) for key, label, pct in EVAL_ROWS if key in m]
    judge = (result.get("judge") or {}).get("spec")
    return ([f"`negalign evaluate` against `{result.get('reference')}` on {s.get('n_harmful')} harmful "
             f"(StrongREJECT), {s.get('n_overrefusal')} benign-edgy and {s.get('n_benign')} benign prompts; "
             f"judge: {json.dumps(judge) if judge else 'off'}; 95% bootstrap CIs.", ""]
            + _table(rows, ("metric", "value")))


def precision_line(precision: str, rows: list[dict]) -> str:
    """The configured precision, and for "auto" what the training resolved it to (its last metrics row)."""
    used = rows[-1].get("precision") if rows else None
    return f"auto ({used} on the training machine)" if precision == "auto" and used else precision


def model_card(cfg: Config, run_dir: str | Path) -> str:
    """The card's Markdown, from what the run directory holds now."""
    run = RunDir(run_dir)
    t, d = cfg.train, cfg.data
    base = HUB_IDS.get(cfg.model.name, cfg.model.name)
    examples = _read_jsonl(run.examples)
    cap = d.max_negatives_per_prompt
    n_negatives = sum(len(e.get("negatives", [])) if cap is None else min(cap, len(e.get("negatives", [])))
                      for e in examples)
    fingerprint = (_read_json(run.examples_meta) or {}).get("data_fingerprint", "n/a")
    metrics = _read_jsonl(run.metrics)
    command = "rdpo" if run.pairs.exists() else "run"   # an rDPO run keeps its pairs.jsonl
    settings = [("method", t.method), ("beta", t.beta), ("alpha", t.alpha), ("learning rate", t.lr),
                ("epochs", t.epochs), ("max steps", t.max_steps), ("groups per step", t.groups_per_step),
                ("precision", precision_line(t.precision, metrics)),
                ("LoRA", f"r={cfg.model.lora.r}" if cfg.model.lora.enabled else "no"), ("seed", t.seed)]
    data = [("source", d.source if d.source != "bundled" else "bundled (pyrit human-labelled negatives)"),
            ("split", d.split), ("prompts", len(examples)), ("human negatives trained on", n_negatives),
            ("negatives per prompt, at most", d.max_negatives_per_prompt), ("fingerprint", fingerprint)]
    lines = ["---", f"base_model: {base}", "library_name: transformers", "tags:", "- negalign",
             f"- {t.method}", "---", "", f"# {run.root.name}: {t.method} on {base}", "",
             f"Trained with negalign {__version__} from `{cfg.model.name}`. Reproduce:", "",
             f"    negalign {command} -c {run.config}", "", "## Training", ""] + _table(settings)
    lines += ["", "## Data", ""] + _table(data) + ["", "## Anchors", ""] + anchor_lines(cfg, run)
    lines += ["", "## Training curve", ""] + curve_lines(metrics) + ["", "## Evaluation", ""] + eval_lines(run)
    return "\n".join(str(x) for x in lines) + "\n"


def refresh_model_card(cfg: Config, run_dir: str | Path) -> Path | None:
    """Rewrite RUN_DIR/model/README.md from the run directory (its manifest kept true); None without a model."""
    from negalign.base.durable import replace_published_file

    run = RunDir(run_dir)
    if not run.model.exists():
        return None
    return replace_published_file(run.model, "README.md", model_card(cfg, run.root).encode("utf-8"))
