"""Reliability: truncation is counted, non-finite steps are skipped and bounded, loading is safe,
API keys stay out of run directories, and unwritable or full run directories fail early."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from negalign.base.errors import UserError
from negalign.base.io import atomic_path, check_writable_dir, JsonlAppender, write_text
from negalign.config import load_config
from negalign.data.chat import encode_prompt, encode_response
from negalign.data.records import Example, normalize_prompt
from negalign.recipes import d2o
from negalign.training.examples import run_examples
from negalign.training.groups import training_groups
from negalign.training.models import load_plain

from tiny_models import npo_train_setup

FAKE_KEY = "sk-negalign-test-4f9c2e1b7a6d5c3e8f0a"


# ---------------------------------------------------------------- truncation policy

def test_truncation_keeps_prompt_tail_and_response_head_and_logs_counts(tokenizer, tmp_path):
    long_prompt = "Background. " * 80 + "Now the actual question: what is two plus two?"
    long_response = "Word " * 300
    examples = [Example(id="long", prompt=normalize_prompt(long_prompt), negatives=[long_response, "short"]),
                Example(id="short", prompt=normalize_prompt("hi"), negatives=["fine"])]
    cfg = load_config(None, {"run_dir": str(tmp_path), "train.method": "npo", "data.max_prompt_tokens": "32",
                             "data.max_response_tokens": "16"})
    logged: list[str] = []
    groups, _, _, stats = training_groups(cfg, tokenizer, examples, {}, log=logged.append)

    full_prompt = encode_prompt(tokenizer, examples[0].prompt)
    full_response, _ = encode_response(tokenizer, long_response)
    assert len(full_prompt) > 32 and len(full_response) > 16
    # prompts keep their last tokens (the question and the assistant header), responses their first
    assert groups[0].prompt_ids == full_prompt[-32:]
    assert groups[0].response_ids[-1] == full_response[:16]
    assert groups[1].response_ids[-1] == encode_response(tokenizer, "short")[0]  # untouched
    assert (stats.prompts, stats.total_prompts, stats.responses, stats.total_responses) == (1, 2, 1, 3)
    assert logged == ["data: truncated 1/2 prompts and 1/3 responses to the configured maximum lengths"]
    assert len(groups) == 3  # nothing dropped


# ---------------------------------------------------------------- non-finite loss or gradient

def _train_setup(tmp_path, tokenizer, tiny_model, **train):
    return npo_train_setup(tmp_path, tokenizer, **{"save_every": 0, **train})


def _poisoned_objective(monkeypatch, bad_steps: set[int], kind: str):
    """Make compute_objective's loss (or only its gradient) non-finite on the given 1-based steps."""
    from negalign.training import step as train_mod

    real = train_mod.compute_objective
    calls = {"n": 0}

    def poisoned(method, lp, hp):
        losses, metrics = real(method, lp, hp)
        calls["n"] += 1  # one call per step: micro_groups == groups_per_step
        if calls["n"] in bad_steps:
            if kind == "loss":
                losses = losses + float("nan")
            else:  # finite value, NaN gradient: d/du sqrt(u) at u = 0 is inf, times 0
                u = lp.policy_negative - lp.policy_negative.detach()
                losses = losses + 0.0 * torch.sqrt(u)
        return losses, metrics

    monkeypatch.setattr(train_mod, "compute_objective", poisoned)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_nonfinite_step_is_skipped_and_counted(tmp_path, tokenizer, tiny_model, monkeypatch, kind):
    from negalign.training.loop import run_train

    cfg, data = _train_setup(tmp_path, tokenizer, tiny_model, max_steps=4, max_nonfinite_steps=3)
    _poisoned_objective(monkeypatch, {2, 3}, kind)
    snapshots = []
    probe = "model.embed_tokens.weight"
    run_train(cfg, tiny_model, tokenizer, data, log=lambda *_: None,
              on_step=lambda step, m: snapshots.append(dict(m.named_parameters())[probe].detach().clone()))
    rows = [json.loads(x) for x in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [False, True, True, False]
    assert rows[1]["grad_norm"] is None and rows[0]["grad_norm"] is not None
    # skipped steps leave the weights alone; the others move them
    assert torch.equal(snapshots[0], snapshots[1]) and torch.equal(snapshots[1], snapshots[2])
    assert not torch.equal(snapshots[2], snapshots[3])
    assert all(torch.isfinite(s).all() for s in snapshots)
    done = json.loads((tmp_path / "train" / "done.json").read_text())
    assert done["nonfinite_steps"] == 2


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(tmp_path, tokenizer, tiny_model, monkeypatch):
    from negalign.training.loop import TrainingStopped, run_train

    cfg, data = _train_setup(tmp_path, tokenizer, tiny_model, max_steps=10, max_nonfinite_steps=3)
    _poisoned_objective(monkeypatch, {2, 3, 4, 5, 6}, "loss")
    with pytest.raises(TrainingStopped) as info:
        run_train(cfg, tiny_model, tokenizer, data, log=lambda *_: None)
    assert isinstance(info.value, UserError)
    text = info.value.format()
    assert "\n" not in text
    assert "field 'train.max_nonfinite_steps'" in text and "3 non-finite steps in a row" in text
    rows = [json.loads(x) for x in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [False, True, True]  # stopped at the 3rd in a row (step 4)
    assert not (tmp_path / "model").exists()


# ---------------------------------------------------------------- safe loading

class _Tripwire:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _model_folder_with_pickle(src: Path, dst: Path, keep_safetensors: bool) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors" or keep_safetensors:
            (dst / f.name).write_bytes(f.read_bytes())
    with open(dst / "pytorch_model.bin", "wb") as f:
        pickle.dump(_Tripwire(str(dst / "PICKLE_WAS_LOADED")), f)
    return dst


def test_pickle_only_model_is_refused_and_never_unpickled(tiny_model_dir, tmp_path):
    from negalign.modeling.loading import load_model

    folder = _model_folder_with_pickle(tiny_model_dir, tmp_path / "m", keep_safetensors=False)
    with pytest.raises(UserError, match="no .safetensors weights .*pickle checkpoints are refused"):
        load_model(str(folder))
    assert not (folder / "PICKLE_WAS_LOADED").exists()


def test_safetensors_win_over_a_pickle_beside_them(tiny_model_dir, tmp_path):
    from negalign.modeling.loading import load_model

    folder = _model_folder_with_pickle(tiny_model_dir, tmp_path / "m", keep_safetensors=True)
    model, _ = load_model(str(folder))
    assert not (folder / "PICKLE_WAS_LOADED").exists()
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("asked", [None, True])
def test_trust_remote_code_is_off_unless_asked(tiny_model_dir, tmp_path, monkeypatch, asked):
    import transformers

    seen = []
    real_model, real_tok = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained

    def spy(real):
        def call(*args, **kwargs):
            seen.append((kwargs.get("trust_remote_code"), kwargs.get("use_safetensors", "n/a")))
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy(real_model))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy(real_tok))
    overrides = {"run_dir": str(tmp_path), "model.name": str(tiny_model_dir)}
    if asked is not None:
        overrides["model.trust_remote_code"] = str(asked)
    load_plain(load_config(None, overrides))
    want = bool(asked)
    assert seen and all(trust is want for trust, _ in seen)
    assert seen[0][1] is True  # the model: safetensors only



