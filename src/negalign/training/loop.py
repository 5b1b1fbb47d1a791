"""Stage `train`: the training loop on accelerate, for every objective in negalign.objectives.

setup (accelerator, optimizer, schedule) -> resume or refuse -> train steps (negalign.training.step)
with metrics, non-finite step counting, hooks and checkpoints -> final save. fp32 master weights
with optional bf16 autocast, gradient accumulation over micro-batches of groups, AdamW with linear
warmup and decay, gradient clipping, checkpoints (weights, optimizer, scheduler, RNG, data
position) and exact resume. Runs unchanged under `accelerate launch` (DDP, FSDP, DeepSpeed): each
process takes its share of every global batch, rank 0 alone logs and writes; under FSDP/DeepSpeed
the sharded model and optimizer are saved and loaded by every rank through accelerate
(docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from negalign.base.errors import UserError
from negalign.base.fingerprint import fingerprint
from negalign.base.io import JsonlAppender, read_jsonl_tolerant, write_jsonl
from negalign.base.progress import Progress
from negalign.base.rundir import RunDir
from negalign.config import Config
from negalign.modeling.loading import save_model
from negalign.modeling.lora import is_lora
from negalign.modeling.precision import PRECISIONS, describe as describe_precision, resolve as resolve_precision
from negalign.objectives.registry import get_objective
from negalign.training import tracking
from negalign.training.checkpoints import (CHECKPOINT_PIN, checkpoint_fingerprint, list_checkpoints, load_checkpoint,
                                           newest_intact, save_checkpoint, save_gathered, sharded_state)
from negalign.training.schedule import lr_factor, step_indices, total_steps
from negalign.training.step import StepResult, StepSettings, TrainData, make_optimizer, train_step


class TrainingStopped(UserError):
    """The run stopped itself (too many non-finite steps): one line, exit code 2."""


@dataclass
class Trainer:
    """The prepared training state that setup hands to the loop and the final save."""
    accelerator: Any
    model: Any                  # prepared: wrapped under DDP / FSDP / DeepSpeed
    optimizer: Any
    scheduler: Any
    params: list                # what gradient clipping sees
    steps: int
    settings: StepSettings
    fingerprint: str            # of the settings a checkpoint must have been made with
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)


def run_train(cfg: Config, model, tokenizer, data: TrainData, *, resume: bool = False, log=print,
              on_step: Callable[[int, Any], None] | None = None) -> Path:
    """Train `model` in place on `data`; save the final model folder and return its path.

    `on_step(step, model)`, if given, runs after each optimizer step (online D2O resampling hooks in here).
    """
    check_train_inputs(cfg, data)
    run = RunDir(cfg.run_dir)
    trainer = setup(cfg, model, len(data.groups))
    log = log if trainer.main else (lambda *_a, **_k: None)  # one copy of every line, from rank 0
    start_step = resume_or_refuse(run, trainer, resume, log)
    metrics_log = open_metrics(run, start_step) if trainer.main else None
    tracking.start(trainer.accelerator, cfg, start_step)
    t = cfg.train
    log(f"train: method={t.method} groups={len(data.groups)} steps={trainer.steps} groups/step={t.groups_per_step} "
        f"micro={t.micro_groups} lr={t.lr} precision={describe_precision(t.precision, trainer.accelerator.device)} "
        f"processes={trainer.accelerator.num_processes}")
    # Steps done before a resume count as done; the ETA comes from this run's steps.
    progress = Progress("train", trainer.steps, done=start_step, unit="steps", log=log)
    log = progress.writer(log)  # on a terminal the step lines print above the bar, not through it
    try:
        for step in range(start_step, trainer.steps):
            row = one_step(cfg, trainer, data, step, log)
            progress.update(1, tokens=row["tokens"], loss=row["loss"])
            if metrics_log is not None:
                metrics_log.write(row)
                tracking.log_step(trainer.accelerator, row)
                if (step + 1) % t.log_every == 0 or step + 1 == trainer.steps:
                    log(format_row(row, trainer.steps))
            if on_step is not None:
                on_step(step + 1, trainer.unwrapped())
            if t.save_every and (step + 1) % t.save_every == 0 and step + 1 < trainer.steps:
                checkpoint(run, trainer, step + 1, t.keep_checkpoints)
    finally:
        progress.close()
        if metrics_log is not None:
            metrics_log.close()
        tracking.finish(trainer.accelerator)
    out = save_final(run, trainer, tokenizer, keep_checkpoints=t.keep_checkpoints_when_done, log=log)
    if trainer.main:
        from negalign.training.model_card import refresh_model_card

        refresh_model_card(cfg, run.root)
    return out


def check_train_inputs(cfg: Config, data: TrainData) -> None:
    t = cfg.train
    if get_objective(t.method).needs_reference and data.reference is None:
        raise UserError(f"method '{t.method}' needs reference log-probs; run `negalign reference` first",
                        field="train.method")
    if t.precision not in PRECISIONS:
        raise UserError(f"expected one of {', '.join(PRECISIONS)}", field="train.precision")
    if t.groups_per_step < 1 or t.micro_groups < 1:
        raise UserError("must be at least 1", field="train.groups_per_step")
    if not data.groups:
        raise UserError("no training groups: the data has no negatives", field="data.source")


def run_fingerprint(cfg: Config, n_groups: int) -> str:
    """The settings a checkpoint pins. Activation checkpointing changes memory, not results, and
    report_to only where the metrics also go: a run may resume with either changed."""
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items()
             if k not in ("activation_checkpointing", "report_to")}
    return fingerprint({"train": train, "model": dataclasses.asdict(cfg.model),
                        "data": dataclasses.asdict(cfg.data), "groups": n_groups})


def setup(cfg: Config, model, n_groups: int) -> Trainer:
    """Accelerator, AdamW and the warmup/decay schedule around `model`, prepared for this launch."""
    from accelerate import Accelerator

    t = cfg.train
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), **tracking.accelerator_kwargs(cfg))
    steps = total_steps(n_groups, cfg)
    warmup = int(round(t.warmup_ratio * steps))
    if t.activation_checkpointing:
        from negalign.modeling.activation_checkpointing import enable_activation_checkpointing

        enable_activation_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, lr=t.lr, weight_decay=t.weight_decay, accelerator=accelerator)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, warmup))
    model.train()
    model, optimizer = accelerator.prepare(model, optimizer)
    if sharded_state(accelerator):
        # FSDP/DeepSpeed clip through the prepared model, which wants its own parameter list.
        params = [p for p in model.parameters() if p.requires_grad]
    return Trainer(accelerator, model, optimizer, scheduler, params, steps, StepSettings.from_config(cfg),
                   run_fingerprint(cfg, n_groups))


def resume_or_refuse(run: RunDir, trainer: Trainer, resume: bool, log) -> int:
    """The step to start from: the last checkpoint's with `resume`; checkpoints without it are refused."""
    ckpts = list_checkpoints(run.root)
    if not resume:
        if ckpts:
            raise UserError("this run directory already has training checkpoints; pass --resume to continue "
                            "or use a new run directory", path=str(run.checkpoints))
        return 0
    if not ckpts:
        log("train: --resume given but no checkpoint found; starting from step 0")
        return 0
    ckpt = intact_checkpoint(run, trainer, ckpts, log)
    if checkpoint_fingerprint(ckpt) != trainer.fingerprint:
        raise CHECKPOINT_PIN.error(path=ckpt)
    state = load_checkpoint(ckpt, trainer.unwrapped(), trainer.optimizer, trainer.scheduler, trainer.accelerator)
    trainer.nonfinite_total = state.get("nonfinite_total", 0)
    log(f"train: resumed from {ckpt.name} (step {state['step']}/{trainer.steps})")
    return state["step"]


