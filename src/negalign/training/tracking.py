"""Experiment tracking (`train.report_to`): the rows of train/metrics.jsonl, and the results of
`negalign evaluate RUN_DIR`, also go to TensorBoard, Weights & Biases (offline) or MLflow (a local
SQLite store), through accelerate's trackers.

Everything lands under RUN_DIR/train/tracking/, written by the main process only; metrics.jsonl stays
the record and a tracker is a view of it. A resumed run logs its redone steps again: TensorBoard hides
the first attempt's steps from the resumed step on (`purge_step`); W&B and MLflow start a new run
that holds the steps from the resumed one on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from negalign.base.rundir import RunDir
from negalign.config import Config, trackers

PROJECT = "negalign"  # TensorBoard's subfolder, W&B's project, MLflow's experiment


def tracking_dir(cfg: Config) -> Path:
    return RunDir(cfg.run_dir).tracking


def accelerator_kwargs(cfg: Config) -> dict:
    """`log_with` and `project_dir` for an Accelerator; nothing when no tracker is asked for."""
    names = trackers(cfg.train.report_to)
    return {"log_with": names, "project_dir": str(tracking_dir(cfg))} if names else {}


def start(accelerator, cfg: Config, start_step: int = 0, *, suffix: str = "", hparams: bool = True) -> None:
    """Open the trackers of `accelerator` (made with accelerator_kwargs) with the run's config as
    hparams; `start_step` > 0 (a resume) hides TensorBoard's events from then on."""
    names = trackers(cfg.train.report_to)
    if not names or not accelerator.is_main_process:
        return
    directory = tracking_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    name = Path(cfg.run_dir).resolve().name + suffix
    kwargs: dict[str, dict] = {}
    if "tensorboard" in names and start_step > 0:
        kwargs["tensorboard"] = {"purge_step": start_step + 1}
    if "wandb" in names:
        os.environ.setdefault("WANDB_MODE", "offline")  # no account, no network unless the user says so
        kwargs["wandb"] = {"dir": str(directory), "name": name}
    if "mlflow" in names:
        kwargs["mlflow"] = {"run_name": name, **_local_mlflow_store(directory)}
    accelerator.init_trackers(PROJECT, config=flat_config(cfg) if hparams else None, init_kwargs=kwargs)


def _local_mlflow_store(directory: Path) -> dict:
    """MLflow writes to RUN_DIR/train/tracking/mlflow.db (artifacts beside it) unless MLFLOW_TRACKING_URI
    says elsewhere. SQLite, not a ./mlruns folder: MLflow 3 refuses its file store ("maintenance mode")."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return {}
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{(directory / 'mlflow.db').resolve()}")
    return {"logging_dir": (directory / "mlartifacts").resolve().as_uri()}  # the experiment's artifact location


def flat_config(cfg: Config) -> dict[str, Any]:
    """The config as dotted keys with scalar values, as hparams take them (lists and None as text)."""
    out: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, (bool, int, float, str)):
                out[prefix + key] = value
            elif isinstance(value, list):
                out[prefix + key] = ",".join(map(str, value))
            else:
                out[prefix + key] = "none" if value is None else str(value)

    walk(cfg.to_dict(), "")
    return out


def numeric(values: dict) -> dict[str, float]:
    """The numbers of a row (not the step, not flags such as `skipped`, not missing values)."""
    return {k: v for k, v in values.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_step(accelerator, row: dict) -> None:
    """One metrics.jsonl row at its step (accelerate logs on the main process only)."""
    if accelerator.trackers:
        accelerator.log(numeric(row), step=row["step"])


def finish(accelerator) -> None:
    """Close the trackers. Not accelerator.end_training(): that also destroys the process group, which
    the final save and any later stage of this process still use."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()


def log_evaluation(cfg: Config, result: dict, step: int | None) -> bool:
    """An evaluation's metric values as `eval/NAME` at the training's last step, to the run's trackers;
    False when the run has none."""
    if not trackers(cfg.train.report_to):
        return False
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), **accelerator_kwargs(cfg))
    start(accelerator, cfg, suffix="-eval", hparams=False)
    values = {f"eval/{name}": m["value"] for name, m in result["metrics"].items()}
    values = {k: v for k, v in numeric(values).items() if math.isfinite(v)}
    try:
        accelerator.log(values, step=step)
    finally:
        finish(accelerator)
    return True
