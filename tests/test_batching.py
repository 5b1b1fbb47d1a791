"""Length-aware batching helpers."""

from __future__ import annotations

import random

import pytest

from negalign.modeling.batching import group_token_count, pack_by_token_budget, sort_by_length
from negalign.modeling.logprobs import Group


def test_group_token_count_counts_prompt_once():
    assert group_token_count(Group([1, 2, 3], [[4, 5], [6], [7, 8, 9, 10]])) == 3 + 2 + 1 + 4
    assert group_token_count(Group([1], [])) == 1


def _check_partition(batches, sizes, budget):
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(sizes)))  # every index exactly once
    for b in batches:
        padded = max(sizes[i] for i in b) * len(b)
        assert padded <= budget or len(b) == 1


def test_pack_respects_budget_and_sorts_longest_first():
    sizes = [10, 50, 20, 45, 5, 30, 48]
    batches = pack_by_token_budget(sizes, 100)
    _check_partition(batches, sizes, 100)
    assert batches[0] == [1, 6]  # the longest items first, padded to 50 x 2
    lengths = [sizes[i] for b in batches for i in b]
    assert lengths == sorted(lengths, reverse=True)
    # Sorting makes batches homogeneous: far less padding than input order.
    def waste(bs):
        return sum(max(sizes[i] for i in b) * len(b) - sum(sizes[i] for i in b) for b in bs)
    assert waste(batches) < waste(pack_by_token_budget(sizes, 100, sort=False))


def test_pack_oversized_item_gets_its_own_batch():
    batches = pack_by_token_budget([5, 300, 5], 100)
    assert [1] in batches
    _check_partition(batches, [5, 300, 5], 100)


def test_pack_unsorted_keeps_input_order():
    assert pack_by_token_budget([3, 3, 3, 3, 3], 6, sort=False) == [[0, 1], [2, 3], [4]]
    assert pack_by_token_budget([], 10) == []


def test_pack_random_partitions_are_valid():
    rng = random.Random(0)
    for _ in range(50):
        sizes = [rng.randint(0, 200) for _ in range(rng.randint(1, 40))]
        budget = rng.randint(1, 600)
        _check_partition(pack_by_token_budget(sizes, budget), sizes, budget)


def test_pack_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pack_by_token_budget([1, 2], 0)
    with pytest.raises(ValueError):
        pack_by_token_budget([1, -2], 10)


def test_sort_by_length_roundtrip():
    lengths = [4, 9, 1, 9, 6]
    order, inverse = sort_by_length(lengths)
    assert order == [1, 3, 4, 0, 2]  # stable for the tie between 1 and 3
    results = [lengths[i] * 10 for i in order]  # computed in sorted order
    assert [results[inverse[i]] for i in range(len(lengths))] == [x * 10 for x in lengths]
    asc, _ = sort_by_length(lengths, descending=False)
    assert [lengths[i] for i in asc] == sorted(lengths)
    assert sort_by_length([]) == ([], [])
