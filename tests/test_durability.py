"""Checkpoints and final models that survive a power loss and a full disk.

In this process: the order of fsyncs and the rename, the manifest catching each kind of damage,
resume skipping a damaged checkpoint, a full disk mid-checkpoint. Through the real CLI (marked
subprocess): the same three situations end to end, each compared with an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from negalign.base.durable import MANIFEST, manifest_problem, publish_dir
from negalign.base.errors import UserError
from negalign.base.rundir import RunDir
from negalign.training.checkpoints import list_checkpoints
from negalign.training.loop import run_train

from tiny_models import npo_train_setup, tiny_llama

QUIET = lambda *a, **k: None  # noqa: E731


def damage(path: Path, how: str = "flip") -> None:
    """What a power loss leaves: a block of zeros where data was (same size), or a cut-short file."""
    data = bytearray(path.read_bytes())
    if how == "flip":
        mid = len(data) // 2
        data[mid:mid + 512] = bytes(512) if any(data[mid:mid + 512]) else b"\x01" * 512
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- publish_dir and the manifest

def _folder(tmp_path: Path) -> Path:
    tmp = tmp_path / ".out.tmp"
    (tmp / "sub").mkdir(parents=True)
    (tmp / "weights.bin").write_bytes(os.urandom(10_000))
    (tmp / "sub" / "state.json").write_text('{"step": 3}')
    return tmp


def test_publish_fsyncs_every_file_before_the_rename_and_the_parent_after(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", str(src)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    tmp = _folder(tmp_path)
    publish_dir(tmp, tmp_path / "out")
    renamed = events.index(("rename", str(tmp)))
    before = {p for kind, p in events[:renamed] if kind == "fsync"}
    after = [p for kind, p in events[renamed + 1:] if kind == "fsync"]
    want = {str(tmp / n) for n in ("weights.bin", "sub/state.json", MANIFEST, "sub")} | {str(tmp)}
    assert want <= before, want - before
    assert after == [str(tmp_path)]  # the parent: the rename itself is on disk
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())["files"]
    assert sorted(manifest) == ["sub/state.json", "weights.bin"] and manifest["weights.bin"]["size"] == 10_000


@pytest.mark.parametrize("how, words", [("flip", "weights.bin does not match its sha256 in the manifest"),
                                        ("cut", "weights.bin has 5000 bytes, the manifest says 10000"),
                                        ("delete", "sub/state.json is missing"),
                                        ("manifest", f"{MANIFEST} is unreadable")])
def test_manifest_tells_a_damaged_folder(tmp_path, how, words):
    out = publish_dir(_folder(tmp_path), tmp_path / "out")
    assert manifest_problem(out) is None
    if how == "delete":
        (out / "sub" / "state.json").unlink()
    elif how == "manifest":
        (out / MANIFEST).write_bytes(bytes(100))
    else:
        damage(out / "weights.bin", how)
    assert manifest_problem(out) == words


def test_a_folder_without_manifest_passes(tmp_path):
    """Checkpoints and models written before manifests existed keep resuming and loading."""
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "weights.bin").write_bytes(b"x")
    assert manifest_problem(tmp_path / "old") is None


# ---------------------------------------------------------------- training in this process

def _train(run_dir, tokenizer, *, resume=False, on_step=None, log=QUIET, **train):
    cfg, data = npo_train_setup(run_dir, tokenizer, **{"max_steps": 4, "save_every": 1, "keep_checkpoints": 3,
                                                       **train})
    return run_train(cfg, tiny_llama(tokenizer, seed=0), tokenizer, data, resume=resume, log=log, on_step=on_step)


class _Stop(Exception):
    pass


def _stop_at(n):
    def hook(step, _model):
        if step == n:
            raise _Stop
    return hook


@pytest.mark.e2e
def test_resume_skips_a_damaged_checkpoint_and_ends_as_uninterrupted(tmp_path, tokenizer):
    want = load_file(str(_train(tmp_path / "straight", tokenizer) / "model.safetensors"))
    run = tmp_path / "run"
    with pytest.raises(_Stop):
        _train(run, tokenizer, on_step=_stop_at(4))
    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts] == ["step-0000001", "step-0000002", "step-0000003"]
    assert all(manifest_problem(p) is None for p in ckpts)
    damage(ckpts[-1] / "weights.safetensors")
    logs: list[str] = []
    got = load_file(str(_train(run, tokenizer, resume=True, log=logs.append) / "model.safetensors"))
    assert "train: warning: skipping checkpoint step-0000003: weights.safetensors does not match its sha256 " \
           "in the manifest" in logs
    assert "train: resumed from step-0000002 (step 2/4)" in logs
    assert max(float((got[k] - want[k]).abs().max()) for k in want) <= 1e-6
    steps = [json.loads(x)["step"] for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_every_checkpoint_damaged_is_refused(tmp_path, tokenizer):
    with pytest.raises(_Stop):
        _train(tmp_path, tokenizer, on_step=_stop_at(3), max_steps=3)
    for p in list_checkpoints(tmp_path):
        damage(p / "trainer.pt", "cut")
    with pytest.raises(UserError, match=r"checkpoints: no checkpoint here matches its manifest"):
        _train(tmp_path, tokenizer, resume=True, max_steps=3)


def _full_disk_at(monkeypatch, pattern: str):
    """Writes through negalign.base.durable under a path containing `pattern` fail with ENOSPC."""
    import builtins

    import negalign.base.durable as durable
    from full_disk_cli import FillingFile

    def filling_open(path, mode="r", *a, **k):
        f = builtins.open(path, mode, *a, **k)
        return FillingFile(f, 4096) if pattern in str(path) and "w" in mode else f

    monkeypatch.setattr(durable, "open", filling_open, raising=False)


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, tokenizer, monkeypatch):
    _full_disk_at(monkeypatch, ".step-0000002.tmp/trainer.pt")  # torch.save's own writer fails there
    with pytest.raises(UserError) as info:
        _train(tmp_path, tokenizer)
    ckpt_dir = tmp_path / "train" / "checkpoints"
    assert str(info.value) == (f"{ckpt_dir / 'step-0000002'}: disk full while writing: No space left on device; "
                               "the checkpoints before it are kept; free some space and rerun with --resume")
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-0000001"]  # no partial folder left
    assert manifest_problem(ckpt_dir / "step-0000001") is None
    monkeypatch.undo()
    logs: list[str] = []
    _train(tmp_path, tokenizer, resume=True, log=logs.append)
    assert "train: resumed from step-0000001 (step 1/4)" in logs


@pytest.mark.e2e
def test_a_damaged_final_model_is_trained_again(tmp_path, tokenizer):
    out = _train(tmp_path, tokenizer, max_steps=2)
    sha = json.loads((out / MANIFEST).read_text())["files"]["model.safetensors"]["sha256"]
    run = RunDir(tmp_path)
    assert run.trained(QUIET)
    damage(out / "model.safetensors")
    logs: list[str] = []
    assert not run.trained(logs.append)
    assert logs == ["train: warning: the saved model is damaged (model.safetensors does not match its sha256 in "
                    "the manifest); training it again"]
    assert not run.checkpoints.exists()  # deleted when done: the model is trained from the start
    _train(tmp_path, tokenizer, max_steps=2)
    assert run.trained(QUIET)
    assert json.loads((out / MANIFEST).read_text())["files"]["model.safetensors"]["sha256"] == sha


# ---------------------------------------------------------------- through the real CLI

CLI_SETTINGS = {
    "data.limit": "4", "data.max_negatives_per_prompt": "1", "train.method": "npo", "train.max_steps": "4",
    "train.save_every": "1", "train.keep_checkpoints": "3", "train.groups_per_step": "1", "train.lr": "1e-3",
    "train.precision": "fp32", "reference.precision": "fp32",
}
HERE = Path(__file__).parent


def _overrides(model_dir: Path, run_dir: Path) -> dict[str, str]:
    return {"model.name": str(model_dir), "run_dir": str(run_dir), **CLI_SETTINGS}


def _train_args(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    args = ["train"]
    for key, value in _overrides(model_dir, run_dir).items():
        args += ["--run-dir" if key == "run_dir" else f"--{key}", value]
    return args + list(extra)


def _cli(args: list[str], *, full_disk: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    prefix = [str(HERE / "full_disk_cli.py"), full_disk[0], str(full_disk[1])] if full_disk else ["-m", "negalign"]
    return subprocess.run([sys.executable, *prefix, *args], env=env, capture_output=True, text=True, timeout=300)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def _assert_same_weights(run_dir: Path, uninterrupted: Path) -> None:
    got, want = _weights(run_dir), _weights(uninterrupted)
    assert got.keys() == want.keys()
    assert max(float((got[k] - want[k]).abs().max()) for k in want) <= 1e-6


@pytest.fixture(scope="module")
def cli_uninterrupted(tmp_path_factory, tiny_model_dir):
    """The same training, never interrupted, in this process."""
    from negalign.config import load_config
    from negalign.recipes import d2o

    run_dir = tmp_path_factory.mktemp("cli_uninterrupted")
    d2o.stage_train(load_config(None, _overrides(tiny_model_dir, run_dir)), log=QUIET)
    return run_dir


@pytest.fixture(scope="module")
def stopped_by_full_disk(tmp_path_factory, tiny_model_dir):
    """`negalign train` whose disk fills while it writes the optimizer state of the step-3 checkpoint."""
    run_dir = tmp_path_factory.mktemp("full_disk") / "run"
    proc = _cli(_train_args(tiny_model_dir, run_dir), full_disk=(".step-0000003.tmp/trainer.pt", 4096))
    return run_dir, proc


@pytest.mark.subprocess
def test_cli_full_disk_mid_checkpoint_stops_with_one_line_then_resumes(stopped_by_full_disk, tmp_path,
                                                                       tiny_model_dir, cli_uninterrupted):
    stopped, proc = stopped_by_full_disk
    ckpt_dir = stopped / "train" / "checkpoints"
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip("\n").split("\n") == [
        f"negalign: error: {ckpt_dir / 'step-0000003'}: disk full while writing: No space left on device; "
        "the checkpoints before it are kept; free some space and rerun with --resume"]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-0000001", "step-0000002"]
    assert manifest_problem(ckpt_dir / "step-0000002") is None
    run_dir = tmp_path / "run"
    shutil.copytree(stopped, run_dir)
    proc = _cli(_train_args(tiny_model_dir, run_dir, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train: resumed from step-0000002 (step 2/4)" in proc.stdout
    _assert_same_weights(run_dir, cli_uninterrupted)


@pytest.mark.subprocess
def test_cli_resume_skips_a_checkpoint_that_fails_its_manifest(stopped_by_full_disk, tmp_path, tiny_model_dir,
                                                               cli_uninterrupted):
    run_dir = tmp_path / "run"
    shutil.copytree(stopped_by_full_disk[0], run_dir)
    damage(run_dir / "train" / "checkpoints" / "step-0000002" / "weights.safetensors")  # as a power loss may
    proc = _cli(_train_args(tiny_model_dir, run_dir, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("train: warning: skipping checkpoint step-0000002: weights.safetensors does not match its sha256 "
            "in the manifest") in proc.stdout.splitlines()
    assert "train: resumed from step-0000001 (step 1/4)" in proc.stdout
    _assert_same_weights(run_dir, cli_uninterrupted)


@pytest.mark.subprocess
def test_cli_a_damaged_final_model_is_trained_again(tmp_path, tiny_model_dir, cli_uninterrupted):
    run_dir = tmp_path / "run"
    shutil.copytree(cli_uninterrupted, run_dir)
    damage(run_dir / "model" / "model.safetensors", "cut")
    proc = _cli(_train_args(tiny_model_dir, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].startswith(
        "train: warning: the saved model is damaged (model.safetensors has ")
    assert manifest_problem(run_dir / "model") is None
    _assert_same_weights(run_dir, cli_uninterrupted)
