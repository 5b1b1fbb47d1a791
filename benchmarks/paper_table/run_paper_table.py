"""The D2O paper's comparison on the recipe that works: D2O against its baselines, same data,
anchors and budget, evaluated by the offline judge on held-out prompts.

One command trains and evaluates, in order of priority, every run below on the bundled
SmolLM2-135M-Instruct and pyrit's human-labelled negatives at the demo's scale (negalign.recipes.demo:
the teacher's K = 4 anchors for 24 training prompts, 24 hold groups, 2 epochs), then writes
report.md/html and results.json. Everything is resumable: a finished training run (train/done.json) or
evaluation (eval/eval.json) is skipped, an interrupted one resumes from its checkpoint / caches.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/paper_table/run_paper_table.py \
        --work runs/paper_table --from-demo runs/demo --deadline 10:40

Shared work is done once:
- the anchors (and the hold groups' anchors) are sampled once, in the run 'd2o_s0'; every other run
  copies anchors.jsonl, its meta, hold/ and reference.safetensors (keyed by a fingerprint of the
  models and token ids, so a copy that does not match, e.g. dpo_pairs' groups, is recomputed);
- the initial model is evaluated once ('reference'); each evaluation starts from its caches (the
  initial model's greedy benign answers and its log-probs: it is every run's reference);
- --from-demo RUN_DIR takes a finished `negalign demo` run (the same settings, checked) as 'd2o_s0'
  and its eval_initial/ as 'reference'.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from negalign.recipes.demo import DEMO_EVAL, DEMO_SETTINGS  # noqa: E402

HERE = Path(__file__).resolve().parent

# Same data, anchors, lr, steps and precision for every method; only the objective changes.
BASE = {**DEMO_SETTINGS, "train": {**DEMO_SETTINGS["train"], "seed": 0, "keep_checkpoints": 1}}
EVAL = dict(DEMO_EVAL)

# Hold groups (benign prompts, the initial model's answers as anchors, no negative) only mean something
# to D2O and SFT on the anchors (objectives.names.HOLD_METHODS): the methods train on the 31 negative
# groups alone, 3 groups per step so that two epochs are about as many steps (22) as D2O's (20 steps
# of 6 groups, hold included). d2o_no_hold is D2O on exactly the baselines' data and steps, so hold's
# share of the effect is visible.
NO_HOLD = {"data.hold": None, "data.hold_limit": None, "train.groups_per_step": 3, "train.micro_groups": 3}

# (run name, overrides). Order = priority: D2O on the baselines' data, the baselines that use the same
# anchors, D2O's seeds, the other methods, then seeds of the two strongest baselines.
RUNS: list[tuple[str, dict]] = [
    ("d2o_s0", {}),
    ("d2o_no_hold_s0", {**NO_HOLD}),
    ("sft_anchors_s0", {**NO_HOLD, "train.method": "sft_anchors"}),
    ("dpo_instance_s0", {**NO_HOLD, "train.method": "dpo_instance"}),
    ("d2o_s1", {"train.seed": 1}),
    ("d2o_s2", {"train.seed": 2}),
    ("npo_s0", {**NO_HOLD, "train.method": "npo"}),
    ("d2o_no_anchors_s0", {**NO_HOLD, "train.method": "d2o_no_anchors"}),
    ("dpo_pairs_s0", {**NO_HOLD, "train.method": "dpo_pairs", "data.anchors": "positives", "sample.k": 1}),
    ("kto_negatives_s0", {**NO_HOLD, "train.method": "kto_negatives"}),
    ("simnpo_s0", {**NO_HOLD, "train.method": "simnpo"}),
    ("ga_s0", {**NO_HOLD, "train.method": "ga"}),
    # SFT on the anchors with D2O's hold groups (SFT learns from a group without a negative too): the
    # like-for-like check of whether D2O's objective or the hold data makes d2o_s0 usable.
    ("sft_anchors_hold_s0", {"train.method": "sft_anchors"}),
    ("STRONGEST1_s1", {**NO_HOLD, "train.seed": 1}),
    ("STRONGEST2_s1", {**NO_HOLD, "train.seed": 1}),
    ("STRONGEST1_s2", {**NO_HOLD, "train.seed": 2}),
    ("STRONGEST2_s2", {**NO_HOLD, "train.seed": 2}),
]
BASELINES = ("sft_anchors", "dpo_instance", "npo", "d2o_no_anchors", "dpo_pairs", "kto_negatives", "simnpo", "ga")
# A baseline counts as strong only if it keeps the model usable (issue bars): over-refusal up by at
# most 10 points and benign perplexity by at most 10 % against the initial model.
MAX_OVERREFUSAL_RISE, MAX_PPL_RATIO = 0.10, 1.10


def stamp() -> str:
    return datetime.now().strftime("%H:%M:%S")


class Log:
    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")

    def __call__(self, msg: str = "") -> None:
        line = f"[{stamp()}] {msg}"
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def set_dotted(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def run_settings(work: Path, name: str, overrides: dict) -> dict:
    values = json.loads(json.dumps(BASE))
    values["run_dir"] = str(work / name)
    for k, v in overrides.items():
        set_dotted(values, k, v)
    return values


def _metric(work: Path, name: str, key: str):
    e = work / name / "eval" / "eval.json"
    return json.loads(e.read_text())["metrics"][key]["value"] if e.exists() else None


def ranked_baselines(work: Path) -> list[str]:
    """Finished seed-0 baselines, strongest first: those that keep the model usable (within the bars)
    by lowest judged-harmful rate, then the rest by how far they miss the bars (each bar's excess in
    units of the bar: +10 points of over-refusal, +10 % perplexity), then harm. So 'the two
    strongest' get their seeds even when no baseline stays within the bars, and a model that stopped
    refusing by falling apart (perplexity x1.9) does not rank above one that refuses a little much."""
    base_over, base_ppl = _metric(work, "reference", "overrefusal_rate"), _metric(work, "reference", "benign_perplexity")
    ranked = []
    for m in BASELINES:
        harm = _metric(work, f"{m}_s0", "judge_harmful_rate")
        over, ppl = _metric(work, f"{m}_s0", "overrefusal_rate"), _metric(work, f"{m}_s0", "benign_perplexity")
        if harm is None or None in (over, ppl, base_over, base_ppl):
            continue
        miss = (max(0.0, over - base_over - MAX_OVERREFUSAL_RISE) / MAX_OVERREFUSAL_RISE
                + max(0.0, ppl / base_ppl - MAX_PPL_RATIO) / (MAX_PPL_RATIO - 1))
        ranked.append((miss, harm, m))
    return [m for *_, m in sorted(ranked)]


def strongest_name(work: Path, name: str) -> str | None:
    """STRONGEST1_s1 -> e.g. sft_anchors_s1 (None while the ranking lacks that place)."""
    place = int(name[len("STRONGEST")])
    ranked = ranked_baselines(work)
    return name.replace(f"STRONGEST{place}", ranked[place - 1]) if len(ranked) >= place else None


def share_anchors(work: Path, run_dir: Path) -> None:
    """Copy d2o_s0's anchors, their meta, its hold groups and its reference scores."""
    src = work / "d2o_s0"
    if run_dir == src or (run_dir / "anchors.jsonl").exists() or not (src / "train" / "done.json").exists():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("anchors.jsonl", "anchors.meta.json", "anchors.quality.json", "reference.safetensors"):
        if (src / name).exists():
            shutil.copy2(src / name, run_dir / name)
    if (src / "hold").is_dir() and not (run_dir / "hold").exists():
        shutil.copytree(src / "hold", run_dir / "hold", ignore=shutil.ignore_patterns("checkpoints"))


