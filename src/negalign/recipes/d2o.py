"""The D2O recipe: config -> examples -> anchors -> reference -> training, one stage per command.

Each stage function reads what earlier stages left in the run directory, so `negalign sample`,
`negalign reference` and `negalign train` can run alone, in order, or all at once (`negalign run`).
"""

from __future__ import annotations

from pathlib import Path

from negalign.base.rundir import RunDir
from negalign.config import Config
from negalign.modeling.loading import load_tokenizer
from negalign.objectives.registry import get_objective
from negalign.training.anchors import make_sampler, positive_anchors, read_anchors, run_sample, sampler_model
from negalign.training.examples import run_examples
from negalign.training.groups import training_groups
from negalign.training.models import load_plain, load_policy


def prepare_run_dir(cfg: Config) -> Path:
    run = RunDir(cfg.run_dir).prepare()
    run.save_config(cfg.to_dict())
    return run.root


def stage_sample(cfg: Config, *, log=print) -> dict[str, list[str]]:
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
        stage_sample_hold(cfg, log=log)
        return anchors
    from negalign.recipes.anchor_safety import make_selector, record_anchor_quality

    model, tok = _local_sampler(cfg)
    generator = make_sampler(cfg, model, tok)
    select = make_selector(cfg) if cfg.sample.best_of > cfg.sample.k else None
    anchors = run_sample(cfg, examples, generator, select=select, log=log)
    from negalign.base import distributed

    if distributed.current().main:  # every rank holds the merged anchors; one writes the record
        record_anchor_quality(cfg, examples, anchors, log=log)
    reuse = model if sampler_model(cfg) == cfg.model.name else None  # the initial model draws hold anchors
    del generator
    stage_sample_hold(cfg, model=reuse, tokenizer=tok if reuse is not None else None, log=log)
    return anchors


def stage_sample_hold(cfg: Config, *, model=None, tokenizer=None, log=print) -> dict[str, list[str]]:
    """Anchors of the hold prompts (data.hold): the initial model's own unguided answers."""
    from negalign.training.hold import hold_config, hold_examples, read_hold_anchors

    examples = hold_examples(cfg)
    if not examples:
        return {}
    hcfg = hold_config(cfg)
    RunDir(hcfg.run_dir).prepare()
    anchors = read_hold_anchors(cfg)
    if all(ex.id in anchors for ex in examples):
        log(f"sample: all {len(examples)} hold prompts already have anchors")
        return anchors
    if model is None:
        model, tokenizer = _local_sampler(hcfg)
    log(f"sample: hold prompts ({cfg.data.hold}): the initial model's unguided answers")
    return run_sample(hcfg, examples, make_sampler(hcfg, model, tokenizer), log=log)


def _local_sampler(cfg: Config):
    """(model, tokenizer) of the config's sampler when it runs in this process, else (None, None)."""
    from negalign.generation.vllm_backend import vllm_available

    if not (cfg.sample.backend == "transformers" or (cfg.sample.backend == "auto" and not vllm_available())):
        return None, None
    return load_plain(cfg, sampler_model(cfg), cfg.sample.precision)


def stage_reference(cfg: Config, *, log=print):
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
    from negalign.training.reference import run_reference

    if not get_objective(cfg.train.method).needs_reference:
        return None
    return run_reference(cfg, groups, k, lambda spec: load_plain(cfg, spec)[0], log=log)


def stage_train(cfg: Config, *, resume: bool = False, log=print) -> Path:
    from negalign.training.loop import run_train
    from negalign.training.step import TrainData

    run = RunDir(prepare_run_dir(cfg))
    if run.trained(log):
        log(f"train: already finished; the model is in {run.model}")
        return run.model
    examples = run_examples(cfg)
    # Groups are tokenised once and serve both the reference scores and training; the reference
    # model is loaded, used and freed before the policy loads.
    groups, index, k, _ = training_groups(cfg, load_tokenizer(cfg.model.name), examples,
                                          read_anchors(cfg.run_dir), log=log)
    reference = reference_for(cfg, groups, k, log=log)  # cached after the first time
    model, tokenizer = load_policy(cfg)
    data = TrainData(groups=groups, n_anchors=k, reference=reference)
    on_step = None
    if cfg.train.online.every > 0:
        from negalign.training.online import OnlineResampler

        on_step = OnlineResampler(cfg, tokenizer, examples, index, data, log=log)
    return run_train(cfg, model, tokenizer, data, resume=resume, log=log, on_step=on_step)


def stage_all(cfg: Config, *, resume: bool = False, log=print) -> Path:
    stage_sample(cfg, log=log)
    return stage_train(cfg, resume=resume, log=log)
