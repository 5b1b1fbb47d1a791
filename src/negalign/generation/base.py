"""The interface every generation backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from negalign.data.records import Messages


@dataclass
class GenerationConfig:
    n: int = 1                     # samples per conversation
    temperature: float = 1.0       # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int | None = None


class ChatGenerator(Protocol):
    """Generates assistant replies for chat conversations.

    `generate` returns, for each conversation, a list of `config.n` reply strings (the reply text
    only, without the end-of-turn token). An empty string means the backend produced nothing.
    """

    def generate(self, conversations: list[Messages], config: GenerationConfig) -> list[list[str]]:
        ...
