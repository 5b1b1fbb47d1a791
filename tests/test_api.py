"""The Python API: the README's example runs as written (real default model, a few prompts)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_api_names_resolve_lazily():
    import negalign

    assert {"load_config", "run", "evaluate", "Evaluation", "Metric"} <= set(dir(negalign))
    assert negalign.load_config is negalign.api.load_config
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        negalign.nope  # noqa: B018


def test_metric_and_evaluation_read_back(tmp_path):
    import json

    import negalign

    raw = {"settings": {"n_harmful": 2}, "metrics": {"refusal_rate": {"value": 0.5, "ci_low": 0.0, "ci_high": 1.0,
                                                                      "n": 2, "level": 0.95}},
           "replies": {"harmful": {"a": {"prompt": "p", "reply": "r", "refused": True}}}}
    (tmp_path / "eval.json").write_text(json.dumps(raw))
    ev = negalign.Evaluation.read(tmp_path)
    assert ev.metric("refusal_rate") == negalign.Metric(0.5, 0.0, 1.0, 2)
    assert str(ev.metric("refusal_rate")) == "0.5 [0, 1] (n=2)"
    assert ev.replies["harmful"]["a"]["reply"] == "r" and ev.settings == {"n_harmful": 2}
    with pytest.raises(KeyError, match="no metric 'harm'"):
        ev.metric("harm")


@pytest.mark.slow
@pytest.mark.subprocess
def test_readme_python_example_runs(tmp_path):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"\d\.\d+ \[\d", out.stdout) or "(n=6)" in out.stdout, out.stdout[-2000:]
    assert (tmp_path / "runs/api_example/model/config.json").exists()
    assert (tmp_path / "runs/api_example/eval/eval.json").exists()
