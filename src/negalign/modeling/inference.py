"""Summed log-probs of many groups in inference mode: length-sorted batches under a token budget,
optionally saved batch by batch (a killed run resumes) and shared across processes.

Reference scoring, online resampling and evaluation all score fixed models this way.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from negalign.base import distributed
from negalign.base.io import atomic_path
from negalign.modeling.batching import group_token_count, pack_by_token_budget
from negalign.modeling.logprobs import Group, group_logprobs


def autocast(device: torch.device, precision: str):
    """bf16 autocast on `device` for precision 'bf16', else nothing (fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def score_groups(model, groups: list[Group], *, batch_tokens: int, precision: str, chunk_tokens: int = 2048,
                 partial_dir: Path | None = None, log=print, label: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """[G, Rmax] summed log-probs and lengths of every group, in inference mode, length-sorted batches.

    With `partial_dir`, each batch's result is saved as it completes and reused on a rerun.
    Under a multi-process launch only rank 0 logs.
    """
    log = distributed.main_only(log)
    r_max = max((len(g.response_ids) for g in groups), default=0)
    logps = torch.zeros(len(groups), r_max, dtype=torch.float32)
    lengths = torch.zeros(len(groups), r_max, dtype=torch.int64)
    batches = pack_by_token_budget([group_token_count(g) for g in groups], batch_tokens)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    t0, tokens = time.perf_counter(), 0
    # Under a multi-process launch each process scores every world-th batch, then reads the others'.
    sharded = partial_dir is not None and distributed.current().world > 1
    try:
        for b, idx in enumerate(batches):
            shard = partial_dir / f"batch-{b:06d}.safetensors" if partial_dir else None
            if sharded and not distributed.owns(b):
                continue
            if shard is not None and shard.exists():
                part = load_file(str(shard))
            else:
                with torch.inference_mode(), autocast(device, precision):
                    lp, ln = group_logprobs(model, [groups[i] for i in idx], chunk_tokens=chunk_tokens)
                part = {"index": torch.as_tensor(idx), "logps": lp.float().cpu(), "lengths": ln.cpu()}
                if shard is not None:
                    with atomic_path(shard) as tmp:
                        save_file(part, str(tmp))
                tokens += sum(group_token_count(groups[i]) for i in idx)
            i = part["index"]
            logps[i, :part["logps"].shape[1]] = part["logps"]
            lengths[i, :part["lengths"].shape[1]] = part["lengths"]
            if b % 10 == 0 or b == len(batches) - 1:
                rate = tokens / max(time.perf_counter() - t0, 1e-9)
                log(f"{label}: batch {b + 1}/{len(batches)}  ({rate:.0f} tokens/s)")
    finally:
        model.train(was_training)
    if sharded:
        _read_other_shards(partial_dir, len(batches), logps, lengths)
    return logps, lengths


def _read_other_shards(partial_dir: Path, n_batches: int, logps: torch.Tensor, lengths: torch.Tensor) -> None:
    """Fill in the batches other processes scored (multi-process hook; see negalign.base.distributed)."""
    distributed.barrier()  # every batch file is on disk
    for b in range(n_batches):
        if not distributed.owns(b):
            part = load_file(str(partial_dir / f"batch-{b:06d}.safetensors"))
            i = part["index"]
            logps[i, :part["logps"].shape[1]] = part["logps"]
            lengths[i, :part["lengths"].shape[1]] = part["lengths"]
    distributed.barrier()  # everyone has read them: rank 0 may now delete the partial folder
