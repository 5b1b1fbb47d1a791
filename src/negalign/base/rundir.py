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


class RunDir:
    """The files of one run, by role. Paths only: nothing is created until a stage writes."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    # ------------------------------------------------------------ paths
    config = property(lambda self: self.root / "config.yaml")
    examples = property(lambda self: self.root / "data" / "examples.jsonl")
    examples_meta = property(lambda self: self.root / "data" / "examples.meta.json")
    anchors = property(lambda self: self.root / "anchors.jsonl")
    anchors_meta = property(lambda self: self.root / "anchors.meta.json")
    online_anchors = property(lambda self: self.root / "anchors.online.jsonl")
    reference = property(lambda self: self.root / "reference.safetensors")
    reference_partial = property(lambda self: self.root / "reference.partial")
    train_dir = property(lambda self: self.root / "train")
    metrics = property(lambda self: self.root / "train" / "metrics.jsonl")
    checkpoints = property(lambda self: self.root / "train" / "checkpoints")
    done = property(lambda self: self.root / "train" / "done.json")
    model = property(lambda self: self.root / "model")
    eval_dir = property(lambda self: self.root / "eval")
    pairs = property(lambda self: self.root / "pairs.jsonl")
    pairs_dropped = property(lambda self: self.root / "pairs.dropped.jsonl")
    pairs_stats = property(lambda self: self.root / "pairs.stats.json")

    @staticmethod
    def meta_beside(path: Path) -> Path:
        """critique.jsonl -> critique.jsonl.meta.json (files whose name is configurable)."""
        return path.with_name(path.name + ".meta.json")

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
            changed = sorted(k for k in settings if old.get("settings", {}).get(k) != settings[k])
            raise pin.error(changed, path=error_path or meta)

    @staticmethod
    def record_pin(meta: Path, settings: dict, pin: Pin) -> None:
        record = {pin.key: fingerprint(settings)}
        if pin.with_settings:
            record["settings"] = settings
        write_json(meta, record)

    # ------------------------------------------------------------ done marker
    def trained(self) -> bool:
        """Training finished here: the done marker and the final model are both present."""
        return self.done.exists() and self.model.exists()

    def mark_trained(self, info: dict) -> None:
        write_json(self.done, info)
