"""Stage `train`: the training loop on accelerate, for every objective in negalign.objectives.

fp32 master weights with optional bf16 autocast, gradient accumulation over micro-batches of
groups, AdamW with linear warmup and decay, gradient clipping, non-finite step skipping,
checkpoints (weights, optimizer, scheduler, RNG, data position) and exact resume. Runs unchanged
under `accelerate launch` (DDP, FSDP, DeepSpeed): each process takes its share of every global
batch, rank 0 alone logs and writes; under FSDP/DeepSpeed the sharded model and optimizer are saved
and loaded by every rank through accelerate (docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from negalign.config import Config
from negalign.base.fingerprint import fingerprint
from negalign.base.errors import UserError
from negalign.base.io import JsonlAppender, read_jsonl_tolerant, write_json, write_jsonl
from negalign.modeling.logprobs import Group, group_logprobs
from negalign.modeling.loading import save_model
from negalign.modeling.lora import is_lora
from negalign.objectives.registry import GroupLogps, compute_objective, get_objective
from negalign.stages.reference import ReferenceScores

METRICS_FILE = "train/metrics.jsonl"
CHECKPOINTS = "train/checkpoints"
MODEL_DIR = "model"


class TrainingStopped(UserError):
    """The run stopped itself (too many non-finite steps): one line, exit code 2."""


@dataclass
class TrainData:
    """Everything a step needs about the groups: tokens, reference scores, labels."""
    groups: list[Group]              # responses laid out [anchors..., negative]
    n_anchors: int                   # K (anchors per group, padded slots have length 0)
    reference: ReferenceScores | None
    labels: torch.Tensor | None = None  # soft labels for pairwise methods (rDPO)


# ---------------------------------------------------------------- schedule and data order

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


# ---------------------------------------------------------------- one batch of groups -> loss

def batch_logps(model, data: TrainData, idx: list[int], method: str, *, chunk_tokens: int,
                grouped: bool, autocast) -> GroupLogps:
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


def loss_settings(cfg: Config) -> dict:
    t = cfg.train
    return {"beta": t.beta, "alpha": t.alpha, "delta": t.delta, "tau": t.tau}


# ---------------------------------------------------------------- checkpoints

def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / CHECKPOINTS
    if not root.exists():
        return []
    done = [p for p in root.glob("step-*") if (p / "state.json").exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, extra: dict, keep: int,
                    accelerator=None) -> Path:
    """Write step-N/ whole into a temporary folder, then rename: a kill never leaves half a checkpoint.

    Called by every process. Plain and DDP runs: rank 0 writes the trainable weights and the optimizer
    (identical on all ranks). FSDP/DeepSpeed (`sharded_state(accelerator)`): every rank writes its
    shards of model and optimizer through `accelerator.save_state` into accelerate/.
    """
    main = accelerator is None or accelerator.is_main_process
    root = run_dir / CHECKPOINTS
    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.tmp"
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    sharded = sharded_state(accelerator)
    if sharded:
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / "accelerate"))  # collective: each rank its shard
        accelerator.wait_for_everyone()
    if not main:
        return final
    if not sharded:
        save_file(_trainable_state(model), str(tmp / "weights.safetensors"))
    torch.save({"optimizer": None if sharded else optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **extra}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, accelerator=None) -> dict:
    """Every process loads the same checkpoint (model = the unwrapped model, or the prepared one when sharded)."""
    if (path / "accelerate").exists():
        if not sharded_state(accelerator):
            raise UserError("this checkpoint holds FSDP/DeepSpeed shards; resume it under the same "
                            "accelerate config", path=str(path))
        accelerator.load_state(str(path / "accelerate"))
    else:
        if sharded_state(accelerator):
            raise UserError("this checkpoint was written without FSDP/DeepSpeed; resume it under a "
                            "DDP or single-process launch", path=str(path))
        weights = load_file(str(path / "weights.safetensors"))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value.to(params[name].device))
    # Our own file, written by save_checkpoint; weights_only keeps arbitrary objects out.
    state = torch.load(path / "trainer.pt", weights_only=True)
    if state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return json.loads((path / "state.json").read_text())


def sharded_state(accelerator) -> bool:
    """Whether model and optimizer state are split across processes (FSDP, DeepSpeed)."""
    if accelerator is None:
        return False
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


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


def fused_adamw_applies(params, accelerator) -> bool:
    """torch's fused AdamW (one kernel over all tensors; 0.07 vs 0.18 s per step at 135M on this
    CPU) takes plain float tensors on CPU or CUDA; FSDP/DeepSpeed swap in their own parameters."""
    return (not sharded_state(accelerator) and bool(params)
            and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params))


def local_share(global_idx: list[int], rank: int, world: int) -> tuple[list[int], float]:
    """This process's groups of a global batch, and the weight of their loss (0 or 1).

    A process left without a group (the short last batch of an epoch) still runs the first group
    with weight 0: DDP and FSDP need every process in every gradient all-reduce, or they hang.
    """
    mine = global_idx[rank::world]
    return (mine, 1.0) if mine else (global_idx[:1], 0.0)


# ---------------------------------------------------------------- the loop

def run_train(cfg: Config, model, tokenizer, data: TrainData, *, resume: bool = False, log=print,
              on_step=None) -> Path:
    """Train `model` in place on `data`; save the final model folder and return its path.

    `on_step(step, model)`, if given, runs after each optimizer step (online D2O resampling hooks in here).
    """
    from accelerate import Accelerator

    t = cfg.train
    run_dir = Path(cfg.run_dir)
    objective = get_objective(t.method)
    if objective.needs_reference and data.reference is None:
        raise UserError(f"method '{t.method}' needs reference log-probs; run `negalign reference` first",
                        field="train.method")
    if t.precision not in ("bf16", "fp32"):
        raise UserError("expected 'bf16' or 'fp32'", field="train.precision")
    if t.groups_per_step < 1 or t.micro_groups < 1:
        raise UserError("must be at least 1", field="train.groups_per_step")
    n = len(data.groups)
    if n == 0:
        raise UserError("no training groups: the data has no negatives", field="data.source")

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    world, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    log = log if main else (lambda *_a, **_k: None)  # one copy of every line, from rank 0
    steps = total_steps(n, cfg)
    warmup = int(round(t.warmup_ratio * steps))
    if t.activation_checkpointing:
        from negalign.modeling.activation_checkpointing import enable_activation_checkpointing

        enable_activation_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay,
                                  fused=fused_adamw_applies(params, accelerator))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, warmup))
    model.train()
    model, optimizer = accelerator.prepare(model, optimizer)
    if sharded_state(accelerator):
        # FSDP/DeepSpeed clip through the prepared model, which wants its own parameter list.
        params = [p for p in model.parameters() if p.requires_grad]
    device = accelerator.device

    def autocast():
        if t.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    start_step, nonfinite_total = 0, 0
    # Activation checkpointing changes memory, not results: a run may resume with it switched on.
    run_fp = fingerprint({"train": {k: v for k, v in dataclasses.asdict(t).items() if k != "activation_checkpointing"},
                          "model": dataclasses.asdict(cfg.model),
                          "data": dataclasses.asdict(cfg.data), "groups": n})
    if resume:
        ckpts = list_checkpoints(run_dir)
        if ckpts:
            saved_fp = json.loads((ckpts[-1] / "state.json").read_text()).get("fingerprint")
            if saved_fp != run_fp:
                raise UserError("the checkpoint was made with other model, data or train settings; resume "
                                "with the same config or use a new run directory", path=str(ckpts[-1]))
            state = load_checkpoint(ckpts[-1], accelerator.unwrap_model(model), optimizer, scheduler, accelerator)
            start_step, nonfinite_total = state["step"], state.get("nonfinite_total", 0)
            log(f"train: resumed from {ckpts[-1].name} (step {start_step}/{steps})")
        else:
            log("train: --resume given but no checkpoint found; starting from step 0")
    elif list_checkpoints(run_dir):
        raise UserError("this run directory already has training checkpoints; pass --resume to continue "
                        "or use a new run directory", path=str(run_dir / CHECKPOINTS))
    metrics_path = run_dir / METRICS_FILE
    if main:
        # Rows past the checkpoint were logged by the interrupted run and are redone now.
        rows = [r for r in read_jsonl_tolerant(metrics_path) if r.get("step", 0) <= start_step]
        write_jsonl(metrics_path, rows)
    metrics_log = JsonlAppender(metrics_path) if main else None

    hp = loss_settings(cfg)
    consecutive_bad = 0
    log(f"train: method={t.method} groups={n} steps={steps} groups/step={t.groups_per_step} "
        f"micro={t.micro_groups} lr={t.lr} precision={t.precision} processes={world}")
    try:
        for step in range(start_step, steps):
            t0 = time.perf_counter()
            global_idx = step_indices(n, t.groups_per_step, t.seed, step)
            micro = micro_batches(global_idx, rank, world, t.micro_groups, same_count=sharded_state(accelerator))
            sums: dict[str, float] = {}
            tokens, finite = 0, True
            for m, (idx, weight) in enumerate(micro):
                sync = m == len(micro) - 1
                ctx = contextlib.nullcontext() if sync else accelerator.no_sync(model)
                with ctx:
                    lp = batch_logps(model, data, idx, t.method, chunk_tokens=t.chunk_tokens,
                                     grouped=t.grouped_forward, autocast=autocast)
                    losses, metrics = compute_objective(t.method, lp, hp)
                    # Each group weighs 1/global_batch, whichever process and micro-batch holds it;
                    # DDP averages over processes, hence the factor `world`.
                    loss = losses.sum() * (weight * world / len(global_idx))
                    if not torch.isfinite(loss):
                        finite = False
                    else:
                        accelerator.backward(loss)
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value * len(idx) * weight
                sums["loss"] = sums.get("loss", 0.0) + float(losses.detach().sum()) * weight
                tokens += int(lp.anchor_lengths.sum() + lp.negative_lengths.sum()) * int(weight)
            grad_norm = accelerator.clip_grad_norm_(params, t.max_grad_norm) if finite else torch.tensor(float("nan"))
            flag = torch.tensor([0.0 if finite and torch.isfinite(torch.as_tensor(grad_norm)) else 1.0], device=device)
            finite = float(accelerator.reduce(flag, reduction="sum")) == 0.0
            if finite:
                optimizer.step()
                consecutive_bad = 0
            else:
                nonfinite_total += 1
                consecutive_bad += 1
                log(f"train: step {step + 1}: non-finite loss or gradient, step skipped "
                    f"({consecutive_bad} in a row, {nonfinite_total} in all)")
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if consecutive_bad >= t.max_nonfinite_steps:
                raise TrainingStopped(f"{consecutive_bad} non-finite steps in a row (train.max_nonfinite_steps="
                                      f"{t.max_nonfinite_steps}); lower train.lr or check the data. The last "
                                      f"checkpoint is kept", field="train.max_nonfinite_steps")
            # Metrics: mean over the global batch (sum over processes / global count).
            keys = sorted(sums)
            totals = accelerator.reduce(torch.tensor([sums[k] for k in keys] + [float(tokens)], device=device,
                                                     dtype=torch.float64), reduction="sum").tolist()
            row = {k: v / len(global_idx) for k, v in zip(keys, totals[:-1])}
            seconds = time.perf_counter() - t0
            row.update(step=step + 1, lr=scheduler.get_last_lr()[0],
                       grad_norm=float(grad_norm) if finite else None, tokens=int(totals[-1]),
                       seconds=round(seconds, 3), tokens_per_s=round(totals[-1] / seconds, 1),
                       skipped=not finite)
            if main:
                metrics_log.write(row)
                if (step + 1) % t.log_every == 0 or step + 1 == steps:
                    log(format_row(row, steps))
            if on_step is not None:
                on_step(step + 1, accelerator.unwrap_model(model))
            if t.save_every and (step + 1) % t.save_every == 0 and step + 1 < steps:
                accelerator.wait_for_everyone()
                save_checkpoint(run_dir, step + 1, accelerator.unwrap_model(model), optimizer, scheduler,
                                {"nonfinite_total": nonfinite_total, "fingerprint": run_fp}, t.keep_checkpoints,
                                accelerator)
                accelerator.wait_for_everyone()
    finally:
        if metrics_log is not None:
            metrics_log.close()
    accelerator.wait_for_everyone()
    out = run_dir / MODEL_DIR
    # Under FSDP/DeepSpeed the full weights exist only once gathered (a collective, on every rank).
    full_state = accelerator.get_state_dict(model) if sharded_state(accelerator) else None
    if main:
        unwrapped = accelerator.unwrap_model(model)
        if full_state is not None:
            _save_gathered(unwrapped, full_state, tokenizer, out)
        else:
            save_model(unwrapped, tokenizer, out)
        write_json(run_dir / "train" / "done.json", {"steps": steps, "nonfinite_steps": nonfinite_total,
                                                     "lora": is_lora(unwrapped)})
        log(f"train: saved model to {out}")
        if not t.keep_checkpoints_when_done:
            # A finished run never resumes (done.json), and each checkpoint holds weights plus
            # AdamW state: 1.6 GB for a 135M model.
            shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    accelerator.wait_for_everyone()
    return out


def _save_gathered(model, state: dict, tokenizer, out: Path) -> None:
    """Save a gathered FSDP/DeepSpeed state dict as a model folder, replacing `out` atomically.

    (LoRA under FSDP/DeepSpeed saves the adapter folder as peft writes it; merge it afterwards.)
    """
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def format_row(row: dict, steps: int) -> str:
    parts = [f"step {row['step']:>4}/{steps}", f"loss {row['loss']:.4f}"]
    for key, label in (("rewards/margins", "margin"), ("rewards/accuracies", "acc"),
                       ("logratio/negative", "neg_logratio"), ("logratio/anchors", "anchor_logratio")):
        if key in row:
            parts.append(f"{label} {row[key]:+.3f}" if key != "rewards/accuracies" else f"{label} {row[key]:.2f}")
    parts.append(f"{row['tokens_per_s']:.0f} tok/s")
    return "  ".join(parts)