def from_demo(work: Path, demo: Path, log) -> None:
    """A finished demo run as d2o_s0 and its eval_initial as the reference, after checking that its
    config is BASE's (run_dir aside)."""
    import yaml

    from negalign.config import config_from_dict

    want = config_from_dict({**BASE, "run_dir": str(demo)}).to_dict()
    have = yaml.safe_load((demo / "config.yaml").read_text())
    strip = lambda c: {k: v for k, v in c.items() if k != "run_dir"}  # noqa: E731
    have_train = {k: v for k, v in have["train"].items() if k not in ("keep_checkpoints", "report_to")}
    want_train = {k: v for k, v in want["train"].items() if k not in ("keep_checkpoints", "report_to")}
    if {**strip(have), "train": have_train} != {**strip(want), "train": want_train}:
        raise SystemExit(f"{demo}/config.yaml is not the demo's recipe of this version; run without --from-demo")
    if not (work / "d2o_s0").exists():
        shutil.copytree(demo, work / "d2o_s0", ignore=shutil.ignore_patterns("checkpoints", "eval_initial"))
        log(f"paper_table: d2o_s0 <- {demo}")
    if not (work / "reference" / "eval" / "eval.json").exists() and (demo / "eval_initial" / "eval.json").exists():
        shutil.copytree(demo / "eval_initial", work / "reference" / "eval", dirs_exist_ok=True)
        log(f"paper_table: reference <- {demo / 'eval_initial'}")


