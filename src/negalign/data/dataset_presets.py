"""Row converters: how one row of a data set becomes (prompt, negatives, positives).

A converter takes one row (a dict of column values) and returns a `RowRecord`, or None to skip a
row that carries no usable label (counted, not an error), or raises `RowProblem(field, message)`
for a malformed row; the loader turns that into a UserError naming the file and line or row.

Presets cover public data sets whose columns need more than a renaming:
- "pku-saferlhf": PKU-Alignment/PKU-SafeRLHF. Columns prompt, response_0, response_1,
  is_response_0_safe, is_response_1_safe. Unsafe responses become negatives, safe ones positives.
- "hh-rlhf": Anthropic/hh-rlhf. Columns chosen, rejected: whole transcripts
  "\\n\\nHuman: ...\\n\\nAssistant: ...". The prompt is the conversation before the last assistant
  turn; the negative is the rejected transcript's last assistant turn, the positive the chosen one's.
  Rows whose two last turns are equal, or where either is empty, are skipped (no preference).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from negalign.data.records import ROLES, Messages


class RowProblem(Exception):
    """A malformed value in one row; `field` names the column or field."""

    def __init__(self, field: str | None, message: str):
        self.field = field
        self.message = message
        super().__init__(message)


@dataclass
class RowRecord:
    prompt: Messages
    negatives: list[str] = field(default_factory=list)
    positives: list[str] = field(default_factory=list)
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetPreset:
    name: str
    columns: tuple[str, ...]                        # required columns
    convert: Callable[[dict], RowRecord | None]
    description: str


def check_prompt(value: Any, name: str = "prompt") -> Messages:
    """A non-empty string, or a chat list of {role, content} ending with a user turn."""
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem(name, "empty prompt")
        return [{"role": "user", "content": value}]
    if not isinstance(value, (list, tuple)):
        raise RowProblem(name, f"expected a string or a list of chat messages, got {type(value).__name__}")
    if not value:
        raise RowProblem(name, "empty chat message list")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowProblem(f"{name}[{i}]", "each chat message must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise RowProblem(f"{name}[{i}].role",
                             f"unknown role {m['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise RowProblem(f"{name}[{i}].content", f"expected a string, got {type(m['content']).__name__}")
        if not m["content"].strip():
            raise RowProblem(f"{name}[{i}].content", "empty message content")
        messages.append({"role": m["role"], "content": m["content"]})
    if messages[-1]["role"] != "user":
        raise RowProblem(name, f"the chat must end with a user turn, not {messages[-1]['role']!r}")
    return messages


def check_response(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RowProblem(name, f"expected a string response, got {type(value).__name__}")
    if not value.strip():
        raise RowProblem(name, "empty response")
    return value


def check_flag(value: Any, name: str) -> bool:
    """A boolean, also accepted as 0/1 or the strings true/false (CSV files)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise RowProblem(name, f"expected a boolean, got {value!r}")


def _pku(row: dict) -> RowRecord:
    record = RowRecord(prompt=check_prompt(row["prompt"]))
    for i in (0, 1):
        text = check_response(row[f"response_{i}"], f"response_{i}")
        safe = check_flag(row[f"is_response_{i}_safe"], f"is_response_{i}_safe")
        (record.positives if safe else record.negatives).append(text)
    return record


_TURN = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):[ \t]?")


def parse_hh_transcript(text: Any, name: str) -> Messages:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{user: a}, {assistant: b}] (contents stripped)."""
    if not isinstance(text, str):
        raise RowProblem(name, f"expected a transcript string, got {type(text).__name__}")
    parts = _TURN.split(text)
    # split() gives [before, role, content, role, content, ...]
    if len(parts) < 3 or parts[0].strip():
        raise RowProblem(name, "not a 'Human: ... Assistant: ...' transcript")
    role_of = {"Human": "user", "Assistant": "assistant"}
    return [{"role": role_of[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]


def _hh(row: dict) -> RowRecord | None:
    chosen = parse_hh_transcript(row["chosen"], "chosen")
    rejected = parse_hh_transcript(row["rejected"], "rejected")
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1]["role"] != "assistant":
            raise RowProblem(name, "the transcript must end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise RowProblem("rejected", "chosen and rejected differ before their last assistant turn")
    good, bad = chosen[-1]["content"], rejected[-1]["content"]
    if not good or not bad or good == bad:
        return None
    try:
        prompt = check_prompt(chosen[:-1], "chosen")
    except RowProblem as e:
        raise RowProblem("chosen", f"conversation before the last assistant turn: {e.message}") from None
    return RowRecord(prompt=prompt, negatives=[bad], positives=[good])


PRESETS: dict[str, DatasetPreset] = {
    "pku-saferlhf": DatasetPreset(
        "pku-saferlhf",
        ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe"),
        _pku, "PKU-SafeRLHF: unsafe responses are negatives, safe ones positives"),
    "hh-rlhf": DatasetPreset(
        "hh-rlhf", ("chosen", "rejected"), _hh,
        "Anthropic HH-RLHF: rejected last assistant turn is the negative, chosen the positive"),
}
