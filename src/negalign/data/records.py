"""The one record type every stage shares."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from negalign.base.fingerprint import fingerprint

Messages = list[dict[str, str]]
ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    """A prompt with the human-annotated bad responses to it.

    prompt:    chat messages ending with a user turn (a plain string becomes one user turn).
    negatives: responses people marked as bad; D2O trains on each as its own group.
    positives: optional responses people marked as acceptable (DPO on human pairs, evaluation).
    meta:      free-form provenance (source file, category, human scores).
    """

    id: str
    prompt: Messages
    negatives: list[str]
    positives: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict) -> "Example":
        return cls(id=row["id"], prompt=row["prompt"], negatives=list(row["negatives"]),
                   positives=list(row.get("positives", [])), meta=dict(row.get("meta", {})))

    @property
    def prompt_text(self) -> str:
        """The last user turn, for display and for prompt-level grouping."""
        return self.prompt[-1]["content"]


def normalize_prompt(prompt: str | Messages) -> Messages:
    """A string becomes a single user message; a message list is copied as is."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def prompt_key(prompt: Messages) -> str:
    """Stable id of a prompt (the same conversation gives the same key on every machine)."""
    return fingerprint(prompt)
