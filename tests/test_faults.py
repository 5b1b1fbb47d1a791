"""Fault injection: SIGKILL the real CLI at random points of sample, reference and train, rerun until done.

The killed run must end with exactly what an uninterrupted run produces: the same anchors (same
ids, texts, no duplicates), the same reference tensors, the same per-step losses and final weights.
Kill points are random but always land while the stage is working: each kill waits until the
stage has made some durable progress (lines in anchors.jsonl, reference shards, metrics rows),
then a random few milliseconds more.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# 15 CLI processes: about 2 minutes idle, 6 on a loaded 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

N_PROMPTS = 8
STEPS = 6
KILLS = {"sample": 4, "reference": 3, "train": 4}
SETTINGS = {  # small chunks so there is durable progress to lose between writes
    "data.limit": "8", "data.max_negatives_per_prompt": "1",
    "sample.k": "2", "sample.max_new_tokens": "8", "sample.prompts_per_write": "1",
    "sample.backend": "transformers",
    "reference.batch_tokens": "64",
    "train.groups_per_step": "2", "train.micro_groups": "1", "train.epochs": "2",
    "train.max_steps": str(STEPS), "train.save_every": "1", "train.keep_checkpoints": "2", "train.lr": "1e-3",
}


def overrides(model_dir: Path, run_dir: Path) -> dict[str, str]:
    return {"model.name": str(model_dir), "run_dir": str(run_dir), **SETTINGS}


def cli_args(stage: str, model_dir: Path, run_dir: Path) -> list[str]:
    args = [sys.executable, "-m", "negalign", stage]
    for key, value in overrides(model_dir, run_dir).items():
        args += ["--run-dir" if key == "run_dir" else f"--{key}", value]
    return args + (["--resume"] if stage == "train" else [])


# ---------------------------------------------------------------- progress probes (durable state only)

def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def progress(stage: str, run_dir: Path) -> int:
    if stage == "sample":
        return _lines(run_dir / "anchors.jsonl")
    if stage == "reference":
        return len(list((run_dir / "reference.partial").glob("*/*/batch-*.safetensors")))
    return _lines(run_dir / "train" / "metrics.jsonl")


def run_with_kills(stage: str, model_dir: Path, run_dir: Path, kills: int, total: int, rng: random.Random,
                   log_path: Path) -> list[int]:
    """Start the stage, SIGKILL it `kills` times mid-work, then let a last run finish. Returns kill points."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    points: list[int] = []
    for _ in range(kills + 5):
        with open(log_path, "a") as log:
            proc = subprocess.Popen(cli_args(stage, model_dir, run_dir), stdout=log, stderr=log, env=env)
        if len(points) < kills:
            start = progress(stage, run_dir)
            # Usually one unit of new durable progress, sometimes two; with none left to wait for
            # (the last unit), the kill lands at a random moment of the start-up instead: within
            # 1.5 s, while python is still importing torch and transformers (several seconds here,
            # over 2 s on any machine measured), so the process cannot finish before it.
            target = start + 1 + (rng.random() < 0.3)
            fallback = time.monotonic() + rng.uniform(0.3, 1.5) if target > total - 1 else None
            deadline = time.monotonic() + 240
            while proc.poll() is None and time.monotonic() < deadline:
                if fallback is None and progress(stage, run_dir) >= target:
                    break
                if fallback is not None and time.monotonic() > fallback:
                    break
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.03))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                points.append(progress(stage, run_dir))
                continue
        rc = proc.wait(timeout=300)
        assert rc == 0, log_path.read_text()[-3000:]
        assert len(points) == kills, f"{stage}: finished after {len(points)} of its {kills} kills; see {log_path}"
        return points
    raise AssertionError(f"{stage}: did not finish; see {log_path}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    """The same three stages in this process, never interrupted."""
    from negalign.config import load_config
    from negalign.recipes import d2o

    run_dir = tmp_path_factory.mktemp("uninterrupted")
    cfg = load_config(None, overrides(tiny_model_dir, run_dir))
    quiet = lambda *a, **k: None  # noqa: E731
    d2o.stage_sample(cfg, log=quiet)
    d2o.stage_reference(cfg, log=quiet)
    d2o.stage_train(cfg, log=quiet)
    return run_dir


def _anchor_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "anchors.jsonl").read_text(encoding="utf-8").splitlines()]


def test_sigkill_everywhere_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir, uninterrupted):
    rng = random.Random(int(os.environ.get("NEGALIGN_FAULT_SEED", "7")))
    run_dir = tmp_path / "killed"
    report = {}
    t0 = time.perf_counter()

    points = run_with_kills("sample", tiny_model_dir, run_dir, KILLS["sample"], N_PROMPTS, rng, tmp_path / "sample.log")
    report["sample"] = points
    rows, expected = _anchor_rows(run_dir), _anchor_rows(uninterrupted)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == N_PROMPTS, "anchors lost or duplicated"
    assert {r["id"]: r["anchors"] for r in rows} == {r["id"]: r["anchors"] for r in expected}

    n_batches = N_PROMPTS  # batch_tokens 64 holds one group per batch
    points = run_with_kills("reference", tiny_model_dir, run_dir, KILLS["reference"], n_batches, rng,
                            tmp_path / "reference.log")
    report["reference"] = points
    got, want = load_file(str(run_dir / "reference.safetensors")), load_file(str(uninterrupted / "reference.safetensors"))
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert not (run_dir / "reference.partial").exists()

    points = run_with_kills("train", tiny_model_dir, run_dir, KILLS["train"], STEPS, rng, tmp_path / "train.log")
    report["train"] = points
    metrics = [json.loads(x) for x in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    base = [json.loads(x) for x in (uninterrupted / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1)), "steps lost or repeated in the log"
    for m, b in zip(metrics, base):
        assert m["loss"] == pytest.approx(b["loss"], abs=1e-6), (m["step"], m["loss"], b["loss"])
        assert m["lr"] == pytest.approx(b["lr"], rel=1e-9)
    got, want = load_file(str(run_dir / "model" / "model.safetensors")), load_file(str(uninterrupted / "model" / "model.safetensors"))
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    moved = max(float((want[k] - start[k]).abs().max()) for k in want)
    assert moved > 1e-4, "training did not change the weights: the comparison would be empty"
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert worst <= 1e-6, f"resumed weights differ from the uninterrupted run by {worst}"

    kills = sum(len(p) for p in report.values())
    print(f"\nfault injection: {kills} kills at progress points {report}; {time.perf_counter() - t0:.1f} s")
    assert kills == sum(KILLS.values()) == 11  # the README's figure
