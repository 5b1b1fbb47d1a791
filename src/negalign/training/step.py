"""One training step, callable alone: micro-batched forward and backward of a batch of groups, gradient
clipping, and AdamW unless the loss or a gradient is non-finite anywhere (then the step is skipped).

The loop (negalign.training.loop) adds the schedule, logging, checkpoints and the final save around
it; benchmarks/throughput/bench_train.py times this same function.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from negalign.config import Config
from negalign.modeling.inference import autocast
from negalign.modeling.logprobs import Group, group_logprobs
from negalign.objectives.registry import GroupLogps, compute_objective, get_objective
from negalign.training.checkpoints import sharded_state
from negalign.training.reference import ReferenceScores
from negalign.training.schedule import micro_batches


@dataclass
class TrainData:
    """Everything a step needs about the groups: tokens, reference scores, labels."""
    groups: list[Group]              # responses laid out [anchors..., negative]
    n_anchors: int                   # K (anchors per group, padded slots have length 0)
    reference: ReferenceScores | None
    labels: torch.Tensor | None = None  # soft labels for pairwise methods (rDPO)


@dataclass(frozen=True)
class StepSettings:
    """What a step needs from the config: the method, its loss settings and how to run the forward."""
    method: str
    hp: dict                          # loss settings (beta, alpha, delta, tau)
    micro_groups: int = 4             # groups per forward/backward
    chunk_tokens: int = 2048          # LM-head rows per chunk
    grouped: bool = True              # prompt once per group (else one sequence per response)
    precision: str = "auto"           # bf16 autocast | fp32 | auto (modeling/precision.py)
    max_grad_norm: float = 1.0

    @classmethod
    def from_config(cls, cfg: Config) -> "StepSettings":
        t = cfg.train
        return cls(method=t.method, hp={"beta": t.beta, "alpha": t.alpha, "delta": t.delta, "tau": t.tau},
                   micro_groups=t.micro_groups, chunk_tokens=t.chunk_tokens, grouped=t.grouped_forward,
                   precision=t.precision, max_grad_norm=t.max_grad_norm)


@dataclass
class StepResult:
    sums: dict[str, float]     # this process's metric sums (each group weighted by 1); means come from a reduce
    tokens: int                # response tokens this process ran
    grad_norm: torch.Tensor    # before clipping; NaN when the loss was non-finite
    finite: bool               # False: the step was skipped on every process


def batch_logps(model, data: TrainData, idx: list[int], method: str, *, chunk_tokens: int,
                grouped: bool, autocast) -> GroupLogps:
    """Policy log-probs of groups `idx` (with their cached reference scores and labels) as GroupLogps."""
    objective = get_objective(method)
    k = data.n_anchors if objective.needs_anchors else 0
    # Methods without anchors skip them entirely: the negative alone is run.
    groups = [data.groups[i] if k else Group(data.groups[i].prompt_ids, data.groups[i].response_ids[-1:])
              for i in idx]
    with autocast():
        lp, ln = group_logprobs(model, groups, method="grouped" if grouped else "naive", chunk_tokens=chunk_tokens)
    n_resp = [len(g.response_ids) for g in groups]
    rows = torch.arange(len(groups), device=lp.device)
    last = torch.as_tensor(n_resp, device=lp.device) - 1
    policy_negative = lp[rows, last]
    negative_lengths = ln[rows, last]
    policy_anchor = lp.new_zeros(len(groups), k)
    anchor_lengths = ln.new_zeros(len(groups), k)
    if k:
        width = min(k, lp.shape[1] - 1)
        cols = torch.arange(k, device=lp.device)
        valid = cols[None, :width] < (last[:, None])
        policy_anchor = torch.cat([torch.where(valid, lp[:, :width], 0.0), lp.new_zeros(len(groups), k - width)], 1)
        anchor_lengths = torch.cat([torch.where(valid, ln[:, :width], 0), ln.new_zeros(len(groups), k - width)], 1)
    ref = data.reference.select(idx) if data.reference is not None else None
    dev = lp.device
    return GroupLogps(
        policy_anchor=policy_anchor,
        ref_anchor=ref.anchor_logps[:, :k].to(dev) if ref is not None else None,
        anchor_mask=anchor_lengths > 0,
        anchor_lengths=anchor_lengths,
        policy_negative=policy_negative,
        ref_negative=ref.negative_logps.to(dev) if ref is not None else None,
        negative_lengths=negative_lengths,
        label=data.labels[torch.as_tensor(idx)].to(dev) if data.labels is not None else None,
    )


def train_step(model, optimizer, params, data: TrainData, global_idx: list[int], settings: StepSettings,
               accelerator) -> StepResult:
    """One optimizer step on the groups `global_idx` (indices into data.groups, the whole global batch).

    This process runs its share in micro-batches; each group's loss weighs 1/len(global_idx) whichever
    process holds it. `accelerator` is an accelerate Accelerator (prepared or not: a plain one runs a
    single process). Gradients are zeroed at the end; the scheduler is the caller's.
    """
    world = accelerator.num_processes
    micro = micro_batches(global_idx, accelerator.process_index, world, settings.micro_groups,
                          same_count=sharded_state(accelerator))
    sums: dict[str, float] = {}
    tokens, finite = 0, True
    for m, (idx, weight) in enumerate(micro):
        sync = m == len(micro) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            lp = batch_logps(model, data, idx, settings.method, chunk_tokens=settings.chunk_tokens,
                             grouped=settings.grouped,
                             autocast=lambda: autocast(accelerator.device, settings.precision))
            losses, metrics = compute_objective(settings.method, lp, settings.hp)
            # DDP averages gradients over processes, hence the factor `world`.
            loss = losses.sum() * (weight * world / len(global_idx))
            if not torch.isfinite(loss):
                finite = False
            else:
                accelerator.backward(loss)
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + value * len(idx) * weight
        sums["loss"] = sums.get("loss", 0.0) + float(losses.detach().sum()) * weight
        tokens += int(lp.anchor_lengths.sum() + lp.negative_lengths.sum()) * int(weight)
    grad_norm = accelerator.clip_grad_norm_(params, settings.max_grad_norm) if finite else torch.tensor(float("nan"))
    # Every process must agree to step: one non-finite loss or gradient anywhere skips it everywhere.
    flag = torch.tensor([0.0 if finite and torch.isfinite(torch.as_tensor(grad_norm)) else 1.0],
                        device=accelerator.device)
    finite = float(accelerator.reduce(flag, reduction="sum")) == 0.0
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(sums, tokens, grad_norm, finite)


def fused_adamw_applies(params, accelerator) -> bool:
    """torch's fused AdamW (one kernel over all tensors; 0.07 vs 0.18 s per step at 135M on this
    CPU) takes plain float tensors on CPU or CUDA; FSDP/DeepSpeed swap in their own parameters."""
    return (not sharded_state(accelerator) and bool(params)
            and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params))


def make_optimizer(params, *, lr: float, weight_decay: float, accelerator) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, fused where it applies."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay,
                             fused=fused_adamw_applies(params, accelerator))
