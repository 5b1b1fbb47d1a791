"""`negalign demo`: D2O end to end on the bundled SmolLM2-135M-Instruct and pyrit's human negatives.

Sized for about 15 minutes on 2 CPU cores: a subset of the training prompts, K = 4 anchors, one
epoch. Ends with a before/after table on held-out data.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from negalign.base.io import write_json, write_text
from negalign.base.rundir import RunDir
from negalign.config import Config, config_from_dict

DEMO_SETTINGS = {
    "model": {"name": "default"},
    "data": {"source": "bundled", "split": "train", "limit": 48, "max_negatives_per_prompt": 2,
             "max_response_tokens": 160},
    "sample": {"k": 4, "max_new_tokens": 80, "temperature": 0.8, "top_p": 0.95},
    "train": {"method": "d2o", "beta": 0.1, "alpha": 0.1, "epochs": 1, "groups_per_step": 8,
              "micro_groups": 4, "lr": 2e-5, "warmup_ratio": 0.1, "precision": "bf16", "save_every": 5},
    "evaluate": {"harmful_prompts": 32, "benign_prompts": 24, "max_new_tokens": 64},
}


def demo_config(run_dir: str) -> Config:
    return config_from_dict({"run_dir": run_dir, **DEMO_SETTINGS})


def run_demo(run_dir: str = "runs/demo", *, fresh: bool = False, log=print) -> dict:
    from negalign.evaluation.before_after import before_after, format_table
    from negalign.recipes import d2o

    if fresh and Path(run_dir).exists():
        shutil.rmtree(run_dir)
    cfg = demo_config(run_dir)
    t0 = time.perf_counter()
    log(f"negalign demo: D2O on SmolLM2-135M-Instruct with pyrit's human-labelled negatives -> {run_dir}")
    d2o.prepare_run_dir(cfg)
    d2o.stage_sample(cfg, log=log)
    d2o.stage_train(cfg, resume=True, log=log)
    log("evaluate: held-out prompts, before (reference) and after (trained)")
    run = RunDir(run_dir)
    table = before_after(cfg, run.model, log=log)
    text = format_table(table)
    write_text(run / "demo_table.md", text + "\n")
    write_json(run / "demo_table.json", table)
    log("")
    log(text)
    log(f"\ndone in {(time.perf_counter() - t0) / 60:.1f} min; everything is in {run_dir}/")
    return table
