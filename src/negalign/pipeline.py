"""Wires the stages together: config -> examples -> anchors -> reference -> training.

Each stage function reads what earlier stages left in the run directory, so `negalign sample`,
`negalign reference` and `negalign train` can run alone, in order, or all at once (`negalign run`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from negalign.base import distributed
from negalign.config import Config, save_config
from negalign.data.records import Example
from negalign.base.fingerprint import fingerprint
from negalign.base.errors import UserError
from negalign.groups import GroupIndex, Tokenizer, build_groups, group_index
from negalign.base.io import check_writable_dir, read_jsonl_tolerant, write_json, write_jsonl
from negalign.modeling.loading import LoraSpec, load_model, load_tokenizer
from negalign.objectives.registry import get_objective

EXAMPLES_FILE = "data/examples.jsonl"


def prepare_run_dir(cfg: Config) -> Path:
    run_dir = check_writable_dir(cfg.run_dir)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


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


def examples_snapshot(cfg: Config, examples: list[Example]) -> None:
    """Keep the exact examples a run used beside its outputs (inspectable, and reproducible)."""
    write_jsonl(Path(cfg.run_dir) / EXAMPLES_FILE, (ex.to_json() for ex in examples))


def run_examples(cfg: Config) -> list[Example]:
    """Examples of this run: from its snapshot if there is one, so later stages see the same data.

    The snapshot remembers the data settings that made it; other settings on the same run
    directory are refused rather than silently ignored.
    """
    path = Path(cfg.run_dir) / EXAMPLES_FILE
    meta = path.with_suffix(".meta.json")
    settings = fingerprint(dataclasses.asdict(cfg.data))
    if path.exists() and meta.exists():
        made_with = json.loads(meta.read_text(encoding="utf-8")).get("data_fingerprint")
        if made_with != settings:
            raise UserError("this run directory was made with other data settings; use a new run directory",
                            path=str(path))
        return [Example.from_json(r) for r in read_jsonl_tolerant(path)]
    examples = load_examples_for(cfg)
    examples_snapshot(cfg, examples)
    write_json(meta, {"data_fingerprint": settings})
    return examples


def _lora_spec(cfg: Config) -> LoraSpec | None:
    lc = cfg.model.lora
    if not lc.enabled:
        return None
    return LoraSpec(r=lc.r, alpha=lc.alpha, dropout=lc.dropout, target_modules=tuple(lc.target_modules))


def _device() -> str:
    return str(distributed.device())  # cuda:LOCAL_RANK under a launcher, so ranks do not share GPU 0


def load_plain(cfg: Config, spec: str | None = None):
    return load_model(spec or cfg.model.name, device=_device(), trust_remote_code=cfg.model.trust_remote_code,
                      allow_pickle=cfg.model.allow_pickle)


def make_sampler(cfg: Config, model=None, tokenizer=None):
    """The anchor sampler the config asks for; reuses a loaded model when given."""
    from negalign.generation.factory import make_generator

    s = cfg.sample
    spec = {"backend": s.backend, "model": cfg.model.name}
    if s.backend == "openai":
        spec.update(base_url=s.base_url, api_key_env=s.api_key_env)
    elif s.backend in ("transformers", "auto"):  # the other backends refuse keys they do not use
        spec["batch_size"] = s.batch_size
    return make_generator(spec, model=model, tokenizer=tokenizer)


# ---------------------------------------------------------------- stages

def stage_sample(cfg: Config, *, log=print) -> dict[str, list[str]]:
    from negalign.stages.sample import read_anchors, run_sample

    prepare_run_dir(cfg)
    examples = run_examples(cfg)
    needed = get_objective(cfg.train.method).needs_anchors and cfg.sample.k > 0
    if not needed:
        log(f"sample: method '{cfg.train.method}' uses no anchors; nothing to sample")
        return {}
    if cfg.data.anchors == "positives":
        log(f"sample: data.anchors is 'positives': the human positives of {len(examples)} prompts are the anchors")
        return positive_anchors(cfg, examples)
    anchors = read_anchors(cfg.run_dir)
    if all(ex.id in anchors for ex in examples):
        log(f"sample: all {len(examples)} prompts already have anchors")
        return anchors
    from negalign.generation.vllm_backend import vllm_available

    model = tok = None
    if cfg.sample.backend == "transformers" or (cfg.sample.backend == "auto" and not vllm_available()):
        model, tok = load_plain(cfg)
    generator = make_sampler(cfg, model, tok)
    return run_sample(cfg, examples, generator, log=log)


def positive_anchors(cfg: Config, examples: list[Example]) -> dict[str, list[str]]:
    """Up to K human positives per prompt, in their data order, as the anchors."""
    return {ex.id: ex.positives[:cfg.sample.k] for ex in examples if ex.positives}


def training_groups(cfg: Config, tokenizer, examples: list[Example], anchors: dict[str, list[str]], *, log=print):
    objective = get_objective(cfg.train.method)
    if cfg.data.anchors == "positives":
        anchors = positive_anchors(cfg, examples)
    index = group_index(examples, cfg.data.max_negatives_per_prompt)
    use = anchors if objective.needs_anchors else {}
    if objective.needs_anchors and cfg.sample.k > 0:
        missing = [ex.id for ex in examples if ex.id not in use]
        if missing:
            raise UserError(f"{len(missing)} prompts have no anchors yet; run `negalign sample` first",
                            path=str(Path(cfg.run_dir) / "anchors.jsonl"))
    tok = Tokenizer(tokenizer, cfg.data.max_prompt_tokens, cfg.data.max_response_tokens)
    groups = build_groups(tok, examples, index, use)
    if tok.stats.prompts or tok.stats.responses:
        log(f"data: {tok.stats.summary()}")
    k = cfg.sample.k if objective.needs_anchors else 0
    return groups, index, k, tok.stats


def stage_reference(cfg: Config, *, log=print):
    from negalign.stages.sample import read_anchors

    prepare_run_dir(cfg)
    if not get_objective(cfg.train.method).needs_reference:
        log(f"reference: method '{cfg.train.method}' is reference-free; nothing to score")
        return None
    examples = run_examples(cfg)
    tokenizer = load_tokenizer(cfg.model.name)
    groups, _, k, _ = training_groups(cfg, tokenizer, examples, read_anchors(cfg.run_dir), log=log)
    return reference_for(cfg, groups, k, log=log)


def reference_for(cfg: Config, groups, k: int, *, log=print):
    """Reference scores of already-built groups (cached), or None for reference-free methods."""
    from negalign.stages.reference import run_reference

    if not get_objective(cfg.train.method).needs_reference:
        return None
    return run_reference(cfg, groups, k, lambda spec: load_plain(cfg, spec)[0], log=log)


def stage_train(cfg: Config, *, resume: bool = False, log=print) -> Path:
    from negalign.stages.sample import read_anchors
    from negalign.stages.train import TrainData, run_train

    prepare_run_dir(cfg)
    done = Path(cfg.run_dir) / "train" / "done.json"
    if done.exists() and (Path(cfg.run_dir) / "model").exists():
        log(f"train: already finished; the model is in {Path(cfg.run_dir) / 'model'}")
        return Path(cfg.run_dir) / "model"
    examples = run_examples(cfg)
    # Groups are tokenised once and serve both the reference scores and training; the reference
    # model is loaded, used and freed before the policy loads.
    groups, index, k, _ = training_groups(cfg, load_tokenizer(cfg.model.name), examples,
                                          read_anchors(cfg.run_dir), log=log)
    reference = reference_for(cfg, groups, k, log=log)  # cached after the first time
    model, tokenizer = load_model(cfg.model.name, device=_device(), lora=_lora_spec(cfg),
                                  trust_remote_code=cfg.model.trust_remote_code,
                                  allow_pickle=cfg.model.allow_pickle)
    data = TrainData(groups=groups, n_anchors=k, reference=reference)
    on_step = None
    if cfg.train.online.every > 0:
        from negalign.stages.online import OnlineResampler

        on_step = OnlineResampler(cfg, tokenizer, examples, index, data, log=log)
    return run_train(cfg, model, tokenizer, data, resume=resume, log=log, on_step=on_step)


def stage_all(cfg: Config, *, resume: bool = False, log=print) -> Path:
    stage_sample(cfg, log=log)
    return stage_train(cfg, resume=resume, log=log)
