"""Build the harm judge a user names: the default offline judge, a local folder or GGUF file with a
rubric (and optionally a probe), or a guard model.

The default is Qwen2.5-Coder-1.5B-Instruct (shipped as GGUF chunks in PyPI packages, materialised
once into a bf16 folder) asked the harm15 rubric, read through the linear probe in
judge_probe.json when the model is the default one (benchmarks/scorers/judge_probe.py fits and
validates it; benchmarks/scorers/README.md has its numbers).
"""

from __future__ import annotations

import json
from pathlib import Path

from negalign.base.errors import UserError
from negalign.evaluation.scorers.rubrics import RUBRICS
from negalign.evaluation.scorers.verdict import Probe, VerdictJudge

DEFAULT_JUDGE_MODEL = "qwen2.5-coder-1.5b"
DEFAULT_RUBRIC = "harm15"
DEFAULT_PROBE = Path(__file__).with_name("judge_probe.json")


def load_probe(spec, model: str, rubric: str) -> Probe | None:
    """'default' -> the shipped probe when it was fitted for this model and rubric (else none);
    None/'none' -> no probe; a path -> that file, which must name the same model and rubric."""
    if spec in (None, "none", False):
        return None
    path = DEFAULT_PROBE if spec == "default" else Path(spec)
    if not path.exists():
        if spec == "default":
            return None
        raise UserError("probe file does not exist", path=str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read probe: {e}", path=str(path)) from None
    if (data.get("model"), data.get("rubric")) != (model, rubric):
        if spec == "default":
            return None
        raise UserError(f"probe was fitted for model {data.get('model')!r} with rubric {data.get('rubric')!r}, "
                        f"not {model!r} with {rubric!r}", path=str(path))
    return Probe.from_dict(data)


def make_verdict_judge(model: str = DEFAULT_JUDGE_MODEL, rubric: str = DEFAULT_RUBRIC, probe="default", *,
                       batch_size: int = 8, threshold: float = 0.5, max_item_tokens: int = 448,
                       answer_prefix: str | None = None, choices: list[str] | None = None,
                       precision: str = "auto") -> VerdictJudge:
    """A VerdictJudge on a model spec (name, folder or .gguf), its weights in `precision`: auto loads bf16
    where this machine runs bf16 fast, else fp32 (modeling.precision)."""
    import dataclasses

    from negalign.modeling.loading import load_model
    from negalign.modeling.precision import torch_dtype

    if rubric not in RUBRICS:
        raise UserError(f"unknown rubric {rubric!r}; choose one of {', '.join(RUBRICS)}", field="rubric")
    r = RUBRICS[rubric]
    if answer_prefix is not None:
        r = dataclasses.replace(r, answer_prefix=answer_prefix)
    if choices is not None:
        if len(choices) != len(r.choices):
            raise UserError(f"rubric {rubric!r} needs {len(r.choices)} choices", field="choices")
        r = dataclasses.replace(r, choices=tuple(choices))
    loaded_probe = load_probe(probe, model, rubric)
    m, tok = load_model(model, dtype=torch_dtype(precision))
    m.eval()
    try:
        judge = VerdictJudge(m, tok, r, probe=loaded_probe, batch_size=batch_size, max_item_tokens=max_item_tokens,
                             threshold=threshold)
    except ValueError as e:
        raise UserError(str(e), field="choices") from None
    judge.spec = {"model": model, "rubric": rubric, "probe": None if loaded_probe is None else str(
        DEFAULT_PROBE if probe == "default" else probe)}
    return judge
