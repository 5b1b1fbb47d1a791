"""Every item of the bad-input corpus through the real command line: exit code 2, one line, no traceback.

Data files go through `negalign data validate FILE` (with EXPECTED.json's options); configs and
model folders through the command their entry names (`train -c FILE`, `sample --model PATH`).
The runs are independent processes, so they go a few at a time: most of their time is imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess  # each case runs the real CLI in a child process

BAD = Path(__file__).parent / "data" / "bad"
EXPECTED = json.loads((BAD / "EXPECTED.json").read_text(encoding="utf-8"))
ITEMS = sorted(k for k in EXPECTED if not k.startswith("_"))
# A model path that must never be reached: a config mistake caught early fails before it.
SENTINEL = "./MODEL-NOT-TO-BE-LOADED"
TIMEOUT_S = 120


def command(name: str, run_dir: Path) -> list[str]:
    spec = EXPECTED[name]
    cli = spec.get("cli")
    if cli is None:
        args = ["data", "validate", name]
        for key, value in spec.get("options", {}).items():
            args += [f"--{key}", str(value)]
        return args
    args = [a.replace("{file}", name) for a in cli["args"]] + ["--run-dir", str(run_dir / name)]
    if cli.get("sentinel"):
        args += ["--model", SENTINEL]
    return args


def expected_parts(name: str) -> list[str]:
    spec = EXPECTED[name]
    return spec["cli"]["contains"] if "cli" in spec else spec["contains"]


def _run(name: str, run_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "negalign", *command(name, run_dir)], cwd=BAD, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli_runs")
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = dict(zip(ITEMS, pool.map(lambda n: _run(n, run_dir), ITEMS)))
    return done


def test_corpus_size():
    kinds = {"data": [n for n in ITEMS if "cli" not in EXPECTED[n]],
             "config": [n for n in ITEMS if EXPECTED[n].get("cli", {}).get("args", [""])[1:2] == ["-c"]],
             "model": [n for n in ITEMS if EXPECTED[n].get("cli", {}).get("args", [""])[1:2] == ["--model"]]}
    assert len(ITEMS) >= 25
    assert len(kinds["config"]) >= 8 and len(kinds["model"]) >= 4 and len(kinds["data"]) >= 25


def _params():
    out = []
    for name in ITEMS:
        reason = EXPECTED[name].get("cli", {}).get("xfail")
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name", _params())
def test_bad_input_fails_with_one_line(results, name):
    proc = results[name]
    err = proc.stderr
    assert "Traceback" not in err, err[-2000:]
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("negalign: error: "), lines[0]
    assert SENTINEL.lstrip("./") not in lines[0], f"got as far as loading a model: {lines[0]}"
    for part in expected_parts(name):
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"


# `--section.key VALUE` flags on every command (core, rdpo, critique): an unknown key names the flag
# (and the nearest known one), a bad value names the field; `--set` still works with a warning.
FLAG_CASES = {
    "rdpo_unknown_key": (["rdpo", "--rdpo.scorr", "x"], ["unknown flag --rdpo.scorr", "--rdpo.scorer?", "rdpo --help"]),
    "rdpo_bad_value": (["rdpo", "--rdpo.cdpo_epsilon", "abc"], ["field 'rdpo.cdpo_epsilon'", "expected a number", "abc"]),
    "rdpo_bad_variant": (["rdpo", "--variant", "ppo"], ["field 'rdpo.variant'", "ppo"]),
    "rdpo_missing_value": (["rdpo", "--train.tau"], ["--train.tau", "expected one argument"]),
    "critique_unknown_key": (["critique", "--critique.limitt", "3"], ["unknown flag --critique.limitt",
                                                                      "--critique.limit?"]),
    "critique_bad_value": (["critique", "--critique.max_new_tokens", "lots"],
                           ["field 'critique.max_new_tokens'", "expected an integer", "lots"]),
    "train_unknown_key": (["train", "--train.lrr", "1e-5"], ["unknown flag --train.lrr", "--train.lr?"]),
}
SET_CASE = ["rdpo", "--set", "rdpo.variant=ppo"]


@pytest.fixture(scope="module")
def flag_results(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("flag_runs")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", PYTHONWARNINGS="ignore")

    def run(item):
        name, argv = item
        argv = [*argv, "--run-dir", str(run_dir / name), "--model", SENTINEL]
        return name, subprocess.run([sys.executable, "-m", "negalign", *argv], cwd=run_dir, env=env,
                                    capture_output=True, text=True, timeout=TIMEOUT_S)

    items = [(n, argv) for n, (argv, _) in FLAG_CASES.items()] + [("set_alias", SET_CASE)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, items))


@pytest.mark.parametrize("name", sorted(FLAG_CASES))
def test_flag_mistakes_fail_with_one_line(flag_results, name):
    proc = flag_results[name]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("negalign: error: "), proc.stderr
    assert SENTINEL.lstrip("./") not in lines[0]
    for part in FLAG_CASES[name][1]:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"


def test_set_alias_warns_then_checks_like_a_flag(flag_results):
    proc = flag_results["set_alias"]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip("\n").split("\n") == [
        "negalign: warning: --set is deprecated and goes in the next release; write --rdpo.variant ppo",
        "negalign: error: field 'rdpo.variant': unknown variant 'ppo'; choose from rdpo, dpo, cdpo, sft"]
