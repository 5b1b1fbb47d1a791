"""Stage `reference`: log-probs of every anchor and negative under the frozen reference(s), once.

Offline D2O never changes them, so they are computed in inference mode with large length-sorted
batches and cached in reference.safetensors, keyed by a fingerprint of the models and the exact
token ids. The reference model is then never in training memory. Progress is written in shards,
so a killed run resumes where it stopped.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from negalign.base import distributed
from negalign.base.fingerprint import fingerprint
from negalign.base.io import atomic_path
from negalign.base.rundir import RunDir
from negalign.config import Config
from negalign.modeling.inference import score_groups
from negalign.modeling.logprobs import Group
from negalign.modeling.precision import resolve as resolve_precision


@dataclass
class ReferenceScores:
    """Reference log-probs per group: anchors [N, K] (anchor_lengths 0 where absent), negatives [N]."""
    anchor_logps: torch.Tensor
    anchor_lengths: torch.Tensor
    negative_logps: torch.Tensor
    negative_lengths: torch.Tensor

    def select(self, idx: list[int]) -> "ReferenceScores":
        i = torch.as_tensor(idx, dtype=torch.long)
        return ReferenceScores(self.anchor_logps[i], self.anchor_lengths[i], self.negative_logps[i],
                               self.negative_lengths[i])


def split_columns(logps: torch.Tensor, lengths: torch.Tensor, n_responses: list[int], k: int):
    """Split [G, Rmax] results of groups laid out as [anchors..., negative] into anchors and negative."""
    g = logps.shape[0]
    anchor_logps = torch.zeros(g, k, dtype=torch.float32)
    anchor_lengths = torch.zeros(g, k, dtype=torch.int64)
    rows = torch.arange(g)
    last = torch.as_tensor(n_responses, dtype=torch.long) - 1
    neg_logps = logps[rows, last].float().cpu()
    neg_lengths = lengths[rows, last].cpu()
    for r, n in enumerate(n_responses):
        if n > 1:
            anchor_logps[r, :n - 1] = logps[r, :n - 1].float().cpu()
            anchor_lengths[r, :n - 1] = lengths[r, :n - 1].cpu()
    return anchor_logps, anchor_lengths, neg_logps, neg_lengths


def reference_fingerprint(cfg: Config, groups: list[Group]) -> str:
    models = {"anchor": cfg.reference.anchor_model or cfg.model.name,
              "negative": cfg.reference.negative_model or cfg.model.name}
    for key, spec in list(models.items()):
        p = Path(spec)
        if p.exists():  # a local model: its identity includes when it was written
            models[key] = f"{p.resolve()}@{max((f.stat().st_mtime_ns for f in p.glob('*')), default=0)}"
    return fingerprint({"models": models, "precision": resolve_precision(cfg.reference.precision, distributed.device()),
                        "groups": [[g.prompt_ids, g.response_ids] for g in groups]})


def load_reference(run_dir: str | Path, expected_fingerprint: str) -> ReferenceScores | None:
    """The cached scores when reference.safetensors was made for exactly these models and tokens."""
    path = RunDir(run_dir).reference
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("fingerprint") != expected_fingerprint:
            return None
    t = load_file(str(path))
    return ReferenceScores(t["anchor_logps"], t["anchor_lengths"], t["negative_logps"], t["negative_lengths"])


def run_reference(cfg: Config, groups: list[Group], n_anchors: int, load_model_fn, *, log=print) -> ReferenceScores:
    """Score every group under pi_r- (anchors) and pi_r+ (negatives), or load the cached result.

    `groups` are laid out as [anchors..., negative]; `load_model_fn(spec)` returns a model in eval use.
    """
    log = distributed.main_only(log)  # under a multi-process launch, rank 0 alone prints progress
    run = RunDir(cfg.run_dir)
    fp = reference_fingerprint(cfg, groups)
    cached = load_reference(run.root, fp)
    if cached is not None:
        log(f"reference: cached log-probs match (fingerprint {fp}); reusing {run.reference.name}")
        return cached
    partial = run.reference_partial / fp
    partial.mkdir(parents=True, exist_ok=True)
    anchor_spec = cfg.reference.anchor_model or cfg.model.name
    negative_spec = cfg.reference.negative_model or cfg.model.name
    n_resp = [len(g.response_ids) for g in groups]
    kw = dict(batch_tokens=cfg.reference.batch_tokens, precision=cfg.reference.precision,
              chunk_tokens=cfg.train.chunk_tokens, log=log)
    if anchor_spec == negative_spec:
        model = load_model_fn(anchor_spec)
        lp, ln = score_groups(model, groups, partial_dir=partial / "both", **kw)
        a_lp, a_ln, n_lp, n_ln = split_columns(lp, ln, n_resp, n_anchors)
    else:  # two references: pi_r- scores the anchors, pi_r+ the negatives
        model = load_model_fn(anchor_spec)
        anchors_only = [Group(g.prompt_ids, g.response_ids[:-1]) for g in groups]
        lp, ln = score_groups(model, anchors_only, partial_dir=partial / "anchors", label="reference(anchors)", **kw)
        a_lp = torch.zeros(len(groups), n_anchors)
        a_ln = torch.zeros(len(groups), n_anchors, dtype=torch.int64)
        a_lp[:, :lp.shape[1]], a_ln[:, :ln.shape[1]] = lp, ln
        del model
        model = load_model_fn(negative_spec)
        negatives_only = [Group(g.prompt_ids, g.response_ids[-1:]) for g in groups]
        lp, ln = score_groups(model, negatives_only, partial_dir=partial / "negatives", label="reference(negatives)", **kw)
        n_lp, n_ln = lp[:, 0], ln[:, 0]
    del model
    scores = ReferenceScores(a_lp, a_ln, n_lp, n_ln)
    if distributed.current().main:  # every process holds the same scores; one writes them
        with atomic_path(run.reference) as tmp:
            save_file({"anchor_logps": a_lp.contiguous(), "anchor_lengths": a_ln.contiguous(),
                       "negative_logps": n_lp.contiguous(), "negative_lengths": n_ln.contiguous()},
                      str(tmp), metadata={"fingerprint": fp})
        shutil.rmtree(run.reference_partial, ignore_errors=True)
        log(f"reference: scored {len(groups)} groups; saved {run.reference.name}")
    distributed.barrier()
    return scores
