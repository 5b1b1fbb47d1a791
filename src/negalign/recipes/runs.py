"""`negalign runs ROOT`: one line per run directory under ROOT: method, how far it got, key results."""

from __future__ import annotations

import json
from pathlib import Path

from negalign.base.errors import UserError
from negalign.base.rundir import RunDir

METRICS = (("judge_harmful_rate", "judged harmful"), ("refusal_rate", "refusal"),
           ("overrefusal_rate", "over-refusal"), ("benign_perplexity", "ppl"))


def _lines(path: Path) -> int:
    return sum(1 for x in path.read_text(encoding="utf-8").splitlines() if x.strip()) if path.exists() else 0


def _method(run: RunDir) -> str:
    import yaml

    try:
        cfg = yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}
        return str((cfg.get("train") or {}).get("method", "?"))
    except (OSError, yaml.YAMLError, AttributeError):
        return "?"


def run_summary(run: RunDir) -> dict:
    """Stage status and headline metrics of one run directory, from its files alone."""
    out = {"run": str(run.root), "method": _method(run), "prompts": _lines(run.examples),
           "anchors": _lines(run.anchors), "hold": _lines(RunDir(run.hold).anchors),
           "reference": run.reference.exists(), "steps": _lines(run.metrics), "trained": run.done.exists(),
           "metrics": {}}
    eval_json = run.eval_dir / "eval.json"
    if eval_json.exists():
        metrics = json.loads(eval_json.read_text(encoding="utf-8")).get("metrics", {})
        out["metrics"] = {k: metrics[k]["value"] for k, _ in METRICS if k in metrics}
    return out


def find_runs(root: str | Path) -> list[RunDir]:
    """Run directories (a config.yaml snapshot beside data/ or train/) at ROOT or up to two levels below."""
    root = Path(root)
    if not root.is_dir():
        raise UserError("not a folder", path=str(root))
    candidates = [root] + sorted(p for p in root.glob("*") if p.is_dir()) + sorted(p for p in root.glob("*/*") if p.is_dir())
    return [RunDir(p) for p in candidates if (p / "config.yaml").exists() and ((p / "data").is_dir() or (p / "train").is_dir())]


def format_summary(s: dict) -> str:
    stage = "trained" if s["trained"] else f"training ({s['steps']} steps)" if s["steps"] else \
        "reference scored" if s["reference"] else f"{s['anchors']}/{s['prompts']} anchored" if s["prompts"] else "empty"
    hold = f", {s['hold']} hold" if s["hold"] else ""
    fmt = lambda k, v: f"{v:.2f}" if k == "benign_perplexity" else f"{100 * v:.1f}%"  # noqa: E731
    results = "  ".join(f"{label} {fmt(k, s['metrics'][k])}" for k, label in METRICS
                        if s["metrics"].get(k) is not None)
    return f"{s['run']}  {s['method']}  {s['prompts']} prompts{hold}  {stage}" + (f"  |  {results}" if results else "")
