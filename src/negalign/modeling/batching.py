"""Length-aware batching: pure helpers that decide which items share a forward pass.

Padding wastes compute in proportion to the spread of lengths inside a batch, so items are sorted
by size before they are cut into batches under a token budget.
"""

from __future__ import annotations

from collections.abc import Sequence


def group_token_count(group) -> int:
    """Tokens a group occupies in a grouped forward: the prompt once plus every response."""
    return len(group.prompt_ids) + sum(len(r) for r in group.response_ids)


def pack_by_token_budget(sizes: Sequence[int], max_tokens: int, *, sort: bool = True) -> list[list[int]]:
    """Cut items into batches whose padded size (items x longest item) stays within `max_tokens`.

    Returns lists of indices into `sizes`. With `sort`, items are taken longest first so that each
    batch holds items of similar size (little padding) and the first batch is the largest one, which
    surfaces out-of-memory problems at once. An item larger than the budget forms a batch alone.
    Every index appears exactly once.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if any(s < 0 for s in sizes):
        raise ValueError("sizes must be non-negative")
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)) if sort else list(range(len(sizes)))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        size = sizes[i]
        new_longest = max(longest, size)
        if current and new_longest * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, new_longest = [], size
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def sort_by_length(lengths: Sequence[int], *, descending: bool = True) -> tuple[list[int], list[int]]:
    """Return (order, inverse): `order` lists indices by length, `inverse[i]` is where item i went.

    Results computed on `[items[j] for j in order]` are put back in input order with
    `[results[inverse[i]] for i in range(n)]`. Ties keep input order (stable).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i] if descending else lengths[i])
    inverse = [0] * len(order)
    for position, i in enumerate(order):
        inverse[i] = position
    return order, inverse
