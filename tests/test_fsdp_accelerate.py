"""negalign's own accelerate-FSDP path (configs/accelerate/fsdp.yaml, FSDP2) on 2 CPU processes (gloo).

`accelerate launch --config_file configs/accelerate/fsdp.yaml` goes through torchrun and sets every
FSDP_* variable from the config; each process's Accelerator builds its FullyShardedDataParallelPlugin
from them. Only one thing differs from a GPU launch: accelerate 1.15 turns FSDP on only for an
accelerator backend (MULTI_GPU, MULTI_XPU, ...; state.py, AcceleratorState.__init__), so a CPU
process stays MULTI_CPU (DDP). The launched entry point (FSDP_ON_CPU below) applies that same branch
to MULTI_CPU -- distributed_type FSDP, the env-built plugin -- and then runs the real `negalign train`
CLI. Everything after it is accelerate's and negalign's code: fully_shard of each decoder layer and
the root, sharded save_state/load_state checkpoints, the gathered final model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from negalign.base import distributed
from negalign.base.errors import UserError
from negalign.config import load_config
from negalign.modeling.loading import load_model
from negalign.recipes import d2o
from negalign.training.anchors import run_sample
from negalign.training.reference import run_reference
from launch_helpers import free_port, launch_env, toy_examples, write_run_config

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# The test-only entry point: accelerate's own FSDP branch, extended from GPU backends to MULTI_CPU.
FSDP_ON_CPU = '''
import sys
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


AcceleratorState.__init__ = _init_fsdp_on_cpu

from negalign.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture
def run_config(tmp_path, tiny_model_dir):
    # 7 groups, 3 per step, 2 epochs: 6 steps, checkpoints after steps 2 and 4 (kept when done).
    # The last batch of each epoch has 1 group: rank 1 runs it with weight 0.
    return write_run_config(tmp_path, tiny_model_dir, sample={"prompts_per_write": 4},
                            reference={"batch_tokens": 256},
                            train={"keep_checkpoints": 3, "keep_checkpoints_when_done": True})


def _launch_fsdp(tmp_path: Path, run_config: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    entry = tmp_path / "fsdp_on_cpu.py"
    entry.write_text(FSDP_ON_CPU)
    cmd = [str(VENV_BIN / "accelerate"), "launch", "--config_file", str(ROOT / "configs/accelerate/fsdp.yaml"),
           "--num_processes", "2", "--main_process_port", str(free_port()),
           str(entry), "train", "-c", str(run_config), "--run-dir", str(run_dir), *extra]
    return subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)


def _copy_inputs(src: Path, dst: Path) -> None:
    """The run folder up to training (anchors, reference scores, data snapshot), without train/ and model/."""
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if Path(d) == src and n in ("train", "model")])


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model/model.safetensors"))


@pytest.mark.multiprocess
def test_accelerate_fsdp_train_checkpoint_resume_and_gathered_model(run_config, tmp_path):
    single = tmp_path / "single"
    cfg = load_config(run_config, {"run_dir": str(single)})
    d2o.stage_all(cfg, log=lambda *_: None)

    # Uninterrupted FSDP run: 6 steps, sharded checkpoints after steps 2 and 4.
    full = tmp_path / "fsdp_full"
    _copy_inputs(single, full)
    proc = _launch_fsdp(tmp_path, run_config, full)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "processes=2" in proc.stdout
    for line in ("reference: cached log-probs match", "train: saved model"):
        assert proc.stdout.count(line) == 1, proc.stdout  # rank 0 alone prints
    for step in (2, 4):
        ckpt = full / f"train/checkpoints/step-{step:07d}"
        assert not (ckpt / "weights.safetensors").exists()  # no full copy: each rank its shard
        for part in ("pytorch_model_fsdp_0", "optimizer_0"):
            assert sorted(p.name for p in (ckpt / "accelerate" / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]

    # The gathered final model loads, and equals the single-process model (same global batches).
    model, _ = load_model(str(full / "model"))
    w1, w2 = _weights(single), _weights(full)
    assert set(w1) <= set(w2)  # the gathered state dict also names the tied lm_head
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.state_dict()[name], w1[name], rtol=1e-5, atol=1e-6)
    base = load_file(str(Path(cfg.model.name) / "model.safetensors"))
    assert any(not torch.allclose(w1[n], base[n]) for n in w1)  # training moved the weights
    rows_1 = [json.loads(x) for x in (single / "train/metrics.jsonl").read_text().splitlines()]
    rows_2 = [json.loads(x) for x in (full / "train/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_2] == [r["step"] for r in rows_1] == list(range(1, 7))
    for r1, r2 in zip(rows_1, rows_2):
        assert r2["tokens"] == r1["tokens"]
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5, abs=1e-6)

    # Resume in a fresh launch from the step-2 sharded checkpoint, with negalign's activation
    # checkpointing on for steps 3-6 (recompute under FSDP2): the same final weights.
    resumed = tmp_path / "fsdp_resumed"
    _copy_inputs(single, resumed)
    shutil.copytree(full / "train/checkpoints/step-0000002", resumed / "train/checkpoints/step-0000002")
    proc = _launch_fsdp(tmp_path, run_config, resumed, "--resume", "--train.activation_checkpointing", "true")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "train: resumed from step-0000002 (step 2/6)" in proc.stdout
    assert "activation_checkpointing: true" in (resumed / "config.yaml").read_text()
    w3 = _weights(resumed)
    assert w3.keys() == w2.keys()
    for name in w2:
        torch.testing.assert_close(w3[name], w2[name], rtol=0, atol=1e-6)

    # The same sharded checkpoint under a plain single-process run: a one-line UserError.
    plain = tmp_path / "plain_resume"
    _copy_inputs(single, plain)
    shutil.copytree(full / "train/checkpoints/step-0000002", plain / "train/checkpoints/step-0000002")
    with pytest.raises(UserError, match="FSDP/DeepSpeed shards") as err:
        d2o.stage_train(load_config(run_config, {"run_dir": str(plain)}), resume=True, log=lambda *_: None)
    assert "\n" not in str(err.value) and "step-0000002" in str(err.value)
    assert not (plain / "model").exists()


# ---------------------------------------------------------------- rank-0-only progress lines

class _EchoGenerator:
    """Anchors named after the prompt: enough to drive run_sample without a model."""

    def generate(self, conversations, cfg):
        return [[f"anchor {i} for {c[-1]['content']}" for i in range(cfg.n)] for c in conversations]


def _as_rank(monkeypatch, rank: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setattr(distributed, "barrier", lambda: None)  # no second process to wait for here


def test_sample_and_reference_progress_is_printed_by_rank_0_only(run_config, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from negalign.base.rundir import RunDir
    from negalign.training.reference import reference_fingerprint

    examples = toy_examples()
    run_dir = tmp_path / "run"
    cfg = load_config(run_config, {"run_dir": str(run_dir)})
    drawn: list[str] = []
    run_sample(cfg, examples, _EchoGenerator(), log=drawn.append)  # one process: progress lines
    assert any(line.startswith("sample: 5/5 prompts") for line in drawn)
    lines: dict[int, list[str]] = {}
    for rank in (1, 0):  # the rerun under 2 processes finds everything done; one line, from rank 0
        _as_rank(monkeypatch, rank)
        lines[rank] = []
        assert list(run_sample(cfg, examples, _EchoGenerator(), log=lines[rank].append)) == [ex.id for ex in examples]
    assert lines == {1: [], 0: ["sample: all 5 prompts already have anchors"]}

    # reference: a cached file (no groups here) makes run_reference log one line and return it.
    save_file({"anchor_logps": torch.zeros(0, 0), "anchor_lengths": torch.zeros(0, 0, dtype=torch.int64),
               "negative_logps": torch.zeros(0), "negative_lengths": torch.zeros(0, dtype=torch.int64)},
              str(RunDir(run_dir).reference), metadata={"fingerprint": reference_fingerprint(cfg, [])})
    seen: dict[int, list[str]] = {}
    for rank in (1, 0):
        _as_rank(monkeypatch, rank)
        seen[rank] = []
        scores = run_reference(cfg, [], 0, load_model_fn=None, log=seen[rank].append)
        assert scores.negative_logps.shape == (0,)
    assert seen[1] == [] and len(seen[0]) == 1 and seen[0][0].startswith("reference: cached")
