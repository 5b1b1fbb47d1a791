"""The examples of a run: loaded from the configured data once, then read back from the run's snapshot.

The snapshot (data/examples.jsonl) keeps the exact examples a run used beside its outputs, so later
stages see the same data; data/examples.meta.json pins the data settings that made it.
"""

from __future__ import annotations

import dataclasses

from negalign.base.errors import UserError
from negalign.base.io import read_jsonl_tolerant, write_jsonl
from negalign.base.rundir import Pin, RunDir
from negalign.config import Config
from negalign.data.records import Example

DATA_PIN = Pin("this run directory was made", "use a new run directory", kind="data ", key="data_fingerprint",
               with_settings=False)


def load_examples_for(cfg: Config) -> list[Example]:
    """The training examples the config names, validated before any model loads."""
    d = cfg.data
    if d.source == "bundled":
        from negalign.data.pyrit import bundled_negatives

        examples = bundled_negatives(d.split, heldout_fraction=d.heldout_fraction, seed=d.seed)
    else:
        from negalign.data.loaders import load_examples

        mapping = None
        if d.mapping:
            from negalign.data.loaders import ColumnMapping

            try:
                mapping = ColumnMapping(**d.mapping)
            except TypeError as e:
                raise UserError(f"bad column mapping: {e}", field="data.mapping") from None
        examples = load_examples(d.source, format=d.format, mapping=mapping, preset=d.preset)
    if d.anchors == "positives":  # only prompts with a human positive can form a group
        examples = [ex for ex in examples if ex.positives]
    if d.limit is not None:
        examples = examples[:d.limit]
    if not any(ex.negatives for ex in examples):
        raise UserError("no example has a negative response", path=d.source, field="negatives")
    return examples


def run_examples(cfg: Config) -> list[Example]:
    """Examples of this run: from its snapshot if there is one, so later stages see the same data.

    Other data settings on the same run directory are refused rather than silently ignored.
    """
    run = RunDir(cfg.run_dir)
    settings = dataclasses.asdict(cfg.data)
    if run.examples.exists() and run.examples_meta.exists():
        run.check_pinned(run.examples_meta, settings, DATA_PIN, error_path=run.examples)
        return [Example.from_json(r) for r in read_jsonl_tolerant(run.examples)]
    examples = load_examples_for(cfg)
    write_jsonl(run.examples, (ex.to_json() for ex in examples))
    run.record_pin(run.examples_meta, settings, DATA_PIN)
    return examples
