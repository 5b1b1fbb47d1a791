"""Deterministic train / held-out split by prompt, so one prompt's responses never sit on both sides."""

from __future__ import annotations

import hashlib
from typing import Sequence

from negalign.base.errors import UserError
from negalign.data.records import Example, prompt_key


def _rank(seed: int, key: str) -> str:
    # Ordering by a seeded hash (not by input order or a shuffled list) keeps each prompt's side
    # the same when the input is reordered, and mostly the same when prompts are added.
    return hashlib.sha256(f"{seed}:{key}".encode("utf-8")).hexdigest()


def split_by_prompt(examples: Sequence[Example], heldout_fraction: float = 0.2,
                    seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Split examples into (train, heldout) by prompt.

    Examples sharing a prompt (same conversation) go to the same side. Exactly
    round(heldout_fraction * n_prompts) prompts are held out (at least one when the fraction is
    positive and there are two or more prompts; never all prompts unless the fraction is 1).
    Both lists keep the input order.
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise UserError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}",
                        field="heldout_fraction")
    keys = {prompt_key(ex.prompt) for ex in examples}
    n_held = round(heldout_fraction * len(keys))
    if heldout_fraction > 0 and n_held == 0 and len(keys) >= 2:
        n_held = 1
    if heldout_fraction < 1 and n_held == len(keys) and len(keys) >= 2:
        n_held = len(keys) - 1
    held_keys = set(sorted(keys, key=lambda k: _rank(seed, k))[:n_held])
    train = [ex for ex in examples if prompt_key(ex.prompt) not in held_keys]
    heldout = [ex for ex in examples if prompt_key(ex.prompt) in held_keys]
    return train, heldout
