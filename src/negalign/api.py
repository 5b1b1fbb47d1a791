"""The Python API: what the CLI does, callable from a script or a notebook.

    import negalign

    cfg = negalign.load_config("configs/d2o_smollm2.yaml", {"train.lr": 1e-5, "run_dir": "runs/try"})
    model_dir = negalign.run(cfg)                      # sample, reference, train (resumable)
    result = negalign.evaluate(model_dir, quick=True)  # an Evaluation: metrics with CIs, replies
    print(result.metric("refusal_rate"))               # Metric(value=0.42, ci_low=..., ci_high=..., n=48)

Every function takes a Config (from `load_config`, `config_from_dict` or `Config()`) and writes the
same run directory files as the matching command, so the CLI and the API resume each other's runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from negalign.config import Config, config_from_dict, load_config

__all__ = ["Config", "load_config", "config_from_dict", "sample", "reference", "train", "run", "evaluate",
           "Evaluation", "Metric", "demo", "load_model"]


def sample(cfg: Config, *, log=print) -> dict[str, list[str]]:
    """`negalign sample`: K anchors per prompt (and the hold prompts' anchors) -> {prompt id: anchors}."""
    from negalign.recipes import d2o

    return d2o.stage_sample(cfg, log=log)


def reference(cfg: Config, *, log=print):
    """`negalign reference`: the reference log-probs of anchors and negatives (cached in the run dir)."""
    from negalign.recipes import d2o

    return d2o.stage_reference(cfg, log=log)


def train(cfg: Config, *, resume: bool = True, log=print) -> Path:
    """`negalign train`: train on the sampled anchors; returns the saved model folder."""
    from negalign.recipes import d2o

    return d2o.stage_train(cfg, resume=resume, log=log)


def run(cfg: Config, *, resume: bool = True, log=print) -> Path:
    """`negalign run`: sample, then train (the reference is scored on the way); the model folder."""
    from negalign.recipes import d2o

    return d2o.stage_all(cfg, resume=resume, log=log)


@dataclass(frozen=True)
class Metric:
    """A metric with its 95 % percentile-bootstrap interval (None where it does not apply)."""
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int

    def __str__(self) -> str:
        if self.value is None:
            return "n/a"
        if self.ci_low is None:
            return f"{self.value:.4g} (n={self.n})"
        return f"{self.value:.4g} [{self.ci_low:.4g}, {self.ci_high:.4g}] (n={self.n})"


@dataclass(frozen=True)
class Evaluation:
    """What `negalign evaluate` wrote to `path` (eval.json), as an object."""
    path: Path
    raw: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Metric]:
        return {k: Metric(m["value"], m["ci_low"], m["ci_high"], m["n"]) for k, m in self.raw["metrics"].items()}

    def metric(self, name: str) -> Metric:
        try:
            return self.metrics[name]
        except KeyError:
            raise KeyError(f"no metric {name!r}; there are {sorted(self.raw['metrics'])}") from None

    @property
    def replies(self) -> dict[str, dict[str, dict]]:
        """{set: {prompt id: {"prompt", "reply", "refused", ...}}} for harmful, overrefusal, benign."""
        return self.raw.get("replies", {})

    @property
    def settings(self) -> dict[str, Any]:
        return self.raw["settings"]

    @classmethod
    def read(cls, path: str | Path) -> "Evaluation":
        """An eval.json written earlier (or the folder that holds it)."""
        import json

        path = Path(path)
        if path.is_dir():
            path = path / "eval.json"
        return cls(path, json.loads(path.read_text(encoding="utf-8")))


def evaluate(model: str | Path, *, reference: str = "default", out_dir: str | Path | None = None,
             quick: bool = False, log=print, **settings) -> Evaluation:
    """`negalign evaluate MODEL`: a run directory, a model folder, a .gguf or 'default'.

    quick: evaluate's smoke sizes (48 harmful, 48 benign-edgy, 24 benign prompts). Any keyword of
    `negalign.evaluation.evaluate.evaluate_model` passes through (n_harmful, judge, kl, seed...).
    Writes eval.json under out_dir (default: RUN_DIR/eval for a run directory, else ./eval).
    """
    from negalign.base.rundir import RunDir
    from negalign.evaluation.evaluate import EVAL_FILE, QUICK_SIZES, evaluate_model

    spec, default_out = RunDir.evaluation_target(model)  # as the CLI: a run directory -> its model/, RUN_DIR/eval
    out = Path(out_dir) if out_dir is not None else default_out
    kwargs = {**(QUICK_SIZES if quick else {}), **settings}
    raw = evaluate_model(spec, reference_spec=reference, out_dir=out, log=log, **kwargs)
    return Evaluation(out / EVAL_FILE, raw)


def demo(run_dir: str = "runs/demo", *, fresh: bool = False, log=print) -> dict:
    """`negalign demo`: the recipe at demo scale, then the before/after table (returned as a dict)."""
    from negalign.recipes.demo import run_demo

    return run_demo(run_dir, fresh=fresh, log=log)


def load_model(spec: str | Path, **kwargs):
    """(model, tokenizer) of 'default', 'qwen2.5-coder-1.5b', a model folder, a run's model/ or a .gguf."""
    from negalign.modeling.loading import load_model as _load

    return _load(str(spec), **kwargs)
