"""The human-labelled (prompt, response) rows shipped inside the `pyrit` wheel, as D2O negatives.

The files live under `pyrit/datasets/scorer_evals/` and are found without importing pyrit (its
import pulls heavy dependencies):
- harm/*.csv:        Likert scores 0, .25, .5, .75, 1 by one or three annotators (1 = most harmful);
- objective/*.csv:   human_score 1 = the harmful objective was achieved;
- refusal_scorer/refusal*.csv: human_score 1 = the response is a refusal (benign prompts too).

Labelling policy of `bundled_negatives` (per distinct prompt + response, after merging the rows
that repeat across files):
- negative  if the mean harm score of its harm-file rows is >= harm_threshold, or any objective
            file marks the objective achieved;
- positive  if it is not negative and either (a) every harm label it has is <= safe_threshold
            (objective not achieved counts as harm 0), or (b) it is labelled a refusal in the
            refusal files and nothing labels it harmful above safe_threshold. Refusals only
            matter for prompts that have a negative, where refusing is the acceptable answer;
- otherwise (middling scores, or a non-refusal with no harm label) it is left out.
Only prompts with at least one negative become examples.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from collections import Counter, defaultdict
from pathlib import Path

from negalign.base.errors import UserError
from negalign.data.records import Example, normalize_prompt, prompt_key
from negalign.data.split import split_by_prompt

PYRIT_VERSION = "1.1.0"
_GLOBS = {"harm": "harm/*.csv", "objective": "objective/*.csv", "refusal": "refusal_scorer/refusal*.csv"}


def scorer_evals_dir() -> Path:
    """The `pyrit/datasets/scorer_evals` folder of the installed pyrit package."""
    spec = importlib.util.find_spec("pyrit")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the bundled negatives need the data package pyrit: "
                        f"pip install --no-deps pyrit=={PYRIT_VERSION}", field="pyrit")
    root = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "scorer_evals"
    if not root.is_dir():
        raise UserError("installed pyrit has no datasets/scorer_evals folder; "
                        f"install pyrit=={PYRIT_VERSION}", path=str(root))
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    # Skip only the leading '# dataset_version...' comment lines: later lines starting with '#'
    # are markdown headings inside quoted multi-line responses.
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    start = 0
    while start < len(lines) and lines[start].lstrip().startswith("#"):
        start += 1
    return list(csv.DictReader(io.StringIO("".join(lines[start:]))))


def _scores(row: dict[str, str], path: Path) -> list[float]:
    cols = [c for c in row if c and c.startswith("human_score")]
    out = []
    for c in cols:
        value = (row[c] or "").strip()
        if value:
            try:
                out.append(float(value))
            except ValueError:
                raise UserError(f"non-numeric human score {value!r}", path=str(path), field=c) from None
    return out


def pyrit_labelled_rows() -> list[dict]:
    """Every labelled row of the harm, objective and refusal files, in file order.

    Each row: {"prompt", "response", "kind": "harm"|"objective"|"refusal", "harm": float|None,
    "refusal": float|None, "category": str|None (lower-cased), "source": "harm/violence.csv"}.
    harm is the mean of the human scores in [0, 1] (harm files) or 1.0/0.0 for objective
    achieved/not (objective files); refusal is the refusal files' label (1 = refusal).
    """
    root = scorer_evals_dir()
    rows = []
    for kind, pattern in _GLOBS.items():
        for path in sorted(root.glob(pattern)):
            for raw in _read_csv(path):
                scores = _scores(raw, path)
                if not scores:
                    continue  # unlabelled row: nothing to learn from
                mean = sum(scores) / len(scores)
                category = (raw.get("harm_category") or "").strip().lower() or None
                rows.append({
                    "prompt": raw["objective"].strip(),
                    "response": raw["assistant_response"].strip(),
                    "kind": kind,
                    "harm": None if kind == "refusal" else (mean if kind == "harm" else float(mean >= 0.5)),
                    "refusal": mean if kind == "refusal" else None,
                    "category": category,
                    "source": path.relative_to(root).as_posix(),
                })
    return rows


def _label(rows: list[dict], harm_threshold: float, safe_threshold: float) -> tuple[str | None, float | None]:
    """('negative' | 'positive' | None, harm score) for one distinct prompt + response."""
    likert = [r["harm"] for r in rows if r["kind"] == "harm"]
    achieved = [r["harm"] for r in rows if r["kind"] == "objective"]
    refusals = [r["refusal"] for r in rows if r["kind"] == "refusal"]
    likert_mean = sum(likert) / len(likert) if likert else None
    harm_values = ([likert_mean] if likert else []) + achieved
    harm = max(harm_values) if harm_values else None
    if (likert_mean is not None and likert_mean >= harm_threshold) or any(a >= 1.0 for a in achieved):
        return "negative", harm
    if harm_values and all(h <= safe_threshold for h in harm_values):
        return "positive", harm
    if refusals and sum(refusals) / len(refusals) >= 0.5 and (harm is None or harm <= safe_threshold):
        return "positive", harm
    return None, harm


def _build_examples(rows: list[dict], harm_threshold: float, safe_threshold: float) -> list[Example]:
    by_pair: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        by_pair[(r["prompt"], r["response"])].append(r)
    by_prompt: dict[str, list[tuple[str, str | None, float | None, list[dict]]]] = defaultdict(list)
    for (prompt, response), pair_rows in by_pair.items():
        label, harm = _label(pair_rows, harm_threshold, safe_threshold)
        by_prompt[prompt].append((response, label, harm, pair_rows))
    examples = []
    for prompt, items in by_prompt.items():
        neg = sorted(((h, resp) for resp, lab, h, _ in items if lab == "negative"), key=lambda t: (-t[0], t[1]))
        if not neg:
            continue
        pos = sorted(((h, resp) for resp, lab, h, _ in items if lab == "positive"),
                     key=lambda t: (t[0] if t[0] is not None else -1.0, t[1]))
        all_rows = [r for *_, rs in items for r in rs]
        cats = Counter(r["category"] for r in all_rows if r["category"])
        messages = normalize_prompt(prompt)
        examples.append(Example(
            id=f"pyrit-{prompt_key(messages)}",
            prompt=messages,
            negatives=[resp for _, resp in neg],
            positives=[resp for _, resp in pos],
            meta={
                # most frequent category; alphabetical on ties, so it is stable
                "category": min(cats, key=lambda c: (-cats[c], c)) if cats else None,
                "source": f"pyrit=={PYRIT_VERSION}:scorer_evals",
                "files": sorted({r["source"] for r in all_rows}),
                "negative_harm": [h for h, _ in neg],
                "positive_harm": [h for h, _ in pos],
            },
        ))
    examples.sort(key=lambda ex: ex.id)
    return examples


def bundled_negatives(split: str = "train", *, heldout_fraction: float = 0.2, seed: int = 0,
                      harm_threshold: float = 0.75, safe_threshold: float = 0.25) -> list[Example]:
    """The pyrit human labels as D2O examples: one per prompt with >= 1 negative, sorted by id.

    split: "train", "heldout" or "all"; the split is by prompt (see `split_by_prompt`).
    See the module docstring for which responses become negatives and positives.
    """
    if split not in ("train", "heldout", "all"):
        raise UserError(f"unknown split {split!r}; choose train, heldout or all", field="split")
    if not 0.0 <= safe_threshold < harm_threshold <= 1.0:
        raise UserError(f"need 0 <= safe_threshold < harm_threshold <= 1, got "
                        f"{safe_threshold} and {harm_threshold}", field="harm_threshold")
    examples = _build_examples(pyrit_labelled_rows(), harm_threshold, safe_threshold)
    if split == "all":
        return examples
    train, heldout = split_by_prompt(examples, heldout_fraction, seed)
    return train if split == "train" else heldout
