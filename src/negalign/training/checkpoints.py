"""Training checkpoints: weights, optimizer, scheduler, RNG and data position, written whole or not at all.

Plain and DDP runs: rank 0 writes the trainable weights and the optimizer (identical on all ranks).
FSDP/DeepSpeed: every rank writes its shards of model and optimizer through accelerate. A checkpoint
is written into a temporary folder and published with negalign.base.durable (files fsynced, a
manifest of sizes and sha256, rename, parent fsynced); resuming takes the newest checkpoint that
still matches its manifest.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from negalign.base.durable import MANIFEST, manifest_problem, open_for_writing, publish_dir
from negalign.base.errors import UserError
from negalign.base.io import disk_error
from negalign.base.rundir import Pin, RunDir

# A checkpoint records the fingerprint of the settings that made it; resuming under others is refused.
CHECKPOINT_PIN = Pin("the checkpoint was made", "resume with the same config or use a new run directory",
                     kind="model, data or train ", with_settings=False)


def sharded_state(accelerator) -> bool:
    """Whether model and optimizer state are split across processes (FSDP, DeepSpeed)."""
    if accelerator is None:
        return False
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Published checkpoints, oldest first (damaged ones included: see `newest_intact`)."""
    root = RunDir(run_dir).checkpoints
    if not root.exists():
        return []
    done = [p for p in root.glob("step-*") if (p / "state.json").exists() or (p / MANIFEST).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, optimizer, scheduler, extra: dict, keep: int,
                    accelerator=None) -> Path:
    """Write step-N/ whole into a temporary folder, then publish it: a kill or a power loss never
    leaves half a checkpoint that passes for a whole one, and a full disk leaves the older ones.

    Called by every process. Plain and DDP runs: rank 0 writes the trainable weights and the optimizer
    (identical on all ranks). FSDP/DeepSpeed (`sharded_state(accelerator)`): every rank writes its
    shards of model and optimizer through `accelerator.save_state` into accelerate/.
    """
    main = accelerator is None or accelerator.is_main_process
    root = RunDir(run_dir).checkpoints
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
    try:
        _write_state(tmp, step, model, optimizer, scheduler, extra, sharded)
        publish_dir(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # give back the space the partial checkpoint took
        err = disk_error(e, final, "the checkpoints before it are kept; free some space and rerun with --resume")
        if err is None:
            raise
        raise err from None
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_state(tmp: Path, step: int, model, optimizer, scheduler, extra: dict, sharded: bool) -> None:
    """The checkpoint's own files, through Python file objects so that a failed write is an OSError."""
    if not sharded:
        with open_for_writing(tmp / "weights.safetensors") as f:
            f.write(safetensors_bytes(_trainable_state(model)))
    with open_for_writing(tmp / "trainer.pt") as f:
        torch.save({"optimizer": None if sharded else optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, f)
    with open_for_writing(tmp / "state.json") as f:
        f.write(json.dumps({"step": step, **extra}).encode("utf-8"))


def newest_intact(ckpts: list[Path], log) -> Path | None:
    """The newest checkpoint that matches its manifest; each newer one that does not is skipped
    with a warning (a power loss or a damaged disk). None if none is left."""
    for path in reversed(ckpts):
        problem = manifest_problem(path)
        if problem is None:
            return path
        log(f"train: warning: skipping checkpoint {path.name}: {problem}")
    return None


def checkpoint_fingerprint(path: Path) -> str | None:
    return json.loads((path / "state.json").read_text()).get("fingerprint")


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


def save_gathered(model, state: dict, tokenizer, out: Path) -> None:
    """Save a gathered FSDP/DeepSpeed state dict as a model folder, published like a checkpoint.

    (LoRA under FSDP/DeepSpeed saves the adapter folder as peft writes it; merge it afterwards.)
    """
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    publish_dir(tmp, out)
