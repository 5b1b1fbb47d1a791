"""Fault injection: SIGKILL the real CLI at random points of sample, reference, train, critique, rDPO
pair scoring and evaluate's generation, rerun until done.

The killed run must end with exactly what an uninterrupted run produces: the same anchors (same
ids, texts, no duplicates), the same reference tensors, the same per-step losses and final weights,
the same critique rows, the same scored pairs. Kill points are random but always land while the
stage is working: each kill waits until the stage has made some durable progress (lines in
anchors.jsonl, reference shards, metrics rows, critique rows, saved pair scores), then a random few
milliseconds more (kill_helpers.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kill_helpers import flags, lines, negalign, run_with_kills

# about 25 CLI processes: 3 minutes idle, 8 on a loaded 2-core machine
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
    return negalign(stage, *flags(overrides(model_dir, run_dir)), *(["--resume"] if stage == "train" else []))


# ---------------------------------------------------------------- progress probes (durable state only)

def progress(stage: str, run_dir: Path) -> int:
    if stage == "sample":
        return lines(run_dir / "anchors.jsonl")
    if stage == "reference":
        return len(list((run_dir / "reference.partial").glob("*/*/batch-*.safetensors")))
    return lines(run_dir / "train" / "metrics.jsonl")


def run_stage_with_kills(stage: str, model_dir: Path, run_dir: Path, kills: int, total: int, rng: random.Random,
                         log_path: Path) -> list[int]:
    """Start the stage, SIGKILL it `kills` times mid-work, then let a last run finish. Returns kill points."""
    return run_with_kills(cli_args(stage, model_dir, run_dir), lambda: progress(stage, run_dir), kills, total, rng,
                          log_path)


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

    points = run_stage_with_kills("sample", tiny_model_dir, run_dir, KILLS["sample"], N_PROMPTS, rng, tmp_path / "sample.log")
    report["sample"] = points
    rows, expected = _anchor_rows(run_dir), _anchor_rows(uninterrupted)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == N_PROMPTS, "anchors lost or duplicated"
    assert {r["id"]: r["anchors"] for r in rows} == {r["id"]: r["anchors"] for r in expected}

    n_batches = N_PROMPTS  # batch_tokens 64 holds one group per batch
    points = run_stage_with_kills("reference", tiny_model_dir, run_dir, KILLS["reference"], n_batches, rng,
                            tmp_path / "reference.log")
    report["reference"] = points
    got, want = load_file(str(run_dir / "reference.safetensors")), load_file(str(uninterrupted / "reference.safetensors"))
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert not (run_dir / "reference.partial").exists()

    points = run_stage_with_kills("train", tiny_model_dir, run_dir, KILLS["train"], STEPS, rng, tmp_path / "train.log")
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


# ---------------------------------------------------------------- rDPO: critique and pair scoring

N_CRITIQUE = 10
CRITIQUE = {"critique.preset": "roleplay", "critique.limit": str(N_CRITIQUE), "critique.prompts_per_write": "1",
            "critique.max_new_tokens": "8", "critique.critique_max_new_tokens": "4"}
PAIRS = {"rdpo.pairs_per_write": "1", "train.max_steps": "1", "train.groups_per_step": "2",
         "train.precision": "fp32", "train.save_every": "0"}


def rdpo_overrides(model_dir: Path, run_dir: Path, reward_model: Path | None = None) -> dict[str, str]:
    scorer = {"rdpo.scorer": f"reward_model:{reward_model}"} if reward_model else {}
    return {"model.name": str(model_dir), "run_dir": str(run_dir), **CRITIQUE, **scorer}


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tokenizer):
    from tiny_models import tiny_reward_model_dir

    return tiny_reward_model_dir(tmp_path_factory.mktemp("reward_model"), tokenizer)


@pytest.fixture(scope="module")
def uninterrupted_rdpo(tmp_path_factory, tiny_model_dir, reward_model_dir):
    """Critique and pair scoring in this process, never interrupted (no training: not compared here)."""
    from negalign.recipes.rdpo import load_rdpo_config, stage_critique, stage_pairs

    run_dir = tmp_path_factory.mktemp("uninterrupted_rdpo")
    settings = load_rdpo_config(None, {**rdpo_overrides(tiny_model_dir, run_dir, reward_model_dir), **PAIRS})
    quiet = lambda *a, **k: None  # noqa: E731
    stage_pairs(settings, stage_critique(settings, log=quiet), log=quiet)
    return run_dir


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_sigkill_critique_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir, uninterrupted_rdpo):
    rng = random.Random(int(os.environ.get("NEGALIGN_FAULT_SEED", "7")))
    run_dir = tmp_path / "killed"
    argv = negalign("critique", *flags(rdpo_overrides(tiny_model_dir, run_dir)))
    points = run_with_kills(argv, lambda: lines(run_dir / "critique.jsonl"), 3, N_CRITIQUE, rng,
                            tmp_path / "critique.log")
    print(f"\ncritique: kills at progress points {points}")
    assert any(0 < p < N_CRITIQUE for p in points), points  # at least one kill mid-work, not at start-up
    rows, want = _rows(run_dir / "critique.jsonl"), _rows(uninterrupted_rdpo / "critique.jsonl")
    assert len(rows) == len({r["id"] for r in rows}) == N_CRITIQUE, "critique rows lost or repeated"
    assert sum(r["status"] == "ok" for r in want) >= N_CRITIQUE // 2  # the comparison holds real text
    assert sorted(rows, key=lambda r: r["id"]) == sorted(want, key=lambda r: r["id"])


def test_sigkill_pair_scoring_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir, reward_model_dir,
                                                                uninterrupted_rdpo):
    rng = random.Random(int(os.environ.get("NEGALIGN_FAULT_SEED", "7")) + 1)
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    for name in ("critique.jsonl", "critique.jsonl.meta.json"):  # the critique is done; scoring is not
        shutil.copy(uninterrupted_rdpo / name, run_dir / name)
    n_pairs = lines(uninterrupted_rdpo / "pairs.scores.jsonl")
    assert n_pairs >= 5
    argv = negalign("rdpo", *flags({**rdpo_overrides(tiny_model_dir, run_dir, reward_model_dir), **PAIRS}),
                    "--resume")
    points = run_with_kills(argv, lambda: lines(run_dir / "pairs.scores.jsonl"), 3, n_pairs, rng,
                            tmp_path / "pairs.log", max_delay=0.005)
    print(f"\npair scoring: kills at progress points {points} of {n_pairs}")
    assert any(0 < p < n_pairs for p in points), points
    scores = _rows(run_dir / "pairs.scores.jsonl")
    assert len(scores) == len({r["key"] for r in scores}), "a pair scored and saved twice"
    assert sorted(scores, key=lambda r: r["key"]) == sorted(_rows(uninterrupted_rdpo / "pairs.scores.jsonl"),
                                                            key=lambda r: r["key"])
    for name in ("pairs.jsonl", "pairs.dropped.jsonl", "pairs.stats.json"):
        assert (run_dir / name).read_bytes() == (uninterrupted_rdpo / name).read_bytes(), name
    assert (run_dir / "model" / "model.safetensors").exists()  # and the last run went on to train


def _eval_rows(path: Path) -> list[dict]:
    return sorted(_rows(path), key=lambda r: (r["fp"], r["role"], r["set"], r["id"]))


def test_sigkill_evaluate_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir):
    """`negalign evaluate` killed while generating (one reply per durable line) resumes to the same
    replies, none lost or repeated, and the same eval.json metrics as an uninterrupted run."""
    import subprocess

    from negalign.evaluation.scorers.harm_classifier import HarmClassifier

    rows = [{"prompt": f"how do I do bad thing {i}", "response": r, "harm": h}
            for i in range(6) for r, h in (("here is how: step one, step two", 1.0), ("I cannot help with that.", 0.0))]
    clf = HarmClassifier().fit(rows).save(tmp_path / "clf.json")
    args = ["evaluate", str(tiny_model_dir), "--reference", str(tiny_model_dir), "--eval.n_harmful", "6",
            "--eval.n_benign", "2", "--eval.n_overrefusal", "3", "--eval.n_heldout", "2", "--eval.max_new_tokens", "6",
            "--eval.batch_size", "1", "--eval.kl", "false", "--eval.harm_classifier", str(clf),
            "--judge", str(tiny_model_dir), "--eval.judge_batch_size", "1"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run(negalign(*args, "--out", str(tmp_path / "full")), check=True, env=env, capture_output=True)
    total = lines(tmp_path / "full" / "generations.jsonl")
    assert total == 11  # 6 harmful + 3 over-refusal + 2 benign (the reference is the same model)
    killed = tmp_path / "killed"
    rng = random.Random(int(os.environ.get("NEGALIGN_FAULT_SEED", "7")) + 2)
    points = run_with_kills(negalign(*args, "--out", str(killed)), lambda: lines(killed / "generations.jsonl"),
                            3, total, rng, tmp_path / "evaluate.log")
    print(f"\nevaluate: kills at progress points {points} of {total}")
    assert any(0 < p < total for p in points), points
    got, want = _eval_rows(killed / "generations.jsonl"), _eval_rows(tmp_path / "full" / "generations.jsonl")
    assert len(got) == len({(r["fp"], r["role"], r["set"], r["id"]) for r in got}), "a reply generated twice"
    assert got == want
    a, b = (json.loads((d / "eval.json").read_text()) for d in (killed, tmp_path / "full"))
    assert a["metrics"] == b["metrics"] and a["per_category"] == b["per_category"]

    # the judge: replies already there, killed while scoring (one durable line per judged reply)
    judged = tmp_path / "judged"
    judged.mkdir()
    shutil.copy(tmp_path / "full" / "generations.jsonl", judged / "generations.jsonl")
    n_judged = lines(tmp_path / "full" / "judge_scores.jsonl")
    assert n_judged == 6  # the harmful replies; no pairwise win rate against itself
    points = run_with_kills(negalign(*args, "--out", str(judged)), lambda: lines(judged / "judge_scores.jsonl"),
                            3, n_judged, rng, tmp_path / "judge.log", max_delay=0.005)
    print(f"evaluate: judge kills at progress points {points} of {n_judged}")
    assert any(0 < p < n_judged for p in points), points
    got, want = (sorted(_rows(d / "judge_scores.jsonl"), key=lambda r: r["key"]) for d in (judged, tmp_path / "full"))
    assert len(got) == len({r["key"] for r in got}) == n_judged, "a reply judged twice or lost"
    assert got == want
    c = json.loads((judged / "eval.json").read_text())
    assert c["metrics"] == b["metrics"]