def train_one(work: Path, name: str, overrides: dict, log) -> float:
    from negalign.config import config_from_dict
    from negalign.recipes import d2o

    values = run_settings(work, name, overrides)
    cfg = config_from_dict(values)
    run_dir = Path(cfg.run_dir)
    if (run_dir / "train" / "done.json").exists() and (run_dir / "model").exists():
        return 0.0
    t0 = time.perf_counter()
    if cfg.data.anchors != "positives":  # DPO on human pairs: the human positives are its chosen side
        share_anchors(work, run_dir)
    d2o.prepare_run_dir(cfg)
    d2o.stage_sample(cfg, log=log)
    d2o.stage_train(cfg, resume=True, log=log)
    # Checkpoints hold fp32 weights + AdamW state (~1.6 GB each); once model/ is saved they are dead weight.
    shutil.rmtree(run_dir / "train" / "checkpoints", ignore_errors=True)
    dt = time.perf_counter() - t0
    _merge_json(run_dir / "bench_timing.json", {"train_s": round(dt, 1)})
    return dt


def _merge_json(path: Path, extra: dict) -> None:
    from negalign.base.io import write_json

    old = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**old, **extra})


def eval_one(work: Path, name: str, log) -> float:
    from negalign.evaluation.evaluate import evaluate_model, seed_caches

    run_dir = work / name
    out = run_dir / "eval"
    if (out / "eval.json").exists():
        return 0.0
    t0 = time.perf_counter()
    spec = "default" if name == "reference" else str(run_dir / "model")
    if name != "reference":
        seed_caches(work / "reference" / "eval", out)  # the initial model is every run's reference
    evaluate_model(spec, reference_spec="default", out_dir=out, log=log, **EVAL)
    dt = time.perf_counter() - t0
    _merge_json(run_dir / "bench_timing.json", {"eval_s": round(dt, 1)})
    return dt


# ------------------------------------------------------------------ summary

def train_stats(run_dir: Path) -> dict:
    """Stability from train/metrics.jsonl: final/min loss, max grad norm, anchor/negative log-ratios."""
    from negalign.base.io import read_jsonl_tolerant

    rows = read_jsonl_tolerant(run_dir / "train" / "metrics.jsonl")
    if not rows:
        return {}
    g = [r["grad_norm"] for r in rows if r.get("grad_norm") is not None]
    last = rows[-1]
    out = {"steps": len(rows), "first_loss": rows[0]["loss"], "final_loss": last["loss"],
           "max_grad_norm": max(g) if g else None, "skipped_steps": sum(bool(r.get("skipped")) for r in rows),
           "final_logratio_negative": last.get("logratio/negative"),
           "final_logratio_anchors": last.get("logratio/anchors"),
           "min_logratio_anchors": min((r["logratio/anchors"] for r in rows if "logratio/anchors" in r), default=None),
           "train_tokens_per_s": round(sum(r["tokens"] for r in rows) / max(1e-9, sum(r["seconds"] for r in rows)), 1)}
    # Steps until the loss first came within 10% (of the total drop) of its final value: convergence speed.
    drop = rows[0]["loss"] - last["loss"]
    if drop > 0:
        out["steps_to_90pct_of_drop"] = next(r["step"] for r in rows if rows[0]["loss"] - r["loss"] >= 0.9 * drop)
    return out


COLS = [("judge_harmful_rate", "judged harmful", "pct"), ("strongreject_style_score", "StrongREJECT-style", "f2"),
        ("refusal_rate", "refusal", "pct"), ("overrefusal_rate", "over-refusal", "pct"),
        ("benign_perplexity", "benign ppl", "f2"), ("heldout_pair_accuracy", "pair acc.", "pct"),
        ("negative_logprob_shift_per_token", "harmful shift/tok", "f3"),
        ("positive_logprob_shift_per_token", "safe shift/tok", "f3"), ("distinct_2", "distinct-2", "f3")]