@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_a_sampler_or_teacher_loads_in_its_precision(tiny_model_dir, tmp_path, precision, dtype):
    model, _ = load_plain(load_config(None, {"run_dir": str(tmp_path), "model.name": str(tiny_model_dir)}),
                          precision=precision)
    assert {p.dtype for p in model.parameters()} == {dtype}

# ---------------------------------------------------------------- API keys stay out of run dirs

def _files_containing(root: Path, needle: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(str(path))
    return hits


@pytest.fixture
def key_server(tiny_model, tokenizer, monkeypatch):
    from negalign.generation.server import serve
    from negalign.generation.transformers_backend import TransformersGenerator

    monkeypatch.setenv("NEGALIGN_TEST_API_KEY", FAKE_KEY)
    server = serve(TransformersGenerator(tiny_model, tokenizer), port=0, api_key=FAKE_KEY)
    yield server
    server.close()


def _openai_cfg(tmp_path, url):
    return load_config(None, {"run_dir": str(tmp_path / "run"), "data.limit": "2", "sample.k": "2",
                              "sample.max_new_tokens": "4", "sample.backend": "openai", "sample.base_url": url,
                              "sample.api_key_env": "NEGALIGN_TEST_API_KEY", "model.name": "negalign"})


def test_openai_key_stays_out_of_run_dir_and_logs(tmp_path, key_server, caplog):
    from negalign.generation.openai_backend import OpenAIChatGenerator
    from negalign.training.anchors import read_anchors, run_sample

    caplog.set_level("DEBUG")
    cfg = _openai_cfg(tmp_path, key_server.url)
    run_dir = d2o.prepare_run_dir(cfg)
    examples = run_examples(cfg)
    logged: list[str] = []
    generator = OpenAIChatGenerator(key_server.url, "negalign", api_key_env=cfg.sample.api_key_env, max_retries=0)
    run_sample(cfg, examples, generator, log=logged.append)
    assert len(read_anchors(run_dir)) == 2  # the server accepted the key
    assert (run_dir / "config.yaml").exists()
    assert _files_containing(run_dir, FAKE_KEY) == []
    assert FAKE_KEY not in "\n".join(logged) + caplog.text + repr(generator)


def test_openai_wrong_key_error_does_not_echo_the_key(tmp_path, key_server, monkeypatch):
    from negalign.generation.base import GenerationConfig
    from negalign.generation.openai_backend import OpenAIChatGenerator

    wrong = "sk-wrong-" + FAKE_KEY[::-1]
    monkeypatch.setenv("NEGALIGN_TEST_API_KEY", wrong)
    generator = OpenAIChatGenerator(key_server.url, "negalign", api_key_env="NEGALIGN_TEST_API_KEY", max_retries=0)
    with pytest.raises(UserError) as info:
        generator.generate([normalize_prompt("hi")], GenerationConfig(n=1, max_new_tokens=2))
    assert wrong not in str(info.value) and FAKE_KEY not in str(info.value)


@pytest.mark.subprocess
def test_cli_sample_with_openai_backend_keeps_key_out(tmp_path, key_server):
    run_dir = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", NEGALIGN_TEST_API_KEY=FAKE_KEY)
    args = [sys.executable, "-m", "negalign", "sample", "--run-dir", str(run_dir), "--model", "negalign",
            "--data.limit", "2", "--sample.k", "2", "--sample.max_new_tokens", "4", "--sample.backend", "openai",
            "--sample.base_url", key_server.url, "--sample.api_key_env", "NEGALIGN_TEST_API_KEY"]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert FAKE_KEY not in proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "anchors.jsonl").exists()
    assert _files_containing(run_dir, FAKE_KEY) == []


