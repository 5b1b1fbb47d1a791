"""Online D2O: every N steps, resample the anchors of the coming steps from the current policy.

With `train.online.refresh_reference` the references move too: the anchors and negatives of the
resampled groups are rescored under the current policy, so the reference follows training (the
paper's v1 describes the reference being explored this way). Otherwise the new anchors are scored
under the initial reference pi_r- (the adapter switched off under LoRA, else the reference model
loaded once). Resampled anchors are logged to anchors.online.jsonl.
"""

from __future__ import annotations

import contextlib

import torch

from negalign.base.io import JsonlAppender
from negalign.base.rundir import RunDir
from negalign.config import Config
from negalign.generation.base import GenerationConfig
from negalign.modeling.inference import score_groups
from negalign.modeling.lora import is_lora
from negalign.training.anchors import guided
from negalign.training.groups import Tokenizer, build_groups
from negalign.training.reference import split_columns
from negalign.training.models import load_plain
from negalign.training.schedule import step_indices, total_steps


class OnlineResampler:
    def __init__(self, cfg: Config, tokenizer, examples, index, data, *, log=print, load_reference=None):
        self.cfg, self.tokenizer, self.examples, self.index, self.data, self.log = cfg, tokenizer, examples, index, data, log
        self.load_reference = load_reference
        self._reference_model = None
        self.tok = Tokenizer(tokenizer, cfg.data.max_prompt_tokens, cfg.data.max_response_tokens)

    def _initial_reference(self, policy):
        """Context giving the model that scores new anchors when the reference stays fixed."""
        same = (self.cfg.reference.anchor_model or self.cfg.model.name) == self.cfg.model.name
        if is_lora(policy) and same:
            return policy.disable_adapter(), policy
        if self._reference_model is None:
            spec = self.cfg.reference.anchor_model or self.cfg.model.name
            self._reference_model = (self.load_reference or (lambda s: load_plain(self.cfg, s)[0]))(spec)
        return contextlib.nullcontext(), self._reference_model

    def __call__(self, step: int, policy) -> None:
        cfg, t = self.cfg, self.cfg.train
        n = len(self.data.groups)
        steps = total_steps(n, cfg)
        if step % t.online.every or step >= steps:
            return
        from negalign.generation.transformers_backend import TransformersGenerator

        upcoming = sorted({g for s in range(step, min(step + t.online.every, steps))
                           for g in step_indices(n, t.groups_per_step, t.seed, s)})
        ex_ids = sorted({self.index[g].example for g in upcoming})
        generator = TransformersGenerator(policy, self.tokenizer, batch_size=cfg.sample.batch_size)
        gen_cfg = GenerationConfig(n=cfg.sample.k, temperature=cfg.sample.temperature, top_p=cfg.sample.top_p,
                                   max_new_tokens=cfg.sample.max_new_tokens, seed=cfg.sample.seed * 1_000_003 + step)
        was_training = policy.training
        policy.eval()
        replies = generator.generate([guided(self.examples[e], cfg.sample.system_prompt) for e in ex_ids], gen_cfg)
        policy.train(was_training)
        anchors = {self.examples[e].id: r for e, r in zip(ex_ids, replies)}
        new_groups = build_groups(self.tok, self.examples, [self.index[g] for g in upcoming], anchors)
        kw = dict(batch_tokens=cfg.reference.batch_tokens, precision=cfg.reference.precision,
                  chunk_tokens=t.chunk_tokens, log=lambda *_: None, progress=False)
        if t.online.refresh_reference:
            lp, ln = score_groups(policy, new_groups, **kw)
        else:
            ctx, scorer = self._initial_reference(policy)
            with ctx:
                lp, ln = score_groups(scorer, new_groups, **kw)
        a_lp, a_ln, n_lp, n_ln = split_columns(lp, ln, [len(g.response_ids) for g in new_groups], self.data.n_anchors)
        ref = self.data.reference
        rows = torch.as_tensor(upcoming)
        ref.anchor_logps[rows], ref.anchor_lengths[rows] = a_lp, a_ln
        if t.online.refresh_reference:
            ref.negative_logps[rows], ref.negative_lengths[rows] = n_lp, n_ln
        for g, group in zip(upcoming, new_groups):
            self.data.groups[g] = group
        if _is_main():
            with JsonlAppender(RunDir(cfg.run_dir).online_anchors) as out:
                for e in ex_ids:
                    out.write({"step": step, "id": self.examples[e].id, "anchors": anchors[self.examples[e].id]})
        self.log(f"online: step {step}: resampled anchors for {len(ex_ids)} prompts ({len(upcoming)} groups)"
                 + ("; references moved to the policy" if t.online.refresh_reference else ""))


def _is_main() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
