"""Data: records of prompts with human negatives, loaders, validation, chat formatting."""

from negalign.data.records import Example, normalize_prompt

__all__ = ["Example", "normalize_prompt"]