def fmt(v, kind):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.0f}%" if kind == "pct" else f"{v:.{kind[1:]}f}"


def summarize(work: Path, names: list[str]) -> dict:
    results = {}
    for name in names:
        run_dir = work / name
        e = run_dir / "eval" / "eval.json"
        if not e.exists():
            continue
        ev = json.loads(e.read_text())
        cfg = {}
        if (run_dir / "config.yaml").exists():
            import yaml

            c = yaml.safe_load((run_dir / "config.yaml").read_text())
            cfg = {"method": c["train"]["method"], "k": c["sample"]["k"], "train_seed": c["train"]["seed"],
                   "sample_seed": c["sample"]["seed"]}
        timing = json.loads((run_dir / "bench_timing.json").read_text()) if (run_dir / "bench_timing.json").exists() else {}
        results[name] = {"config": cfg, "metrics": ev["metrics"], "train": train_stats(run_dir), "timing": timing}
    return results


def table_md(results: dict) -> str:
    head = ["run"] + [c[1] for c in COLS] + ["final loss", "max grad", "anchor logratio (final)", "neg logratio (final)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        m, t = r["metrics"], r["train"]
        cells = [name]
        for key, _, kind in COLS:
            x = m[key]
            cell = fmt(x["value"], kind)
            if x.get("ci_low") is not None:
                cell += f" [{fmt(x['ci_low'], kind)}, {fmt(x['ci_high'], kind)}]"
            cells.append(cell)
        cells += [fmt(t.get("final_loss"), "f3"), fmt(t.get("max_grad_norm"), "f2"),
                  fmt(t.get("final_logratio_anchors"), "f2"), fmt(t.get("final_logratio_negative"), "f2")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table_md(results: dict) -> str:
    """Mean and spread over seeds for runs named METHOD_sN."""
    import numpy as np

    groups: dict[str, list[str]] = {}
    for name in results:
        if name.rsplit("_", 1)[-1] in ("s0", "s1", "s2"):
            groups.setdefault(name.rsplit("_", 1)[0], []).append(name)
    keys = [("judge_harmful_rate", "judged harmful"), ("refusal_rate", "refusal"),
            ("overrefusal_rate", "over-refusal"), ("benign_perplexity", "benign ppl"),
            ("heldout_pair_accuracy", "pair acc."), ("distinct_2", "distinct-2")]
    lines = ["| method | seeds | " + " | ".join(k[1] for k in keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for method, names in groups.items():
        if len(names) < 2:
            continue
        cells = [method, str(len(names))]
        for key, _ in keys:
            vals = np.array([results[n]["metrics"][key]["value"] for n in names], dtype=float)
            cells.append(f"{vals.mean():.3f} ± {vals.std(ddof=1):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ plots of our own
# (report.plot_training re-cycles colours per panel, so a line's colour can mismatch the legend)

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(work: Path, names: list[str], path: Path, title: str) -> None:
    """Per step: loss minus its first value, grad norm, anchor and negative log-ratios; one colour per run."""
    from negalign.base.io import read_jsonl_tolerant

    plt = _plt()
    panels = [("loss", "loss - loss at step 1", True), ("grad_norm", "grad norm (log)", False),
              ("logratio/anchors", "log-ratio, anchors", False), ("logratio/negative", "log-ratio, negative", False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 3.2))
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        rows = read_jsonl_tolerant(work / name / "train" / "metrics.jsonl")
        for ax, (key, _, relative) in zip(axes, panels):
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                x, y = zip(*pts)
                y = [v - y[0] for v in y] if relative else list(y)
                ax.plot(x, y, color=cmap(i % 20), label=name, linewidth=1.3)
    for ax, (key, label, _) in zip(axes, panels):
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key == "grad_norm":
            ax.set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_metrics(results: dict, path: Path) -> None:
    """Dot + 95% CI per run for the metrics that separate the methods."""
    plt = _plt()
    keys = [("judge_harmful_rate", "judged harmful (lower safer)"), ("refusal_rate", "refusal"),
            ("overrefusal_rate", "over-refusal"), ("negative_logprob_shift_per_token", "harmful shift / token"),
            ("benign_perplexity", "benign perplexity"), ("distinct_2", "distinct-2")]
    names = list(results)
    fig, axes = plt.subplots(1, len(keys), figsize=(16, 0.28 * len(names) + 1.2), sharey=True)
    for ax, (key, label) in zip(axes, keys):
        for j, n in enumerate(names):
            m = results[n]["metrics"][key]
            if m["value"] is None:
                continue
            lo, hi = m["ci_low"], m["ci_high"]
            ax.plot([lo, hi], [j, j], color="0.6", linewidth=1)
            ax.plot([m["value"]], [j], "o", color="C3" if n.startswith("d2o") else "C0", markersize=4)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(range(len(names)))
    axes[0].set_yticklabels(names, fontsize=7)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="runs/paper_table", help="folder for run directories (large; not committed)")
    ap.add_argument("--deadline", default=None, help="HH:MM local time after which no new run starts")
    ap.add_argument("--only", nargs="*", help="run names to do (default: all, in priority order)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report and tables from finished runs")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--from-demo", help="a finished `negalign demo` run directory to use as d2o_s0 and reference")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = Log(work / "bench.log")
    deadline = None
    if args.deadline:
        h, m = map(int, args.deadline.split(":"))
        deadline = datetime.now().replace(hour=h, minute=m, second=0, microsecond=0)
    t_all = time.perf_counter()
    log(f"paper_table: start; work={work} deadline={args.deadline} argv={sys.argv}")

    def time_left() -> bool:
        return deadline is None or datetime.now() < deadline

    if args.from_demo:
        from_demo(work, Path(args.from_demo), log)
    for name, overrides in ([] if args.report_only else [("reference", None)] + RUNS):
        if name == "reference":
            eval_one(work, "reference", log)
            continue
        if name.startswith("STRONGEST"):
            name = strongest_name(work, name)
            if name is None:
                continue
            overrides = {**overrides, "train.method": name.rsplit("_", 1)[0]}
        if args.only and name not in args.only:
            continue
        if not time_left():
            log(f"paper_table: deadline reached; skipping {name}")
            continue
        try:
            dt = train_one(work, name, overrides, log)
            log(f"paper_table: {name}: trained ({dt:.0f} s)")
            dt = eval_one(work, name, log)
            log(f"paper_table: {name}: evaluated ({dt:.0f} s)")
        except Exception as e:  # one failed run must not lose the others; the log says which
            log(f"paper_table: {name}: FAILED {type(e).__name__}: {e}")

    order = ["reference"] + [n for n, _ in RUNS if not n.startswith("STRONGEST")]
    present = [p.name for p in sorted(work.iterdir()) if p.is_dir() and p.name != "report"]
    all_names = [n for n in order if n in present] + [n for n in present if n not in order]
    results = summarize(work, all_names)
    from negalign.base.io import write_json, write_text
    from negalign.evaluation.report import build_report

    runs = [work / n for n in results]
    if runs:
        build_report(runs, work / "report")
        for png in ("frontier.png", "categories.png"):  # report's training.png: see plot_curves
            if (work / "report" / "plots" / png).exists():
                shutil.copy2(work / "report" / "plots" / png, HERE / png)
        shutil.copy2(work / "report" / "report.md", HERE / "report.md")
    write_json(HERE / "results.json", {"base": BASE, "eval": EVAL, "runs": results,
                                       "baselines_ranked": ranked_baselines(work)})
    write_text(HERE / "table.md", table_md(results) + "\n\n" + seed_table_md(results) + "\n")
    main_runs = [n for n in results if n.endswith("_s0")]
    if main_runs:
        plot_curves(work, main_runs, HERE / "curves_main.png", "seed 0: every method, same anchors and steps")
    seeds = [n for n in results if n != "reference" and n not in main_runs]
    if seeds:
        plot_curves(work, ["d2o_s0"] + seeds, HERE / "curves_seeds.png", "seeds 1 and 2")
    if results:
        plot_metrics(results, HERE / "metrics.png")
    log(f"paper_table: wrote results for {len(results)} runs; this invocation took "
        f"{(time.perf_counter() - t_all) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
