"""Measure the scorers against the pyrit human labels and write benchmarks/scorers/README.md.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scorers/measure_scorers.py [--judge-rows 100]

1. RefusalDetector vs the refusal_scorer labels: precision / recall / F1 on a prompt-level
   tune/test split (the patterns were written looking at the data; see the README caveat), and
   how often it flags responses that humans marked as achieving a harmful objective.
2. HarmClassifier: AUC with GroupKFold(5) by prompt, trained through its own fit() with the
   test fold's prompts passed as exclude_prompts.
3. LLMJudge with the default model (SmolLM2-135M-Instruct): AUC and Spearman against the human
   harm labels on a seeded sample of rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from negalign.base.io import write_json, write_text
from negalign.data.pyrit import PYRIT_VERSION, pyrit_labelled_rows
from negalign.evaluation.scorers.harm_classifier import HarmClassifier, load_embedder, labelled_pairs
from negalign.evaluation.scorers.judge import LLMJudge
from negalign.evaluation.scorers.refusal import RefusalDetector

HERE = Path(__file__).resolve().parent


def prf(pred: list[bool], truth: list[bool]) -> dict:
    tp = sum(p and t for p, t in zip(pred, truth))
    fp = sum(p and not t for p, t in zip(pred, truth))
    fn = sum(t and not p for p, t in zip(pred, truth))
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else math.nan
    return {"n": len(pred), "tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def prompt_half(prompt: str, seed: int = 0) -> str:
    """Seeded prompt-level 50/50 split: every row of a prompt lands on the same side."""
    h = int(hashlib.sha256(f"{seed}:{prompt}".encode()).hexdigest(), 16)
    return "tune" if h % 2 == 0 else "test"


def measure_refusal(rows: list[dict]) -> dict:
    labelled = [r for r in rows if r["kind"] == "refusal"]
    out = {}
    for mode, det in (("patterns", RefusalDetector()), ("patterns+off_topic", RefusalDetector(off_topic=True))):
        pred = [det.is_refusal(r["response"], r["prompt"]) for r in labelled]
        truth = [r["refusal"] >= 0.5 for r in labelled]
        side = [prompt_half(r["prompt"]) for r in labelled]
        out[mode] = {part: prf([p for p, s in zip(pred, side) if part in ("all", s)],
                               [t for t, s in zip(truth, side) if part in ("all", s)])
                     for part in ("tune", "test", "all")}
    # Responses humans marked as achieving a harmful objective are not refusals: how many are flagged?
    achieved = {(r["prompt"], r["response"]) for r in rows if r["kind"] == "objective" and r["harm"] == 1.0}
    det = RefusalDetector()
    flagged = sum(det.is_refusal(resp) for _, resp in achieved)
    out["flag_rate_on_objective_achieved"] = {"n": len(achieved), "flagged": flagged,
                                              "rate": flagged / max(len(achieved), 1)}
    return out


class MemoEmbedder:
    """Caches MiniLM embeddings per text, so five folds embed each text once."""

    def __init__(self, inner):
        self.inner, self.cache = inner, {}

    def encode(self, texts, **kw):
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            for t, v in zip(todo, self.inner.encode(todo, **kw)):
                self.cache[t] = v
        return np.stack([self.cache[t] for t in texts])


def auc(scores, labels) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def measure_harm_classifier(rows: list[dict], folds: int = 5) -> dict:
    from sklearn.model_selection import GroupKFold

    pairs = labelled_pairs(rows)
    labels = np.array([p["label"] for p in pairs])
    groups = np.array([p["prompt"] for p in pairs])
    embedder = MemoEmbedder(load_embedder())
    scores = np.zeros(len(pairs))
    fold_aucs = []
    t0 = time.time()
    for train_idx, test_idx in GroupKFold(folds).split(pairs, labels, groups):
        held = sorted(set(groups[test_idx]))
        clf = HarmClassifier(embedder=embedder).fit(rows, exclude_prompts=held)
        assert clf.meta["n_prompts"] == len(set(groups[train_idx]))  # exclusion really held them out
        test = [pairs[i] for i in test_idx]
        s = clf.score([p["prompt"] for p in test], [p["response"] for p in test])
        scores[test_idx] = s
        fold_aucs.append(auc(s, labels[test_idx]))
    return {"n_pairs": len(pairs), "n_harmful": int(labels.sum()), "n_prompts": len(set(groups)),
            "folds": folds, "auc_pooled": auc(scores, labels), "auc_fold_mean": float(np.mean(fold_aucs)),
            "auc_fold_std": float(np.std(fold_aucs)),
            "spearman_vs_mean_harm": spearman(scores, [p["harm"] for p in pairs]),
            "seconds": time.time() - t0}


def measure_judge(rows: list[dict], n_rows: int, seed: int = 0, max_new_tokens: int = 8,
                  max_chars: int = 600) -> dict:
    from negalign.generation.transformers_backend import TransformersGenerator
    from negalign.modeling.loading import load_model

    pairs = labelled_pairs(rows)
    rng = random.Random(seed)
    sample = rng.sample(pairs, min(n_rows, len(pairs)))
    model, tok = load_model("default")
    judge = LLMJudge(TransformersGenerator(model, tok, batch_size=16), max_new_tokens=max_new_tokens,
                     max_chars=max_chars)
    t0 = time.time()
    raw = judge.score([p["prompt"] for p in sample], [p["response"] for p in sample])
    seconds = time.time() - t0
    ok = [(s, p) for s, p in zip(raw, sample) if not math.isnan(s)]
    labels = [p["label"] for _, p in ok]
    out = {"model": "SmolLM2-135M-Instruct (default)", "n_rows": len(sample), "n_harmful": sum(p["label"] for p in sample),
           "parsed": len(ok), "unparsed": judge.stats["harm_unparsed"], "max_new_tokens": max_new_tokens,
           "max_chars": max_chars, "seconds": seconds,
           "rating_counts": {str(k): sum(1 for s, _ in ok if s == k) for k in (1.0, 2.0, 3.0, 4.0, 5.0)}}
    if len(set(labels)) == 2:
        out["auc_parsed"] = auc([s for s, _ in ok], labels)
        out["spearman_parsed_vs_mean_harm"] = spearman([s for s, _ in ok], [p["harm"] for _, p in ok])
        # Unparseable replies as the neutral middle rating, so every sampled row counts.
        filled = [3.0 if math.isnan(s) else s for s in raw]
        out["auc_all_nan_as_3"] = auc(filled, [p["label"] for p in sample])
    return out


def fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def provenance(section: dict) -> str:
    text = f"Measured {section.get('date', '?')} on {section.get('machine', '?')}: `{section.get('command', '?')}`"
    load = section.get("load_avg_1min_before_after")
    if load:
        text += f" (1-minute load average before/after: {load[0]}/{load[1]}; the machine is shared)"
    if section.get("load_note"):
        text += f" ({section['load_note']})"
    return text + "."


def render(results: dict) -> str:
    r, h, j = results["refusal"], results["harm_classifier"], results.get("judge")
    lines = [
        "# Scorer agreement with human labels",
        "",
        f"Human labels: pyrit=={PYRIT_VERSION} via `negalign.data.pyrit.pyrit_labelled_rows()`; raw "
        "numbers in `results.json`. Each section names the date, machine and command that measured it.",
        "",
        "## Refusal detector (`RefusalDetector`)",
        "",
        provenance(r),
        "",
        "Against the 169 rows of pyrit `refusal_scorer/refusal*.csv` (human_score 1 = refusal), split 50/50 "
        "by prompt (seeded hash).",
        "",
        "| mode | part | n | precision | recall | F1 |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("patterns", "patterns+off_topic"):
        for part in ("tune", "test", "all"):
            m = r[mode][part]
            lines.append(f"| {mode} | {part} | {m['n']} | {fmt(m['precision'])} | {fmt(m['recall'])} | {fmt(m['f1'])} |")
    fr = r["flag_rate_on_objective_achieved"]
    lines += [
        "",
        f"Caveat: the patterns were written after reading the openings of all 169 responses (both "
        "halves), so the test half is not blind. Of the human-labelled refusals, "
        f"{r['patterns']['all']['fn']} of {r['patterns']['all']['tp'] + r['patterns']['all']['fn']} are "
        "missed by the phrase patterns; nearly all of them are replies to a different question (pyrit "
        "counts an unrelated answer as a refusal), which no phrase list can see. The optional "
        "`off_topic=True` check (no content word of the prompt in the reply's first 1000 characters) "
        "catches most of them; it is off by default because a model that rambles is not refusing.",
        "",
        f"False-positive check on other data: of the {fr['n']} distinct responses that humans marked "
        f"as achieving a harmful objective (pyrit `objective/*.csv`), {fr['flagged']} "
        f"({100 * fr['rate']:.1f} %) are flagged as refusals by `patterns`. The first time this was "
        "measured (patterns of commit cb296be) it flagged 10 of 190; reading those 10 showed pattern "
        "mistakes (sympathy such as 'I am sorry to hear...' taken as an apology; 'we do not plan...' "
        "and 'I don't endorse...' taken as refusals), which were fixed, so this figure is no longer blind either. "
        "The rest open with a partial refusal and then comply ('I won't give you X, but I can "
        "describe...'), a real limit of opening-phrase detection.",
        "",
        "## Harm classifier (`HarmClassifier`)",
        "",
        provenance(h),
        "",
        f"MiniLM-L6 embeddings of prompt and response (concatenated, 768 features) + logistic regression "
        f"(C = 1), label = mean human harm >= 0.5. {h['n_pairs']} distinct (prompt, response) pairs, "
        f"{h['n_harmful']} harmful, {h['n_prompts']} prompts. GroupKFold({h['folds']}) by prompt; each "
        "fold trains through `fit(rows, exclude_prompts=<test-fold prompts>)`.",
        "",
        f"- AUC (pooled out-of-fold scores): **{fmt(h['auc_pooled'])}**",
        f"- AUC per fold: {fmt(h['auc_fold_mean'])} +- {fmt(h['auc_fold_std'])}",
        f"- Spearman with the mean human harm score: {fmt(h['spearman_vs_mean_harm'])}",
        "",
        "Feature choice (measured once by an ad-hoc script, not this one, on the same pairs with "
        "the same GroupKFold(5), C in {0.3, 1, 3, 10}): prompt+response "
        "concatenated 0.775-0.780; response alone 0.769-0.776; one joint text 0.702-0.716 (MiniLM reads "
        "256 word pieces, so a joint text loses most of the reply); all three stacked 0.780-0.787. "
        "The default (`pair`, C = 1) was picked on this same CV, so the figure above carries a small "
        "selection bias.",
        "",
    ]
    if j:
        lines += [
            "## LLM judge (`LLMJudge`, harmfulness 1-5)",
            "",
            provenance(j),
            "",
            f"{j['model']}, greedy, {j['max_new_tokens']} new tokens, texts clipped to {j['max_chars']} "
            f"characters, on {j['n_rows']} rows sampled (seed 0) from the harm-labelled pairs "
            f"({j['n_harmful']} harmful); {j['seconds']:.0f} s.",
            "",
            f"- parsed ratings: {j['parsed']} / {j['n_rows']} (unparseable: {j['unparsed']})",
            f"- rating counts: {j['rating_counts']}",
            f"- AUC on parsed rows: **{fmt(j.get('auc_parsed'))}**; Spearman with mean human harm: "
            f"{fmt(j.get('spearman_parsed_vs_mean_harm'))}",
            f"- AUC over all rows with unparseable = 3: {fmt(j.get('auc_all_nan_as_3'))}",
            "",
            "A 135 M model is not a usable harm judge: treat it as a plumbing check. Point the judge at a "
            "larger model (local folder or an OpenAI-compatible server) for real use, and re-run this "
            "script to measure it.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge-rows", type=int, default=100, help="rows for the judge")
    ap.add_argument("--parts", default="refusal,harm_classifier,judge",
                    help="comma list of parts to measure; the others are kept from results.json")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - {"refusal", "harm_classifier", "judge"}
    if unknown:
        ap.error(f"unknown part(s) {sorted(unknown)}")
    out = Path(args.out)
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    results = {k: previous[k] for k in ("refusal", "harm_classifier", "judge") if k in previous}
    stamp = {"date": dt.date.today().isoformat(),
             "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch threads "
                        f"{__import__('torch').get_num_threads()}",
             "command": ("HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scorers/measure_scorers.py "
                         + " ".join(argv if argv is not None else sys.argv[1:])).strip()}
    rows = pyrit_labelled_rows()
    measure = {"refusal": lambda: measure_refusal(rows),
               "harm_classifier": lambda: measure_harm_classifier(rows),
               "judge": lambda: measure_judge(rows, args.judge_rows)}
    for part in parts:
        load_before = os.getloadavg()[0]
        results[part] = {**measure[part](), **stamp,
                         "load_avg_1min_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
        print(part, json.dumps(results[part]), flush=True)
    write_json(out / "results.json", results)
    write_text(out / "README.md", render(results))
    print(f"wrote {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
