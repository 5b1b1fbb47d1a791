"""Summed log-probs of many groups in inference mode: length-sorted batches under a token budget,
optionally saved batch by batch (a killed run resumes) and shared across processes.

Reference scoring, online resampling and evaluation all score fixed models this way.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from negalign.base import distributed
from negalign.base.io import atomic_path
from negalign.base.progress import Progress
from negalign.modeling.batching import group_token_count, pack_by_token_budget
from negalign.modeling.logprobs import Group, group_logprobs
from negalign.modeling.precision import resolve as resolve_precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast on `device` for precision 'bf16' (or 'auto' where bf16 is fast), else nothing (fp32)."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def score_groups(model, groups: list[Group], *, batch_tokens: int, precision: str, chunk_tokens: int = 2048,
                 partial_dir: Path | None = None, log=print, label: str = "reference",
                 progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """[G, Rmax] summed log-probs and lengths of every group, in inference mode, length-sorted batches.

    With `partial_dir`, each batch's result is saved as it completes and reused on a rerun.
    Progress (groups, tokens/s) goes to `log`, or to stderr when `log` is None; `progress=False`
    hides it (a scoring nested in another stage's progress, as online resampling's).
    Under a multi-process launch only rank 0 shows it.
    """
    r_max = max((len(g.response_ids) for g in groups), default=0)
    logps = torch.zeros(len(groups), r_max, dtype=torch.float32)
    lengths = torch.zeros(len(groups), r_max, dtype=torch.int64)
    batches = pack_by_token_budget([group_token_count(g) for g in groups], batch_tokens)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # Under a multi-process launch each process scores every world-th batch, then reads the others'.
    sharded = partial_dir is not None and distributed.current().world > 1
    progress = _progress(batches, partial_dir, sharded, log, label, shown=progress)
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
                progress.update(len(idx), tokens=sum(group_token_count(groups[i]) for i in idx))
            i = part["index"]
            logps[i, :part["logps"].shape[1]] = part["logps"]
            lengths[i, :part["lengths"].shape[1]] = part["lengths"]
    finally:
        model.train(was_training)
        progress.close()
    if sharded:
        _read_other_shards(partial_dir, len(batches), logps, lengths)
    return logps, lengths


def _progress(batches: list[list[int]], partial_dir: Path | None, sharded: bool, log, label: str,
              shown: bool) -> Progress:
    """Groups scored out of all of them (of this process's share under a launch); batches saved by
    an interrupted run count as done, so the ETA comes from the new work."""
    mine = [(b, idx) for b, idx in enumerate(batches) if not sharded or distributed.owns(b)]
    saved = [idx for b, idx in mine if partial_dir is not None and (partial_dir / f"batch-{b:06d}.safetensors").exists()]
    total = sum(len(idx) for _, idx in mine) if shown else 0  # a total of 0 shows nothing
    return Progress(label, total, done=sum(map(len, saved)), unit="groups",
                    log=distributed.main_only(log) if log is not None else None)


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
