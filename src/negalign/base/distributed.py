"""Multi-process helpers: who am I, which share of the work is mine, and merging the shares.

Works under `accelerate launch` and `torchrun` (both set RANK / WORLD_SIZE / LOCAL_RANK) and is a
no-op in a plain single process. Sharded stages follow one pattern: each process does the work
items whose index is congruent to its rank, writes them to a file of its own (atomically or
append-only, so a killed rank loses at most its item in flight), then all meet at a barrier and
rank 0 merges every shard into the one output file, keyed so nothing is lost or duplicated.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from negalign.base.io import read_jsonl_tolerant, write_jsonl


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def current() -> Dist:
    """This process's place, from the launcher's environment (a single process if none)."""
    env = os.environ
    return Dist(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def device() -> torch.device:
    """The device this process should put its model on: its own GPU under a launcher, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", current().local_rank)
    return torch.device("cpu")


def ensure_process_group() -> None:
    """Join the launcher's process group if this is a multi-process run and nobody has yet.

    accelerate's PartialState picks the backend (NCCL on GPUs, gloo on CPU) and is the same state
    the training Accelerator uses later, so the group is made once per process.
    """
    if current().world <= 1 or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if current().world <= 1:
        return
    ensure_process_group()
    torch.distributed.barrier()


def owns(index: int, dist: Dist | None = None) -> bool:
    """Whether work item `index` is this process's: round-robin, so shares differ by at most one."""
    dist = dist or current()
    return index % dist.world == dist.rank


def main_only(log: Callable[..., None]) -> Callable[..., None]:
    """`log` on rank 0, silence elsewhere (so a run with N processes prints each line once)."""
    return log if current().main else (lambda *_a, **_k: None)


# ---------------------------------------------------------------- JSONL shards

_SHARD = re.compile(r"\.rank-(\d+)$")


def shard_path(path: str | os.PathLike, rank: int) -> Path:
    """anchors.jsonl -> anchors.rank-00001.jsonl (beside it)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank-{rank:05d}{path.suffix}")


def output_path(path: str | os.PathLike, dist: Dist | None = None) -> Path:
    """Where this process appends its rows: the file itself in a single process, its shard otherwise."""
    dist = dist or current()
    return Path(path) if dist.world <= 1 else shard_path(path, dist.rank)


def shard_files(path: str | os.PathLike) -> list[Path]:
    """Every rank's shard of `path` still on disk, whatever world size wrote it."""
    path = Path(path)
    found = [p for p in path.parent.glob(f"{path.stem}.rank-*{path.suffix}")
             if _SHARD.search(p.name[:len(p.name) - len(path.suffix)])]
    return sorted(found)


def read_with_shards(path: str | os.PathLike, key: str) -> dict[str, dict]:
    """Rows of `path` and of all its shards by `key`; the first row for a key wins (they are equal:
    a chunk redone after a kill is redrawn with the same seed)."""
    rows: dict[str, dict] = {}
    for p in [Path(path), *shard_files(path)]:
        for row in read_jsonl_tolerant(p):
            rows.setdefault(row[key], row)
    return rows


def merge_jsonl_shards(path: str | os.PathLike, key: str, order: Iterable[str]) -> dict[str, dict]:
    """Rewrite `path` atomically with the rows of it and its shards, in `order` (keys not in `order`
    follow in file order), then delete the shards. Rank 0 only, after a barrier.

    Crash-safe at every point: until the rename the shards are intact; after it, leftover shards
    only repeat rows the merged file already has, and the next merge drops them.
    """
    rows = read_with_shards(path, key)
    ordered = [k for k in order if k in rows]
    seen = set(ordered)
    ordered += [k for k in rows if k not in seen]
    write_jsonl(path, (rows[k] for k in ordered))
    for shard in shard_files(path):
        with contextlib.suppress(FileNotFoundError):
            shard.unlink()
    return {k: rows[k] for k in ordered}
