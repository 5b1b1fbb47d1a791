"""Hold groups: benign prompts on which D2O keeps the policy where it started.

A hold group is a D2O group with anchors and no negative: its anchors are the initial model's own
unguided answers to a benign prompt, and its loss is -log sigmoid(beta * mean anchor log-ratio),
which is lowest when the policy gives those answers at least the probability the initial model gave
them. Mixed with the negative groups, they push back where training on refusals would spread to
benign requests that share the harmful ones' words (over-refusal).

The hold anchors live in RUN_DIR/hold/ (anchors.jsonl, anchors.meta.json), sampled and resumed
exactly as the main anchors are, but always from the initial model (model.name), without the
guidance prompt and without best-of-N: they stand for what the model did before training.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from negalign.base.errors import UserError
from negalign.base.rundir import RunDir
from negalign.config import Config
from negalign.data.records import Example, normalize_prompt
from negalign.modeling.logprobs import Group

HOLD_SETS = ("benign-twins",)


def hold_examples(cfg: Config) -> list[Example]:
    """The hold prompts the config names (none when data.hold is empty), as examples without negatives."""
    spec = cfg.data.hold
    if not spec:
        return []
    if spec == "benign-twins":
        from negalign.data.eval_sets import benign_twin_prompts

        rows = [(f"hold-{r['id']}", r["prompt"]) for r in benign_twin_prompts()]
    else:
        rows = _read_prompt_file(Path(spec))
    out = [Example(id=i, prompt=normalize_prompt(p), negatives=[]) for i, p in rows]
    return out if cfg.data.hold_limit is None else out[:cfg.data.hold_limit]


def _read_prompt_file(path: Path) -> list[tuple[str, str | list]]:
    """A .txt file (one prompt per non-empty line) or a .jsonl file ({"prompt": text or messages})."""
    if not path.exists():
        raise UserError(f"hold prompt file not found (or use one of: {', '.join(HOLD_SETS)})",
                        path=str(path), field="data.hold")
    text = path.read_text(encoding="utf-8-sig")
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".txt":
            rows.append((f"hold-{n}", line.strip()))
            continue
        if path.suffix != ".jsonl":
            raise UserError("hold prompts must be a .txt or .jsonl file", path=str(path), field="data.hold")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"invalid JSON: {e.msg}", path=str(path), line=n) from None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not prompt or not isinstance(prompt, (str, list)):
            raise UserError("needs a non-empty 'prompt' (text or chat messages)", path=str(path), line=n,
                            field="prompt")
        rows.append((f"hold-{row.get('id', n)}", prompt))
    if not rows:
        raise UserError("no hold prompts in the file", path=str(path), field="data.hold")
    return rows


def hold_config(cfg: Config) -> Config:
    """The settings the hold anchors are sampled with: the initial model, unguided, K of them."""
    sample = dataclasses.replace(cfg.sample, model=None, system_prompt=None, best_of=0)
    return dataclasses.replace(cfg, run_dir=str(RunDir(cfg.run_dir).hold), sample=sample)


def read_hold_anchors(cfg: Config) -> dict[str, list[str]]:
    from negalign.training.anchors import read_anchors

    path = RunDir(hold_config(cfg).run_dir)
    return read_anchors(path.root) if path.anchors.exists() else {}


def hold_groups(cfg: Config, tok) -> list[Group]:
    """One group per hold prompt: its anchors, then an empty negative slot (length 0: no negative term)."""
    examples, anchors = hold_examples(cfg), read_hold_anchors(cfg)
    missing = [ex.id for ex in examples if ex.id not in anchors]
    if missing:
        raise UserError(f"{len(missing)} hold prompts have no anchors yet; run `negalign sample` first",
                        path=str(RunDir(hold_config(cfg).run_dir).anchors), field="data.hold")
    return [Group(prompt_ids=tok.prompt(ex), response_ids=[tok.response(a) for a in anchors[ex.id]] + [[]])
            for ex in examples]


def append_hold_groups(cfg: Config, tok, groups: list[Group], *, log=print) -> int:
    """Append the hold groups (data.hold) after `groups`, in place; how many were added (0 without data.hold)."""
    if not cfg.data.hold:
        return 0
    held = hold_groups(cfg, tok)
    groups += held
    log(f"data: {len(held)} hold groups (benign prompts, the initial model's anchors, no negative)")
    return len(held)
