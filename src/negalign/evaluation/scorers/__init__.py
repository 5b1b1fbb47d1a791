"""Scorers: score(prompts, responses) -> list[float], higher = more of the scorer's `name`d property.

- refusal         RefusalDetector: 1.0 refusal / 0.0 not (phrase patterns).
- harm_classifier HarmClassifier: P(harmful) from MiniLM embeddings + logistic regression.
- judge           VerdictJudge: harm in [0, 1] read from next-token probabilities of a local model
                  answering a rubric (default: the offline Qwen2.5-Coder-1.5B judge); .compare()
                  for helpfulness. With a "generator" instead: LLMJudge, free-text 1-5 ratings
                  through any ChatGenerator (an OpenAI-compatible server).
- reward_model    RewardModelScorer: a sequence-classification model's logit.

make_scorer(spec) builds one from a config value:
  "refusal" | {"type": "refusal", "off_topic": true}
  "harm_classifier" | {"type": "harm_classifier", "path": "clf.json"}   (no path: the cached
      default, trained without {"exclude_prompts": [...]})
  "judge" | {"type": "judge", "model": SPEC, "rubric": "harm15", "probe": "default", "batch_size": 8,
      "threshold": 0.5}: a VerdictJudge on a model name, folder or .gguf (rubrics: harm15,
      harm15_reply, guard for Llama-Guard-style models, yes_no_guard, and agrees_claim / in_persona,
      P(Yes), for the sycophancy and roleplay evaluations; plain_answer, P(No), the role-play
      preset's pair labels; "answer_prefix" and "choices" adapt a guard's answer format)
  {"type": "judge", "generator": GEN, "max_new_tokens": 8}, where GEN is any generation spec
      (negalign.generation.factory): a ChatGenerator object, a model spec string for a local
      transformers model ("default", a folder, a .gguf), or {"base_url": "http://...", "model": "name"}
      for an OpenAI-compatible server
  "reward_model:PATH" | {"type": "reward_model", "path": PATH, "batch_size": 16, "device": "cpu"}
"""

from __future__ import annotations

from typing import Any

from negalign.base.errors import UserError
from negalign.evaluation.scorers.harm_classifier import HarmClassifier
from negalign.evaluation.scorers.judge import LLMJudge
from negalign.evaluation.scorers.judges import make_verdict_judge
from negalign.evaluation.scorers.refusal import RefusalDetector
from negalign.evaluation.scorers.reward_model import RewardModelScorer
from negalign.generation.factory import checked_spec, make_generator

__all__ = ["HarmClassifier", "LLMJudge", "RefusalDetector", "RewardModelScorer", "checked_scorer_spec", "make_scorer",
           "make_verdict_judge"]

_OPTIONS = {
    "refusal": {"off_topic", "opening_chars"},
    "harm_classifier": {"path", "exclude_prompts"},
    "judge": {"generator", "max_new_tokens", "max_chars", "batch_size", "model", "rubric", "probe", "threshold",
              "max_item_tokens", "answer_prefix", "choices"},
    "reward_model": {"path", "batch_size", "device", "max_length", "trust_remote_code"},
}


def checked_scorer_spec(spec: str | dict) -> tuple[str, dict[str, Any]]:
    """(kind, options) of a scorer spec once its kind and option names are known good; builds nothing,
    so a config can be checked when it is read rather than when the scorer is first needed."""
    if isinstance(spec, str):
        kind, _, arg = spec.partition(":")
        opts: dict[str, Any] = {}
        if kind == "reward_model":
            if not arg:
                raise UserError("write reward_model:PATH", field="reward_model")
            opts["path"] = arg
        elif arg:
            raise UserError(f"scorer {kind!r} takes no ':' argument (got {spec!r})", field="scorer")
    elif isinstance(spec, dict):
        if "type" not in spec:
            raise UserError("scorer needs a 'type'", field="scorer.type")
        kind, opts = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    else:
        raise UserError(f"scorer must be a string or a mapping, got {type(spec).__name__}", field="scorer")
    if kind not in _OPTIONS:
        raise UserError(f"unknown scorer {kind!r}; choose one of {', '.join(_OPTIONS)}", field="scorer")
    unknown = sorted(set(opts) - _OPTIONS[kind])
    if unknown:
        raise UserError(f"unknown option for the {kind} scorer", field=f"scorer.{unknown[0]}")
    if kind == "judge":
        if "generator" in opts:
            extra = sorted(set(opts) - {"max_new_tokens", "max_chars", "batch_size", "generator"})
            if extra:
                raise UserError("a judge with a generator takes only max_new_tokens, max_chars, batch_size",
                                field=f"scorer.{extra[0]}")
            if not hasattr(opts["generator"], "generate"):   # a spec, not a ChatGenerator object
                checked_spec(opts["generator"], field="scorer.generator")
        else:
            bad = sorted(set(opts) & {"max_new_tokens", "max_chars"})
            if bad:
                raise UserError("only a judge with a generator writes free text", field=f"scorer.{bad[0]}")
    if kind == "reward_model" and not opts.get("path"):
        raise UserError("the reward_model scorer needs a path", field="reward_model")
    return kind, opts


def make_scorer(spec: str | dict):
    """Build a scorer from a name, 'reward_model:PATH', or a dict with 'type' and options."""
    kind, opts = checked_scorer_spec(spec)
    if kind == "refusal":
        return RefusalDetector(**opts)
    if kind == "harm_classifier":
        if "path" in opts:
            return HarmClassifier.load(opts["path"])
        return HarmClassifier.default(opts.get("exclude_prompts", ()))
    if kind == "judge":
        if "generator" in opts:
            return LLMJudge(make_generator(opts.pop("generator"), field="scorer.generator"), **opts)
        return make_verdict_judge(**opts)
    return RewardModelScorer(opts.pop("path"), **opts)
