"""One run directory: where each file of a run lives, its config snapshot, pinned settings, done marker.

Every stage reads and writes plain files here, so each can run alone, resume after a crash, or be
inspected by hand. The names below are the format of a run directory: runs made by earlier versions
must keep resuming, so a name never changes.

Pinned settings: a file made under some settings (anchors, examples, critique rows, checkpoints)
records them; a later stage given other settings is refused with one kind of error,
SettingsChanged, rather than silently mixing old and new rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

from negalign.base.durable import manifest_problem
from negalign.base.errors import UserError
from negalign.base.fingerprint import fingerprint
from negalign.base.io import check_writable_dir, write_json, write_text


class SettingsChanged(UserError):
    """A file of the run directory was made with other settings than the ones given now."""


@dataclass(frozen=True)
class Pin:
    """How a file records the settings that made it, and what a user who changed them is told:
    "{subject} with other {kind}settings (changed keys); {remedy}"."""

    subject: str                 # "anchors here were sampled"
    remedy: str                  # "use a new run directory or delete anchors.jsonl"
    kind: str = ""               # "data " reads "other data settings"
    key: str = "fingerprint"     # the field of the meta file that holds the fingerprint
    with_settings: bool = True   # store the settings too, so that the error names the changed ones

    def error(self, changed: Iterable[str] = (), *, path: str | os.PathLike | None = None) -> SettingsChanged:
        listed = f" ({', '.join(changed)})" if self.with_settings else ""
        return SettingsChanged(f"{self.subject} with other {self.kind}settings{listed}; {self.remedy}",
                               path=None if path is None else str(path))


class _File:
    """A path below the run directory, read as `run.name` (the class attribute gives the descriptor)."""

    def __init__(self, relative: str):
        self.relative = relative

    def __get__(self, run: "RunDir | None", owner=None):
        return self if run is None else run.root / self.relative


class RunDir:
    """The files of one run, by role. Paths only: nothing is created until a stage writes."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    # ------------------------------------------------------------ paths (relative to the root)
    config = _File("config.yaml")                      # the settings used (a snapshot)
    examples = _File("data/examples.jsonl")            # the examples the run used
    examples_meta = _File("data/examples.meta.json")   # ... and the data settings that made them
    anchors = _File("anchors.jsonl")                   # K anchors per prompt, appended as sampled
    anchors_meta = _File("anchors.meta.json")          # ... and the sampling settings
    anchors_quality = _File("anchors.quality.json")    # ... and how safe they are next to the negatives
    online_anchors = _File("anchors.online.jsonl")     # anchors resampled during online D2O
    hold = _File("hold")                               # hold prompts' anchors (a run dir of its own)
    reference = _File("reference.safetensors")         # cached reference log-probs
    reference_partial = _File("reference.partial")     # their batches while being scored
    train_dir = _File("train")
    metrics = _File("train/metrics.jsonl")             # one row per optimizer step
    checkpoints = _File("train/checkpoints")           # step-NNNNNNN/ folders
    done = _File("train/done.json")                    # the done marker of training
    tracking = _File("train/tracking")                 # train.report_to: TensorBoard, W&B, MLflow files
    model = _File("model")                             # the trained model folder
    eval_dir = _File("eval")                           # `negalign evaluate RUN_DIR` writes here
    pair_scores = _File("pairs.scores.jsonl")          # rDPO: raw scores, appended as scored
    pairs = _File("pairs.jsonl")                       # rDPO: kept pairs, dropped ones, their stats
    pairs_dropped = _File("pairs.dropped.jsonl")
    pairs_stats = _File("pairs.stats.json")

    @staticmethod
    def meta_beside(path: Path) -> Path:
        """critique.jsonl -> critique.jsonl.meta.json (files whose name is configurable)."""
        return path.with_name(path.name + ".meta.json")

    # ------------------------------------------------------------ what `evaluate` reads and writes
    @staticmethod
    def evaluation_target(model: str | os.PathLike) -> tuple[str, Path]:
        """(model spec, default output folder) for `evaluate MODEL`: a run directory (one with a
        saved model/) evaluates its trained model into RUN_DIR/eval; anything else as given, into ./eval."""
        run = RunDir(model)
        if run.root.is_dir() and (run.model / "config.json").exists():
            return str(run.model), run.eval_dir
        return str(model), Path("eval")

    # ------------------------------------------------------------ the directory and its config
    def prepare(self) -> "RunDir":
        """Fail early, with one line, if the directory cannot be written or its disk is full."""
        check_writable_dir(self.root)
        return self

    def save_config(self, values: dict) -> None:
        """The settings actually used, as config.yaml (keys in schema order)."""
        write_text(self.config, yaml.safe_dump(values, sort_keys=False, allow_unicode=True))

    def read_config(self) -> dict:
        """config.yaml as a mapping; {} when it is missing or unreadable (readers only want hints)."""
        try:
            values = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return {}
        return values if isinstance(values, dict) else {}

    # ------------------------------------------------------------ pinned settings
    def pin(self, meta: Path, settings: dict, pin: Pin, *, error_path: Path | None = None) -> None:
        """Record `settings` in `meta` the first time; afterwards refuse other ones (SettingsChanged)."""
        if meta.exists():
            self.check_pinned(meta, settings, pin, error_path=error_path)
        else:
            self.record_pin(meta, settings, pin)

    @staticmethod
    def check_pinned(meta: Path, settings: dict, pin: Pin, *, error_path: Path | None = None) -> None:
        old = json.loads(meta.read_text(encoding="utf-8"))
        if old.get(pin.key) != fingerprint(settings):
            saved = old.get("settings", {})  # a key added or dropped since counts as changed too
            changed = sorted(k for k in set(settings) | set(saved) if saved.get(k) != settings.get(k))
            raise pin.error(changed, path=error_path or meta)

    @staticmethod
    def record_pin(meta: Path, settings: dict, pin: Pin) -> None:
        record = {pin.key: fingerprint(settings)}
        if pin.with_settings:
            record["settings"] = settings
        write_json(meta, record)

    # ------------------------------------------------------------ done marker
    def trained(self, log=None) -> bool:
        """Training finished here: the done marker and a final model that matches its manifest.
        A damaged model is reported through `log` and counts as not trained, so it is trained again."""
        if not (self.done.exists() and self.model.exists()):
            return False
        problem = manifest_problem(self.model)
        if problem is not None and log is not None:
            log(f"train: warning: the saved model is damaged ({problem}); training it again")
        return problem is None

    def mark_trained(self, info: dict) -> None:
        write_json(self.done, info)
