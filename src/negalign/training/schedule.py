"""Which groups each optimizer step and each process takes, and the learning-rate schedule: pure functions."""

from __future__ import annotations

import math

import torch

from negalign.config import Config


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup to 1, then linear decay to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 7919 + epoch)
    return torch.randperm(n, generator=g).tolist()


def step_indices(n: int, groups_per_step: int, seed: int, step: int) -> list[int]:
    """Global group indices of optimizer step `step` (epochs concatenated; the last batch may be short)."""
    steps_per_epoch = math.ceil(n / groups_per_step)
    epoch, within = divmod(step, steps_per_epoch)
    order = epoch_order(n, seed, epoch)
    return order[within * groups_per_step:(within + 1) * groups_per_step]


def total_steps(n: int, cfg: Config) -> int:
    steps = math.ceil(n / cfg.train.groups_per_step) * cfg.train.epochs
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps


def local_share(global_idx: list[int], rank: int, world: int) -> tuple[list[int], float]:
    """This process's groups of a global batch, and the weight of their loss (0 or 1).

    A process left without a group (the short last batch of an epoch) still runs the first group
    with weight 0: DDP and FSDP need every process in every gradient all-reduce, or they hang.
    """
    mine = global_idx[rank::world]
    return (mine, 1.0) if mine else (global_idx[:1], 0.0)


def micro_batches(global_idx: list[int], rank: int, world: int, micro_groups: int, *,
                  same_count: bool) -> list[tuple[list[int], float]]:
    """This process's micro-batches of a global batch, each with the weight of its loss (0 or 1).

    `same_count` pads with weight-0 micro-batches so that every process runs as many forwards and
    backwards: FSDP and ZeRO-3 gather parameters in every forward (a collective), so a process with
    one micro-batch fewer would leave the others waiting for ever.
    """
    local_idx, weight = local_share(global_idx, rank, world)
    micro = [(local_idx[i:i + micro_groups], weight) for i in range(0, len(local_idx), micro_groups)]
    if same_count:
        most = math.ceil(math.ceil(len(global_idx) / world) / micro_groups)
        micro += [(global_idx[:1], 0.0)] * (most - len(micro))
    return micro
