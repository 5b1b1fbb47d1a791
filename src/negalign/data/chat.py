"""Chat formatting and tokenisation, the same everywhere: sampling, scoring, training, evaluation.

A response is tokenised on its own (no merges across the prompt boundary) and closed with the
tokenizer's end-of-turn token, so log pi(y|x) always covers the same ids for the same text.
"""

from __future__ import annotations

from negalign.data.records import Messages


def render_prompt(tokenizer, messages: Messages, system: str | None = None) -> str:
    """The chat-formatted prompt text, ending with the assistant header."""
    if system:
        messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, messages: Messages, system: str | None = None) -> list[int]:
    return tokenizer(render_prompt(tokenizer, messages, system), add_special_tokens=False)["input_ids"]


def end_of_turn_id(tokenizer) -> int:
    return tokenizer.eos_token_id


def encode_response(tokenizer, text: str, max_tokens: int | None = None) -> tuple[list[int], bool]:
    """Token ids of a response plus its end-of-turn token; returns (ids, truncated).

    Truncation policy: keep the first `max_tokens` ids (the end-of-turn token is then dropped,
    since the response did not end there). Callers count truncations and log them.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [end_of_turn_id(tokenizer)]
    if max_tokens is not None and len(ids) > max_tokens:
        return ids[:max_tokens], True
    return ids, False