# ---------------------------------------------------------------- unwritable or full run directories
# Tests run as root, where chmod 0555 does not stop writes; so: a real path that cannot be a
# directory, and simulated EROFS / ENOSPC / low free space at the system calls io.py makes.

def test_run_dir_under_a_file_fails_before_anything_loads(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    cfg = load_config(None, {"run_dir": str(blocker / "run"), "model.name": str(tmp_path / "MODEL-NOT-TO-BE-LOADED")})
    with pytest.raises(UserError, match=r"not_a_dir/run: cannot create run directory: Not a directory"):
        d2o.stage_sample(cfg, log=lambda *_: None)


@pytest.mark.subprocess
def test_cli_run_dir_under_a_file_one_line(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "negalign", "train", "--run-dir", str(blocker / "run"),
                           "--model", "./MODEL-NOT-TO-BE-LOADED"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"negalign: error: {blocker / 'run'}: cannot create run directory: Not a directory"]


def _fail_open_with(monkeypatch, code: int, target: str):
    import builtins

    import negalign.base.io as io_mod

    real = builtins.open

    def fake(file, mode="r", *args, **kwargs):
        if target in str(file) and any(c in mode for c in "wa+"):
            raise OSError(code, os.strerror(code), str(file))
        return real(file, mode, *args, **kwargs)

    monkeypatch.setattr(io_mod, "open", fake, raising=False)


@pytest.mark.parametrize("code, words", [(errno.EROFS, "Read-only file system"),
                                         (errno.EACCES, "Permission denied"),
                                         (errno.ENOSPC, "No space left on device")])
def test_unwritable_run_dir_fails_early(tmp_path, monkeypatch, code, words):
    _fail_open_with(monkeypatch, code, ".negalign-write-probe")
    with pytest.raises(UserError) as info:
        check_writable_dir(tmp_path / "run")
    assert str(info.value) == f"{tmp_path / 'run'}: run directory is not writable: {words}"
    assert list((tmp_path / "run").iterdir()) == []  # no probe left behind


def test_low_free_space_fails_early_through_the_pipeline(tmp_path, monkeypatch):
    real = os.statvfs

    def nearly_full(path):
        st = real(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 5, 5, st.f_files, st.f_ffree,
                                  st.f_favail, st.f_flag, st.f_namemax))

    monkeypatch.setattr(os, "statvfs", nearly_full)
    cfg = load_config(None, {"run_dir": str(tmp_path / "run"), "model.name": str(tmp_path / "MODEL-NOT-TO-BE-LOADED")})
    with pytest.raises(UserError, match=r"run: only 0 MiB free on the run directory's disk \(need at least 50 MiB\)"):
        d2o.stage_train(cfg, log=lambda *_: None)


def test_disk_full_mid_run_is_a_one_line_error_and_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    write_text(target, "old")

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError) as info:
        write_text(target, "new")
    monkeypatch.undo()
    assert str(info.value) == (f"{target}: disk full while writing: No space left on device; "
                               "fix that and rerun the same command to resume")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_disk_full_in_an_appender_is_a_one_line_error(tmp_path, monkeypatch):
    out = JsonlAppender(tmp_path / "log.jsonl")
    out.write({"a": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match=r"log.jsonl: disk full while writing: No space left on device"):
        out.write({"a": 2})
    monkeypatch.undo()
    out.close()


def test_atomic_path_keeps_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "x.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]