def intact_checkpoint(run: RunDir, trainer: Trainer, ckpts: list[Path], log) -> Path:
    """The newest checkpoint that matches its manifest. Rank 0 reads the files once; the other
    processes take its answer, so every rank loads the same checkpoint."""
    from accelerate.utils import broadcast_object_list

    choice = [""]
    if trainer.main:
        found = newest_intact(ckpts, log)
        choice = ["" if found is None else found.name]
    if trainer.accelerator.num_processes > 1:
        broadcast_object_list(choice)
    if not choice[0]:
        raise UserError("no checkpoint here matches its manifest (see the warnings above); delete the folder "
                        "to train from the start", path=str(run.checkpoints))
    return run.checkpoints / choice[0]


def open_metrics(run: RunDir, start_step: int) -> JsonlAppender:
    """train/metrics.jsonl for appending; rows past the checkpoint were logged by the interrupted run
    and are redone now, so they go."""
    rows = [r for r in read_jsonl_tolerant(run.metrics) if r.get("step", 0) <= start_step]
    write_jsonl(run.metrics, rows)
    return JsonlAppender(run.metrics)


def one_step(cfg: Config, trainer: Trainer, data: TrainData, step: int, log) -> dict:
    """Train step `step` (0-based) and the schedule; returns its metrics row (every process)."""
    t0 = time.perf_counter()
    global_idx = step_indices(len(data.groups), cfg.train.groups_per_step, cfg.train.seed, step)
    result = train_step(trainer.model, trainer.optimizer, trainer.params, data, global_idx, trainer.settings,
                        trainer.accelerator)
    trainer.scheduler.step()
    count_nonfinite(trainer, result.finite, step, cfg.train.max_nonfinite_steps, log)
    return metrics_row(trainer, result, step, len(global_idx), t0)


