"""The interface every generation backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from negalign.base.errors import UserError
from negalign.data.records import Messages


@dataclass
class GenerationConfig:
    n: int = 1                     # samples per conversation
    temperature: float = 1.0       # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int | None = None


def check_config(config: GenerationConfig) -> None:
    """Reject impossible settings with a one-line error naming the field."""
    if not isinstance(config.n, int) or config.n < 1:
        raise UserError(f"must be a positive integer, got {config.n!r}", field="n")
    if config.temperature < 0:
        raise UserError(f"must be >= 0 (0 means greedy), got {config.temperature!r}", field="temperature")
    if not 0 < config.top_p <= 1:
        raise UserError(f"must be in (0, 1], got {config.top_p!r}", field="top_p")
    if not isinstance(config.max_new_tokens, int) or config.max_new_tokens < 1:
        raise UserError(f"must be a positive integer, got {config.max_new_tokens!r}", field="max_new_tokens")


class ChatGenerator(Protocol):
    """Generates assistant replies for chat conversations.

    `generate` returns, for each conversation, a list of `config.n` reply strings (the reply text
    only, without the end-of-turn token). An empty string means the backend produced nothing.
    """

    def generate(self, conversations: list[Messages], config: GenerationConfig) -> list[list[str]]:
        ...
