"""`train.report_to`: the metrics.jsonl rows (and a run's evaluation) in TensorBoard, read back step by step;
MLflow and W&B where they are installed (they are not in the lock)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from negalign.base.errors import UserError
from negalign.base.rundir import RunDir
from negalign.cli.main import main
from negalign.config import load_config
from negalign.data.loaders import save_examples
from negalign.data.records import Example
from negalign.training.loop import run_train
from tiny_models import npo_train_setup, tiny_llama

pytest.importorskip("tensorboard")


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for the run: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(RunDir(run).tracking / "negalign"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _as_logged(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl's numbers as TensorBoard stores them (float32)."""
    tags = sorted({k for r in rows for k, v in r.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return {t: [(r["step"], float(np.float32(r[t]))) for r in rows if t in r] for t in tags}


def test_report_to_is_checked_with_the_config(tmp_path):
    assert load_config(None).train.report_to == ["none"]
    assert load_config(None, {"train.report_to": "tensorboard"}).train.report_to == ["tensorboard"]
    with pytest.raises(UserError, match=r"field 'train.report_to': expected none or a list of tensorboard, wandb, "
                                        r"mlflow, got 'comet'"):
        load_config(None, {"train.report_to": "tensorboard,comet"})
    with pytest.raises(UserError, match="none cannot be combined"):
        load_config(None, {"train.report_to": ["none", "tensorboard"]})


def test_a_missing_tracker_package_is_one_line_and_exit_2_before_any_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails, find_spec finds nothing
    code = main(["train", "--model", "./MODEL-NOT-TO-BE-LOADED", "--run-dir", str(tmp_path / "run"),
                 "--train.report_to", "tensorboard"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == ("negalign: error: field 'train.report_to': tensorboard needs the tensorboard package: "
                   "pip install tensorboard\n")
    assert not (tmp_path / "run").exists()


def test_training_and_evaluation_through_the_cli_log_to_tensorboard(tmp_path, tiny_model_dir, capsys, monkeypatch):
    data = tmp_path / "data.jsonl"
    save_examples(data, [Example(id=f"e{i}", prompt=[{"role": "user", "content": f"How do I do bad thing {i}?"}],
                                 negatives=[f"Sure, bad thing {i} goes like this."]) for i in range(3)])
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--method", "npo", "--run-dir",
                 str(run), "--train.groups_per_step", "1", "--train.micro_groups", "1", "--train.precision", "fp32",
                 "--train.lr", "1e-3", "--train.report_to", "tensorboard"]) == 0
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    logged = _scalars(run)
    assert logged == _as_logged(rows)  # every numeric key, every step, the same values
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_s"} <= set(logged)
    hparams = list((RunDir(run).tracking / "negalign").glob("*/hparams.yml"))
    assert len(hparams) == 1 and "train.method: npo" in hparams[0].read_text()

    # `negalign evaluate RUN_DIR` (its last part, after the evaluation): results at the last step
    from negalign.cli.evaluate import after_run_evaluation, own_run_config

    result = {"metrics": {"refusal_rate": {"value": 0.25}, "kl": {"value": None}, "harm": {"value": 0.5}}}
    run_cfg = own_run_config(RunDir(run), str(RunDir(run).model), None)
    after_run_evaluation(RunDir(run), run_cfg, result)
    assert f"logged the results to tensorboard under {RunDir(run).tracking}" in capsys.readouterr().out
    logged = _scalars(run)
    assert logged["eval/refusal_rate"] == [(3, 0.25)] and logged["eval/harm"] == [(3, 0.5)]
    assert "eval/kl" not in logged
    # Where the package is missing, `negalign evaluate RUN_DIR` says so before it evaluates anything.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert main(["evaluate", str(run), "--quick"]) == 2
    assert capsys.readouterr().err == (f"negalign: error: {RunDir(run).config}: field 'train.report_to': tensorboard "
                                       f"needs the tensorboard package: pip install tensorboard\n")


def test_a_resumed_run_shows_each_step_once(tmp_path, tokenizer):
    class Crash(Exception):
        pass

    def crash_at_3(step, _model):
        if step == 3:
            raise Crash

    cfg, data = npo_train_setup(tmp_path / "run", tokenizer, max_steps=4, save_every=1, report_to="tensorboard")
    with pytest.raises(Crash):
        run_train(cfg, tiny_llama(tokenizer), tokenizer, data, log=lambda *_: None, on_step=crash_at_3)
    assert [s for s, _ in _scalars(tmp_path / "run")["loss"]] == [1, 2, 3]
    run_train(cfg, tiny_llama(tokenizer), tokenizer, data, resume=True, log=lambda *_: None)
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # Step 3 was logged twice; TensorBoard hides the first attempt from the resumed step on.
    assert _scalars(tmp_path / "run") == _as_logged(rows)


def test_report_to_none_writes_no_tracking_folder(tmp_path, tokenizer):
    cfg, data = npo_train_setup(tmp_path / "run", tokenizer, max_steps=2, save_every=0)
    run_train(cfg, tiny_llama(tokenizer), tokenizer, data, log=lambda *_: None)
    assert len(_metrics(tmp_path / "run")) == 2
    assert not RunDir(tmp_path / "run").tracking.exists()


def test_mlflow_gets_the_same_rows_in_a_store_under_the_run_directory(tmp_path, tokenizer, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")  # the SQLite store (full `pip install mlflow` has it)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg, data = npo_train_setup(tmp_path / "run", tokenizer, max_steps=2, save_every=0, report_to="mlflow")
    run_train(cfg, tiny_llama(tokenizer), tokenizer, data, log=lambda *_: None)
    tracking = RunDir(tmp_path / "run").tracking
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tracking / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("negalign").experiment_id])
    rows = _metrics(tmp_path / "run")
    assert [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, "loss")] == \
        [(r["step"], r["loss"]) for r in rows]
    assert found.data.params["train.report_to"] == "mlflow"


def test_wandb_runs_offline_under_the_run_directory(tmp_path, tokenizer, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg, data = npo_train_setup(tmp_path / "run", tokenizer, max_steps=2, save_every=0, report_to="wandb")
    run_train(cfg, tiny_llama(tokenizer), tokenizer, data, log=lambda *_: None)
    assert os.environ["WANDB_MODE"] == "offline"
    assert len(list((RunDir(tmp_path / "run").tracking / "wandb").glob("offline-run-*/*.wandb"))) == 1