def count_nonfinite(trainer: Trainer, finite: bool, step: int, limit: int, log) -> None:
    """Count a skipped step; `limit` of them in a row stop the run (the last checkpoint stays)."""
    if finite:
        trainer.nonfinite_in_a_row = 0
        return
    trainer.nonfinite_total += 1
    trainer.nonfinite_in_a_row += 1
    log(f"train: step {step + 1}: non-finite loss or gradient, step skipped "
        f"({trainer.nonfinite_in_a_row} in a row, {trainer.nonfinite_total} in all)")
    if trainer.nonfinite_in_a_row >= limit:
        raise TrainingStopped(f"{trainer.nonfinite_in_a_row} non-finite steps in a row (train.max_nonfinite_steps="
                              f"{limit}); lower train.lr or check the data. The last "
                              f"checkpoint is kept", field="train.max_nonfinite_steps")


def metrics_row(trainer: Trainer, result: StepResult, step: int, batch_groups: int, t0: float) -> dict:
    """Means over the global batch (sums over processes / global count), plus the step's bookkeeping."""
    acc = trainer.accelerator
    keys = sorted(result.sums)
    totals = acc.reduce(torch.tensor([result.sums[k] for k in keys] + [float(result.tokens)], device=acc.device,
                                     dtype=torch.float64), reduction="sum").tolist()
    row = {k: v / batch_groups for k, v in zip(keys, totals[:-1])}
    seconds = time.perf_counter() - t0
    row.update(step=step + 1, lr=trainer.scheduler.get_last_lr()[0],
               grad_norm=float(result.grad_norm) if result.finite else None, tokens=int(totals[-1]),
               seconds=round(seconds, 3), tokens_per_s=round(totals[-1] / seconds, 1),
               skipped=not result.finite, precision=resolve_precision(trainer.settings.precision, acc.device))
    return row


def checkpoint(run: RunDir, trainer: Trainer, step: int, keep: int) -> None:
    acc = trainer.accelerator
    acc.wait_for_everyone()
    save_checkpoint(run.root, step, trainer.unwrapped(), trainer.optimizer, trainer.scheduler,
                    {"nonfinite_total": trainer.nonfinite_total, "fingerprint": trainer.fingerprint}, keep, acc)
    acc.wait_for_everyone()


def save_final(run: RunDir, trainer: Trainer, tokenizer, *, keep_checkpoints: bool, log) -> Path:
    """The trained model folder (LoRA merged, shards gathered) and the done marker; rank 0 writes."""
    acc = trainer.accelerator
    acc.wait_for_everyone()
    out = run.model
    # Under FSDP/DeepSpeed the full weights exist only once gathered (a collective, on every rank).
    full_state = acc.get_state_dict(trainer.model) if sharded_state(acc) else None
    if trainer.main:
        unwrapped = trainer.unwrapped()
        if full_state is not None:
            save_gathered(unwrapped, full_state, tokenizer, out)
        else:
            save_model(unwrapped, tokenizer, out)
        run.mark_trained({"steps": trainer.steps, "nonfinite_steps": trainer.nonfinite_total,
                          "lora": is_lora(unwrapped)})
        log(f"train: saved model to {out}")
        if not keep_checkpoints:
            # A finished run never resumes (done.json), and each checkpoint holds weights plus
            # AdamW state: 1.6 GB for a 135M model.
            shutil.rmtree(run.checkpoints, ignore_errors=True)
    acc.wait_for_everyone()
    return out


def format_row(row: dict, steps: int) -> str:
    parts = [f"step {row['step']:>4}/{steps}", f"loss {row['loss']:.4f}"]
    for key, label in (("rewards/margins", "margin"), ("rewards/accuracies", "acc"),
                       ("logratio/negative", "neg_logratio"), ("logratio/anchors", "anchor_logratio")):
        if key in row:
            parts.append(f"{label} {row[key]:+.3f}" if key != "rewards/accuracies" else f"{label} {row[key]:.2f}")
    parts.append(f"{row['tokens_per_s']:.0f} tok/s")
    return "  ".join(parts)
